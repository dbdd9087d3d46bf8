/*
 * attention.cl: score computation for Monte-Carlo Attention.
 *
 *   softmax_rows             A[b,h,i,:] = softmax of the scores S[b,h,i,:] = Q_h[i] K_h^T /
 *                            sqrt(d) over valid keys, in place; the host computes S with
 *                            one batched CLBlast GEMM. Rows of padded queries and columns of
 *                            padded keys become zero.
 *   sample_counts            r[b,h,j] = max(r_min, min(D, floor((n_b * max_i A[b,h,i,j] /
 *                            alpha)^2))) for valid keys j, 0 for padded ones.
 *   token_norms              ||x_j|| of every token row.
 *   error_bounds             the per-row bound sum_j A[i,j] ||x_j|| ||W_h||_F / sqrt(r_j).
 *
 * Layouts: Q and K are column blocks of the (batch * tokens, ld) projection buffer, head h
 * at column h * head_width; A is (batch, heads, tokens, tokens) row-major; counts and bounds
 * are (batch, heads, tokens). One work-item handles one row or one column, so no kernel
 * needs local memory or barriers, which PoCL has miscompiled in partial work-groups.
 */

/* Softmax over the valid keys of one query row, in place: the row holds the scaled scores
 * Q_h[i] K_h^T / sqrt(d) that a GEMM wrote. Padded keys get probability 0 and are never
 * read, so their scores, NaN included, cannot reach a valid output; rows of padded queries,
 * and every row of a sequence of valid length 0, become zeros. */
__kernel void softmax_rows(const uint batch, const uint heads, const uint tokens,
                           __global const int *valid_lengths, __global float *probabilities)
{
    const uint i = get_global_id(0);
    const uint bh = get_global_id(1);
    if (i >= tokens || bh >= batch * heads)
        return;
    const uint length = (uint)valid_lengths[bh / heads];
    __global float *row = probabilities + ((size_t)bh * tokens + i) * tokens;

    if (i >= length) {
        for (uint j = 0; j < tokens; j++)
            row[j] = 0.0f;
        return;
    }

    /* Subtracting the maximum keeps exp() from overflowing. */
    float maximum = -INFINITY;
    for (uint j = 0; j < length; j++)
        maximum = fmax(maximum, row[j]);

    float sum = 0.0f;
    for (uint j = 0; j < length; j++) {
        row[j] = exp(row[j] - maximum);
        sum += row[j];
    }

    const float inverse = 1.0f / sum;
    for (uint j = 0; j < length; j++)
        row[j] *= inverse;
    for (uint j = length; j < tokens; j++)
        row[j] = 0.0f;
}

/* Sample count of each key from the largest attention any valid query gives it. */
__kernel void sample_counts(const uint batch, const uint heads, const uint tokens,
                            const uint hidden_size, const uint budget_length,
                            const uint min_samples, const float alpha,
                            __global const int *valid_lengths,
                            __global const float *probabilities, __global uint *counts)
{
    const uint j = get_global_id(0);
    const uint bh = get_global_id(1);
    if (j >= tokens || bh >= batch * heads)
        return;
    const uint length = (uint)valid_lengths[bh / heads];
    __global uint *count = counts + (size_t)bh * tokens + j;
    if (j >= length) {
        *count = 0;
        return;
    }

    __global const float *column = probabilities + (size_t)bh * tokens * tokens + j;
    float maximum = 0.0f;
    for (uint i = 0; i < length; i++)
        maximum = fmax(maximum, column[(size_t)i * tokens]);

    /* Compare before squaring so that a huge ratio saturates at D instead of overflowing. */
    const float budget = budget_length > 0 ? (float)budget_length : (float)length;
    const float ratio = budget * maximum / alpha;
    uint samples = hidden_size;
    if (ratio < sqrt((float)hidden_size))
        samples = min((uint)floor(ratio * ratio), hidden_size);
    *count = max(samples, min_samples);
}

/* Euclidean norm of each hidden-state row. */
__kernel void token_norms(const uint rows, const uint width, __global const float *hidden,
                          __global float *norms)
{
    const uint row = get_global_id(0);
    if (row >= rows)
        return;
    __global const float *x = hidden + (size_t)row * width;
    float sum = 0.0f;
    for (uint c = 0; c < width; c++)
        sum += x[c] * x[c];
    norms[row] = sqrt(sum);
}

/* Bound on the expected error of each valid output row. Exact tokens contribute 0; a token
 * with r = 0 is replaced by its bias, an error of at most ||x_j|| ||W_h||_F. */
__kernel void error_bounds(const uint batch, const uint heads, const uint tokens,
                           const uint hidden_size, __global const int *valid_lengths,
                           __global const float *probabilities, __global const uint *counts,
                           __global const float *norms, __global const float *head_norms,
                           __global float *bounds)
{
    const uint i = get_global_id(0);
    const uint bh = get_global_id(1);
    if (i >= tokens || bh >= batch * heads)
        return;
    const uint b = bh / heads;
    const uint length = (uint)valid_lengths[b];
    if (i >= length) {
        bounds[(size_t)bh * tokens + i] = 0.0f;
        return;
    }

    __global const float *row = probabilities + ((size_t)bh * tokens + i) * tokens;
    __global const uint *count = counts + (size_t)bh * tokens;
    __global const float *norm = norms + (size_t)b * tokens;
    float sum = 0.0f;
    for (uint j = 0; j < length; j++) {
        if (count[j] >= hidden_size)
            continue;
        const float scale = count[j] == 0 ? 1.0f : rsqrt((float)count[j]);
        sum += row[j] * norm[j] * scale;
    }
    bounds[(size_t)bh * tokens + i] = sum * head_norms[bh % heads];
}
