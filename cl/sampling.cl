/*
 * sampling.cl: prefix-sum-based sampling and sparse accumulation of value rows.
 *
 *   column_norms          s[h,k] = sum_c W_h[c,k]^2, the squared norm of column k of head h,
 *                         for a weight starting at element weight_offset of its buffer.
 *   build_cdf             p[h,k] = s[h,k] / ||W_h||_F^2 and its inclusive prefix sum, one
 *                         work-item per head.
 *   build_guide           a guide table per head that starts each CDF search near its end.
 *   sample_columns        for one (token, head) pair with 0 < r < D: r indices drawn i.i.d.
 *                         from p_h by inverse CDF (a guided search that finds the index a
 *                         binary search would), counted in local memory and
 *                         listed as (column, weight) entries in ascending column order, with
 *                         weight = count x_j[k] / (r p_h[k]).
 *   accumulate_samples    V_h[j,c] = sum over entries of weight * W_h[c,k] + b_h[c].
 *   gather_rows           copies the listed hidden-state rows into a dense block.
 *   scatter_exact_values  writes the exactly computed value rows of (token, head) pairs with
 *                         r = D, grouped by head or as whole rows.
 *   philox_known_answer   raw Philox4x32-10 output, for the known-answer test.
 *
 * Randomness: sample t of token j, head h, sequence s and layer l reads word t % 4 of
 * Philox4x32-10 with counter (t / 4, j, s, l * 65536 + h) and key (seed low, seed high). The
 * uniform is the top 24 bits of that word times 2^-24, exact in float, so the drawn indices
 * depend only on the seed and the CDF, never on the work-group size.
 *
 * Contraction of a * b + c into fma is turned off so that the CDF, and with it every drawn
 * index, is the same on every device that rounds float arithmetic as IEEE 754 requires.
 */
#pragma OPENCL FP_CONTRACT OFF

#include "Random123/philox.h"

#ifndef MCA_MAX_HEAD_WIDTH
#define MCA_MAX_HEAD_WIDTH 256 /* largest head width; must match include/mca.h */
#endif

/* Squared column norms of each head's block of W_V, which is (D, D) in (out, in) layout. */
__kernel void column_norms(const uint hidden_size, const uint heads, const uint weight_offset,
                           __global const float *weight, __global float *norms)
{
    const uint k = get_global_id(0);
    const uint h = get_global_id(1);
    if (k >= hidden_size || h >= heads)
        return;
    const uint head_width = hidden_size / heads;
    float sum = 0.0f;
    for (uint c = 0; c < head_width; c++) {
        const float w = weight[weight_offset + (size_t)(h * head_width + c) * hidden_size + k];
        sum += w * w;
    }
    norms[(size_t)h * hidden_size + k] = sum;
}

/* Probabilities and CDF of one head. Kahan summation keeps the running sum accurate to
 * a few ulp over thousands of columns. Every entry from the last non-zero column on is set
 * to exactly 1, so a uniform in [0, 1) can never select a trailing zero column, and a zero
 * column elsewhere repeats the previous entry and is never the first entry above u. */
__kernel void build_cdf(const uint hidden_size, const uint heads, __global const float *norms,
                        __global float *probabilities, __global float *cdf,
                        __global float *head_norms)
{
    const uint h = get_global_id(0);
    if (h >= heads)
        return;
    __global const float *s = norms + (size_t)h * hidden_size;
    __global float *p = probabilities + (size_t)h * hidden_size;
    __global float *c = cdf + (size_t)h * hidden_size;

    float total = 0.0f;
    float compensation = 0.0f;
    uint last_nonzero = 0;
    for (uint k = 0; k < hidden_size; k++) {
        const float y = s[k] - compensation;
        const float t = total + y;
        compensation = (t - total) - y;
        total = t;
        if (s[k] > 0.0f)
            last_nonzero = k;
    }
    head_norms[h] = sqrt(total);

    float running = 0.0f;
    compensation = 0.0f;
    for (uint k = 0; k < hidden_size; k++) {
        p[k] = total > 0.0f ? s[k] / total : 0.0f;
        /* A zero column repeats the previous entry exactly: letting the compensation term
         * move the running sum could make the CDF step at a column that must never be
         * drawn. */
        if (s[k] == 0.0f && k < last_nonzero) {
            c[k] = k > 0 ? c[k - 1] : 0.0f;
            continue;
        }
        const float y = s[k] - compensation;
        const float t = running + y;
        compensation = (t - running) - y;
        running = t;
        c[k] = (total > 0.0f && k < last_nonzero) ? fmin(running / total, 1.0f) : 1.0f;
    }
}

