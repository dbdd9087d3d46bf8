/*
 * host_attention.h: exact self-attention on the host CPU with OpenBLAS, the baseline that a
 * CPU user would run instead of mca.
 *
 * It takes the same inputs and returns the same result as mca_attention_forward in
 * MCA_MODE_EXACT, so benchmarks and tests can compare the two directly.
 */
#ifndef MCA_BENCH_HOST_ATTENTION_H
#define MCA_BENCH_HOST_ATTENTION_H

#include "mca.h"

/* Wall time of each stage of one call, in seconds of CLOCK_MONOTONIC. */
typedef struct host_attention_times {
    double projections; /* Q, K and V: one GEMM on the packed (3D, D) weight, bias included */
    double scores;      /* Q_h K_h^T / sqrt(d) over valid keys and the softmax of each row */
    double attend;      /* A_h V_h and zeroing the padded output rows */
    double total;       /* from the first projection to the last output row */
} host_attention_times_t;

/*
 * Runs exact self-attention and returns the context before the output projection:
 *
 *   out[b, i, h*d:(h+1)*d] = sum_j A_h[i,j] V_h[j,:],  A_h = softmax(Q_h K_h^T / sqrt(d))
 *
 * over the valid keys j < valid_lengths[b] of each sequence.
 *
 * weights: D = hidden_size, H = heads, D divisible by H, (D, D) weights in (out, in) layout
 *          and (D) biases, all borrowed.
 * hidden:  (batch, tokens, D) float32, row-major, borrowed. Padded rows are never read.
 * context: (batch, tokens, D) float32, written on success. Padded rows are zero.
 * valid_lengths: (batch) ints in 0 .. tokens. A zero-length sequence gives zero rows.
 * times:   may be NULL; otherwise receives the stage times of this call.
 *
 * Packing the weights and allocating scratch memory happen before the timed stages. OpenBLAS
 * uses as many threads as OPENBLAS_NUM_THREADS allows (all cores by default).
 *
 * Returns MCA_SUCCESS, MCA_ERROR_INVALID_ARGUMENT (NULL pointer, bad shape or length),
 * MCA_ERROR_INPUT_TOO_LONG (sizes that overflow BLAS's int or size_t) or
 * MCA_ERROR_OUT_OF_HOST_MEMORY. On failure host_attention_last_error() describes the cause.
 */
int host_attention_forward(const mca_attention_weights_t *weights, int batch, int tokens,
                           const int *valid_lengths, const float *hidden, float *context,
                           host_attention_times_t *times);

/* Returns a sentence about the last failure of host_attention_forward in the calling thread,
 * or "" if none failed. Valid until the next call in the same thread. */
const char *host_attention_last_error(void);

#endif /* MCA_BENCH_HOST_ATTENTION_H */
