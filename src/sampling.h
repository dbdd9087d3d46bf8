/* Host side of the sampling kernels: the per-head CDF tables of a value weight, drawing
 * and merging column indices, and the sparse accumulation of value rows. */
#ifndef MCA_SAMPLING_H
#define MCA_SAMPLING_H

#include <stdint.h>

#include "context.h"

/* Sampling distribution of one (D, D) value weight, all (heads, D) row-major on the device
 * except head_norms (heads). */
typedef struct mca_sampling_tables {
    int hidden_size;
    int heads;
    cl_mem norms;         /* squared column norms s[h,k] */
    cl_mem probabilities; /* p[h,k] = s[h,k] / ||W_h||_F^2 */
    cl_mem cdf;           /* inclusive prefix sum of p[h,:], last entries exactly 1 */
    cl_mem head_norms;    /* ||W_h||_F */
    cl_mem guide;         /* (heads, guide_size) uint: where the CDF search for u starts */
    int guide_size;       /* smallest power of two >= hidden_size */
} mca_sampling_tables_t;

/* Computes the tables of the (D, D) weight in (out, in) layout that starts at element
 * `weight_offset` of `weight`. */
int mca_sampling_tables_create(mca_context_t *context, cl_mem weight, size_t weight_offset,
                               int hidden_size, int heads, mca_sampling_tables_t *tables);

/* Releases the tables' buffers. Accepts zeroed and half-built tables. */
void mca_sampling_tables_release(mca_sampling_tables_t *tables);

/*
 * One batch of (token, head) pairs to sample. pairs contains pair_count cl_uint4 entries
 * (row = b * tokens + j, head, r, offset); pair q writes entries [offset, offset + r) of
 * columns (cl_uint) and weights (float) and its distinct-column count to distinct[q].
 * hidden is (rows, D).
 */
typedef struct mca_draw_request {
    uint32_t pair_count;
    uint32_t tokens;
    uint64_t seed;
    uint32_t layer;
    uint32_t first_sequence;
    cl_mem pairs;
    cl_mem hidden;
    cl_mem columns;
    cl_mem weights;
    cl_mem distinct;
} mca_draw_request_t;

/* Draws, counts and lists the column indices of every pair (kernel sample_columns). */
int mca_sampling_draw(mca_context_t *context, const mca_sampling_tables_t *tables,
                      const mca_draw_request_t *request);

/* Writes the value row of every drawn pair into `values` at element value_offset + row * ld
 * + head * d, from weight_transposed = W_V^T (in, out) and the (D) bias. */
int mca_sampling_accumulate(mca_context_t *context, const mca_sampling_tables_t *tables,
                            const mca_draw_request_t *request, cl_mem weight_transposed,
                            cl_mem bias, size_t ld, size_t value_offset, cl_mem values);

/* Draws and accumulates the value rows of every pair in one kernel with the published
 * code's strategy (linear CDF scans, no merging, strided columns of the (out, in) weight
 * that starts at element weight_offset). Same estimator and random stream as
 * mca_sampling_draw followed by mca_sampling_accumulate; for benchmarks and tests. */
int mca_sampling_published(mca_context_t *context, const mca_sampling_tables_t *tables,
                           const mca_draw_request_t *request, cl_mem weight,
                           size_t weight_offset, cl_mem bias, size_t ld, size_t value_offset,
                           cl_mem values);

#endif /* MCA_SAMPLING_H */