/*
 * Guide table of one head's CDF (Chen and Asau's method): guide[g] is the smallest k with
 * cdf[k] > g / guide_size, for a power-of-two guide_size >= D. A search for u then starts
 * at guide[floor(u * guide_size)] and moves up, which takes about one step on average
 * instead of log2(D). Both g / guide_size and u * guide_size are exact in float, because
 * guide_size is a power of two and u a multiple of 2^-24, so the guided search finds exactly
 * the index that a binary search finds.
 */
__kernel void build_guide(const uint hidden_size, const uint heads, const uint guide_size,
                          __global const float *cdf, __global uint *guide)
{
    const uint h = get_global_id(0);
    if (h >= heads)
        return;
    __global const float *c = cdf + (size_t)h * hidden_size;
    __global uint *table = guide + (size_t)h * guide_size;
    uint k = 0;
    for (uint g = 0; g < guide_size; g++) {
        const float threshold = (float)g / (float)guide_size;
        while (k + 1 < hidden_size && c[k] <= threshold)
            k++;
        table[g] = k;
    }
}

/* Smallest k with cdf[k] > u, for 0 <= u < 1: every entry below guide[u * guide_size] is
 * at most u, and the last entry of the CDF is 1, so the scan stops within the row. */
static uint search_guided(__global const float *cdf, __global const uint *guide,
                          const uint guide_size, const float u)
{
    uint k = guide[(uint)(u * (float)guide_size)];
    while (cdf[k] <= u)
        k++;
    return k;
}

/*
 * One work-group per (token, head) pair. pairs[q] = (row, head, r, offset): row = b * tokens
 * + j, and the pair owns entries [offset, offset + r) of `columns` and `weights`; it writes
 * its distinct count to distinct[q]. A head whose weight block is zero gets no entries,
 * since its value rows are the bias alone.
 *
 * The work-items draw Philox blocks of four samples in turn and count each drawn index in
 * local memory (`counts`, hidden_size entries). Then each work-item lists the drawn columns
 * of its own slice of [0, D) in ascending order, at the position that an exclusive prefix
 * sum over the slices (`slice_starts`, local size + 1 entries) gives it. Counting replaces
 * a sort, so the cost is O(r + D) per pair, and the entries come out sorted by column
 * whatever the work-group size, in the same order and with the same values as a sort of
 * the r indices followed by a merge of equal ones.
 */
