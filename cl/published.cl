/*
 * published.cl: the value-row strategy of the paper's published CUDA code, kept as a
 * baseline for the benchmark and as an independent reference path for the tests.
 *
 *   published_sample_accumulate  one work-item per (token, head) pair: for each of the r
 *                                samples, a linear scan of the CDF, then a multiply-add of
 *                                the sampled column read with stride D from W_V in its
 *                                (out, in) layout; equal indices are not merged.
 *
 * It draws the same uniforms as sample_columns (same Philox counters, same 24-bit
 * conversion) and the linear scan finds the same index as the binary search, so its
 * results equal the optimized path's up to the order of float additions.
 */
#pragma OPENCL FP_CONTRACT OFF

#include "Random123/philox.h"

#ifndef MCA_MAX_HEAD_WIDTH
#define MCA_MAX_HEAD_WIDTH 256 /* largest head width; must match include/mca.h */
#endif

/* pairs[q] = (row, head, r, unused); weight is the (D, D) W_V starting at weight_offset. */
__kernel void published_sample_accumulate(
    const uint pair_count, const uint tokens, const uint hidden_size, const uint head_width,
    const uint seed_low, const uint seed_high, const uint layer, const uint first_sequence,
    const uint ld, const uint value_offset, const uint weight_offset,
    __global const uint4 *pairs, __global const float *hidden, __global const float *cdf,
    __global const float *probabilities, __global const float *head_norms,
    __global const float *weight, __global const float *bias, __global float *values)
{
    const uint q = get_global_id(0);
    if (q >= pair_count)
        return;
    const uint4 pair = pairs[q];
    const uint row = pair.x;
    const uint h = pair.y;
    const uint r = pair.z;

    float sum[MCA_MAX_HEAD_WIDTH];
    for (uint c = 0; c < head_width; c++)
        sum[c] = 0.0f;

    if (r > 0 && head_norms[h] > 0.0f) {
        __global const float *head_cdf = cdf + (size_t)h * hidden_size;
        __global const float *p = probabilities + (size_t)h * hidden_size;
        __global const float *x = hidden + (size_t)row * hidden_size;
        __global const float *w = weight + weight_offset + (size_t)h * head_width * hidden_size;
        const philox4x32_key_t key = {{seed_low, seed_high}};
        const uint token = row % tokens;
        const uint sequence = first_sequence + row / tokens;
        const float inverse_r = 1.0f / (float)r;
        philox4x32_ctr_t bits = {{0, 0, 0, 0}};
        for (uint t = 0; t < r; t++) {
            if (t % 4 == 0) {
                const philox4x32_ctr_t counter = {{t / 4, token, sequence,
                                                   layer * 65536u + h}};
                bits = philox4x32(counter, key);
            }
            const float u = (float)(bits.v[t % 4] >> 8) * 0x1.0p-24f;
            uint k = 0;
            while (k + 1 < hidden_size && head_cdf[k] <= u)
                k++;
            const float scale = p[k] > 0.0f ? inverse_r * x[k] / p[k] : 0.0f;
            for (uint c = 0; c < head_width; c++)
                sum[c] += scale * w[(size_t)c * hidden_size + k];
        }
    }

    __global float *out = values + value_offset + (size_t)row * ld + h * head_width;
    for (uint c = 0; c < head_width; c++)
        out[c] = sum[c] + bias[h * head_width + c];
}
