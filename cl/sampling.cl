/*
 * sampling.cl: prefix-sum-based sampling and sparse accumulation of value rows.
 *
 *   column_norms          s[h,k] = sum_c W_h[c,k]^2, the squared norm of column k of head h,
 *                         for a weight starting at element weight_offset of its buffer.
 *   build_cdf             p[h,k] = s[h,k] / ||W_h||_F^2 and its inclusive prefix sum, one
 *                         work-item per head.
 *   sample_columns        for one (token, head) pair with 0 < r < D: r indices drawn i.i.d.
 *                         from p_h by binary search in the CDF, sorted, and merged into
 *                         (column, weight) entries with weight = count x_j[k] / (r p_h[k]).
 *   accumulate_samples    V_h[j,c] = sum over entries of weight * W_h[c,k] + b_h[c].
 *   gather_rows           copies the listed hidden-state rows into a dense block.
 *   scatter_exact_values  writes the exactly computed value rows of (token, head) pairs with
 *                         r = D.
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

/* Smallest k with cdf[k] > u, in at most ceil(log2(n)) steps. */
static uint search_cdf(__global const float *cdf, const uint n, const float u)
{
    uint low = 0;
    uint high = n - 1;
    while (low < high) {
        const uint middle = low + (high - low) / 2;
        if (cdf[middle] > u)
            high = middle;
        else
            low = middle + 1;
    }
    return low;
}

/* In-place heapsort of n indices: O(n log n) with no scratch memory, for merging equal
 * indices of one pair. */
static void sift_down(__global uint *a, uint root, const uint n)
{
    for (;;) {
        uint child = 2 * root + 1;
        if (child >= n)
            return;
        if (child + 1 < n && a[child + 1] > a[child])
            child++;
        if (a[root] >= a[child])
            return;
        const uint swap = a[root];
        a[root] = a[child];
        a[child] = swap;
        root = child;
    }
}

static void heap_sort(__global uint *a, const uint n)
{
    for (uint start = n / 2; start-- > 0;)
        sift_down(a, start, n);
    for (uint end = n; end-- > 1;) {
        const uint swap = a[0];
        a[0] = a[end];
        a[end] = swap;
        sift_down(a, 0, end);
    }
}

/*
 * One work-item per (token, head) pair. pairs[q] = (row, head, r, offset): row = b * tokens
 * + j, and the pair owns entries [offset, offset + r) of `columns` and `weights`; it writes
 * its distinct count to distinct[q]. A head whose weight block is zero gets no entries,
 * since its value rows are the bias alone.
 */
__kernel void sample_columns(const uint pair_count, const uint tokens, const uint hidden_size,
                             const uint seed_low, const uint seed_high, const uint layer,
                             const uint first_sequence, __global const uint4 *pairs,
                             __global const float *hidden, __global const float *cdf,
                             __global const float *probabilities,
                             __global const float *head_norms, __global uint *columns,
                             __global float *weights, __global uint *distinct)
{
    const uint q = get_global_id(0);
    if (q >= pair_count)
        return;
    const uint4 pair = pairs[q];
    const uint row = pair.x;
    const uint h = pair.y;
    const uint r = pair.z;
    __global uint *column = columns + pair.w;
    __global float *weight = weights + pair.w;
    if (r == 0 || head_norms[h] == 0.0f) {
        distinct[q] = 0;
        return;
    }
    __global const float *head_cdf = cdf + (size_t)h * hidden_size;

    /* Draw r indices, four per Philox call. */
    const philox4x32_key_t key = {{seed_low, seed_high}};
    const uint token = row % tokens;
    const uint sequence = first_sequence + row / tokens;
    for (uint t = 0; t < r; t += 4) {
        const philox4x32_ctr_t counter = {{t / 4, token, sequence, layer * 65536u + h}};
        const philox4x32_ctr_t bits = philox4x32(counter, key);
        for (uint lane = 0; lane < 4 && t + lane < r; lane++) {
            const float u = (float)(bits.v[lane] >> 8) * 0x1.0p-24f;
            column[t + lane] = search_cdf(head_cdf, hidden_size, u);
        }
    }

    /* Sort, then merge runs of equal indices in place: entry n never overtakes read t. */
    heap_sort(column, r);
    __global const float *x = hidden + (size_t)row * hidden_size;
    __global const float *p = probabilities + (size_t)h * hidden_size;
    const float inverse_r = 1.0f / (float)r;
    uint n = 0;
    uint t = 0;
    while (t < r) {
        const uint k = column[t];
        uint run = 1;
        while (t + run < r && column[t + run] == k)
            run++;
        column[n] = k;
        /* p[k] > 0 for every drawn k unless it underflowed in float; such a column then
         * contributes nothing rather than infinity. */
        weight[n] = p[k] > 0.0f ? (float)run * inverse_r * x[k] / p[k] : 0.0f;
        n++;
        t += run;
    }
    distinct[q] = n;
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

    /* weight_transposed is W_V^T, (in, out): column k of W_h is contiguous in c. */
    float sum = 0.0f;
    for (uint e = 0; e < distinct[q]; e++) {
        const uint k = columns[pair.w + e];
        sum += weights[pair.w + e] * weight_transposed[(size_t)k * hidden_size + output];
    }
    values[value_offset + (size_t)pair.x * ld + output] = sum + bias[output];
}

__kernel void gather_rows(const uint row_count, const uint width, __global const uint *rows,
                          __global const float *source, __global float *destination)
{
    const uint c = get_global_id(0);
    const uint q = get_global_id(1);
    if (c >= width || q >= row_count)
        return;
    destination[(size_t)q * width + c] = source[(size_t)rows[q] * width + c];
}

/* Exact pair q: row rows[q] = b * tokens + j and head heads[q]; exact holds its (d) product
 * without the bias. */
__kernel void scatter_exact_values(const uint pair_count, const uint head_width, const uint ld,
                                   const uint value_offset, __global const uint *rows,
                                   __global const uint *heads, __global const float *exact,
                                   __global const float *bias, __global float *values)
{
    const uint c = get_global_id(0);
    const uint q = get_global_id(1);
    if (c >= head_width || q >= pair_count)
        return;
    const uint output = heads[q] * head_width + c;
    values[value_offset + (size_t)rows[q] * ld + output] =
        exact[(size_t)q * head_width + c] + bias[output];
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