__kernel void sample_columns(const uint pair_count, const uint tokens, const uint hidden_size,
                             const uint seed_low, const uint seed_high, const uint layer,
                             const uint first_sequence, __global const uint4 *pairs,
                             __global const float *hidden, __global const float *cdf,
                             __global const float *probabilities,
                             __global const float *head_norms, __global const uint *guide,
                             const uint guide_size, __global uint *columns,
                             __global float *weights, __global uint *distinct,
                             __local uint *counts, __local uint *slice_starts)
{
    const uint q = get_group_id(0);
    const uint w = get_local_id(0);
    const uint group_size = get_local_size(0);
    if (q >= pair_count)
        return; /* the whole work-group returns, so no barrier is skipped by some only */
    const uint4 pair = pairs[q];
    const uint row = pair.x;
    const uint h = pair.y;
    const uint r = pair.z;
    if (r == 0 || head_norms[h] == 0.0f) {
        if (w == 0)
            distinct[q] = 0;
        return;
    }
    __global const float *head_cdf = cdf + (size_t)h * hidden_size;
    __global const uint *head_guide = guide + (size_t)h * guide_size;

    for (uint k = w; k < hidden_size; k += group_size)
        counts[k] = 0;
    barrier(CLK_LOCAL_MEM_FENCE);

    const philox4x32_key_t key = {{seed_low, seed_high}};
    const uint token = row % tokens;
    const uint sequence = first_sequence + row / tokens;
    const uint blocks = (r + 3) / 4;
    for (uint block = w; block < blocks; block += group_size) {
        const philox4x32_ctr_t counter = {{block, token, sequence, layer * 65536u + h}};
        const philox4x32_ctr_t bits = philox4x32(counter, key);
        for (uint lane = 0; lane < 4 && 4 * block + lane < r; lane++) {
            const float u = (float)(bits.v[lane] >> 8) * 0x1.0p-24f;
            const uint k = search_guided(head_cdf, head_guide, guide_size, u);
            /* A work-group of one (as on CPUs) needs no atomic. */
            if (group_size == 1)
                counts[k]++;
            else
                atomic_inc(&counts[k]);
        }
    }
    barrier(CLK_LOCAL_MEM_FENCE);

    const uint slice = (hidden_size + group_size - 1) / group_size;
    const uint begin = min(w * slice, hidden_size);
    const uint end = min(begin + slice, hidden_size);
    uint drawn = 0;
    for (uint k = begin; k < end; k++)
        drawn += counts[k] != 0;
    slice_starts[w] = drawn;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (w == 0) {
        uint total = 0;
        for (uint i = 0; i < group_size; i++) {
            const uint size = slice_starts[i];
            slice_starts[i] = total;
            total += size;
        }
        slice_starts[group_size] = total;
        distinct[q] = total;
    }
    barrier(CLK_LOCAL_MEM_FENCE);

    __global uint *column = columns + pair.w;
    __global float *weight = weights + pair.w;
    __global const float *x = hidden + (size_t)row * hidden_size;
    __global const float *p = probabilities + (size_t)h * hidden_size;
    const float inverse_r = 1.0f / (float)r;
    uint n = slice_starts[w];
    for (uint k = begin; k < end; k++) {
        if (counts[k] == 0)
            continue;
        column[n] = k;
        /* p[k] > 0 for every drawn k unless it underflowed in float; such a column then
         * contributes nothing rather than infinity. */
        weight[n] = p[k] > 0.0f ? (float)counts[k] * inverse_r * x[k] / p[k] : 0.0f;
        n++;
    }
}

/* Work-item (c, q) writes element c of head h's value row for pair q. */
__kernel void accumulate_samples(const uint pair_count, const uint hidden_size,
                                 const uint head_width, const uint ld, const uint value_offset,
                                 __global const uint4 *pairs, __global const uint *distinct,
                                 __global const uint *columns, __global const float *weights,
                                 __global const float *weight_transposed,
                                 __global const float *bias, __global float *values)
{
    const uint c = get_global_id(0);
    const uint q = get_global_id(1);
    if (c >= head_width || q >= pair_count)
        return;
    const uint4 pair = pairs[q];
    const uint output = pair.y * head_width + c;
    const uint entries = distinct[q];
    __global const uint *column = columns + pair.w;
    __global const float *weight = weights + pair.w;
    __global const float *w_out = weight_transposed + output;

    /* weight_transposed is W_V^T, (in, out): column k of W_h is contiguous in c. */
    float sum = 0.0f;
    for (uint e = 0; e < entries; e++)
        sum += weight[e] * w_out[(size_t)column[e] * hidden_size];
    values[value_offset + (size_t)pair.x * ld + output] = sum + bias[output];
}

