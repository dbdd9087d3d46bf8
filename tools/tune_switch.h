/* Part of mca-tune: the size at which CLBlast switches from its direct GEMM kernel
 * (XgemmDirect) to the tiled one with pre- and post-processing kernels (Xgemm). */
#ifndef MCA_TUNE_SWITCH_H
#define MCA_TUNE_SWITCH_H

#include <stdbool.h>
#include <stddef.h>

#include "context.h"

/* Prints "mca-tune: " and a printf-style line to standard error. */
void mca_tune_progress(const char *format, ...) MCA_PRINTF(1, 2);

/*
 * Times the library's GEMM shapes with each kernel forced, using the parameters that CLBlast
 * holds for the context's device, and checks every result against a host computation. Stores
 * the XGEMM_MIN_INDIRECT_SIZE with the smallest summed slowdown in *value, and in
 * *runs_direct whether any timed shape runs XgemmDirect with it. Returns false, after
 * printing why, when a GEMM fails or gives a wrong result.
 */
bool mca_tune_switch_point(mca_context_t *context, size_t *value, bool *runs_direct);

#endif /* MCA_TUNE_SWITCH_H */
