/* Exact matrix products through CLBlast, serialized by one process-wide lock because
 * CLBlast 1.5.3 races in its kernel cache when several threads call it. */
#ifndef MCA_GEMM_H
#define MCA_GEMM_H

#include <stdbool.h>

#include "context.h"

/* Takes and releases the process-wide CLBlast lock, for CLBlast calls outside gemm.c. */
void mca_clblast_lock(void);
void mca_clblast_unlock(void);

/* One row-major operand: a buffer, the element offset of its first entry and its leading
 * dimension (elements between consecutive rows). */
typedef struct mca_matrix {
    cl_mem buffer;
    size_t offset;
    size_t ld;
} mca_matrix_t;

/* C (m, n) = alpha * op(A) * op(B) + beta * C, where op(A) is (m, k) and op(B) is (k, n);
 * op transposes when the flag is set. */
int mca_gemm(const mca_context_t *context, bool transpose_a, bool transpose_b, size_t m,
             size_t n, size_t k, float alpha, mca_matrix_t a, mca_matrix_t b, float beta,
             mca_matrix_t c);

/* `count` products of the same shape whose operands differ only in their offsets (element
 * offsets into a.buffer, b.buffer and c.buffer; the offset fields of a, b, c are ignored). */
int mca_gemm_batched(const mca_context_t *context, bool transpose_a, bool transpose_b,
                     size_t m, size_t n, size_t k, float alpha, mca_matrix_t a,
                     const size_t *a_offsets, mca_matrix_t b, const size_t *b_offsets,
                     float beta, mca_matrix_t c, const size_t *c_offsets, size_t count);

/* Dense layer y (rows, out) = x (rows, in) * W^T + bias, with W in (out, in) layout and
 * every operand at offset 0 with no row padding. `bias` may be NULL. */
int mca_linear(mca_context_t *context, cl_mem x, size_t rows, size_t in, cl_mem weight,
               cl_mem bias, size_t out, cl_mem y);

#endif /* MCA_GEMM_H */