/* One work-item per pair: the same sums as accumulate_samples, with the loop over the d
 * outputs innermost, so that a CPU compiler vectorizes it over contiguous weights. GPUs
 * run accumulate_samples, whose private state is one float. */
__kernel void accumulate_samples_by_pair(const uint pair_count, const uint hidden_size,
                                         const uint head_width, const uint ld,
                                         const uint value_offset, __global const uint4 *pairs,
                                         __global const uint *distinct,
                                         __global const uint *columns,
                                         __global const float *weights,
                                         __global const float *weight_transposed,
                                         __global const float *bias, __global float *values)
{
    const uint q = get_global_id(0);
    if (q >= pair_count)
        return;
    const uint4 pair = pairs[q];
    const uint first = pair.y * head_width;
    float sum[MCA_MAX_HEAD_WIDTH];
    for (uint c = 0; c < head_width; c++)
        sum[c] = 0.0f;
    const uint entries = distinct[q];
    for (uint e = 0; e < entries; e++) {
        const float weight = weights[pair.w + e];
        __global const float *w = weight_transposed + (size_t)columns[pair.w + e] * hidden_size +
                                  first;
        for (uint c = 0; c < head_width; c++)
            sum[c] += weight * w[c];
    }
    __global float *out = values + value_offset + (size_t)pair.x * ld + first;
    for (uint c = 0; c < head_width; c++)
        out[c] = sum[c] + bias[first + c];
}

/* Copies the listed rows of `source` into a dense block; a row index of 0xffffffff (a
 * padding slot) gives a row of zeros. */
__kernel void gather_rows(const uint row_count, const uint width, __global const uint *rows,
                          __global const float *source, __global float *destination)
{
    const uint c = get_global_id(0);
    const uint q = get_global_id(1);
    if (c >= width || q >= row_count)
        return;
    const uint row = rows[q];
    destination[(size_t)q * width + c] =
        row == 0xffffffffu ? 0.0f : source[(size_t)row * width + c];
}

/* Slot first_slot + q of the exact table belongs to group q / rows_per_group and row
 * rows[first_slot + q]; padding slots (row 0xffffffff) write nothing. Every slot owns
 * slot_width elements of `exact`, from first_value + q * slot_width, and its first
 * group_width of them (the product without the bias) go to value columns
 * (q / rows_per_group) * group_width onwards: one head's d columns for per-head groups, all
 * D for the group of whole rows. */
__kernel void scatter_exact_values(const uint first_slot, const uint slot_count,
                                   const uint first_value, const uint slot_width,
                                   const uint rows_per_group, const uint group_width,
                                   const uint ld, const uint value_offset,
                                   __global const uint *rows, __global const float *exact,
                                   __global const float *bias, __global float *values)
{
    const uint c = get_global_id(0);
    const uint q = get_global_id(1);
    if (c >= group_width || q >= slot_count)
        return;
    const uint row = rows[first_slot + q];
    if (row == 0xffffffffu)
        return;
    const uint output = (q / rows_per_group) * group_width + c;
    values[value_offset + (size_t)row * ld + output] =
        exact[first_value + (size_t)q * slot_width + c] + bias[output];
}

__kernel void philox_known_answer(const uint count, __global const uint *counters,
                                  __global const uint *keys, __global uint *out)
{
    const uint i = get_global_id(0);
    if (i >= count)
        return;
    const philox4x32_ctr_t counter = {{counters[4 * i], counters[4 * i + 1],
                                       counters[4 * i + 2], counters[4 * i + 3]}};
    const philox4x32_key_t key = {{keys[2 * i], keys[2 * i + 1]}};
    const philox4x32_ctr_t bits = philox4x32(counter, key);
    for (uint lane = 0; lane < 4; lane++)
        out[4 * i + lane] = bits.v[lane];
}
