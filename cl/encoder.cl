/*
 * encoder.cl: the element-wise and row-wise steps of a BERT encoder that are not matrix
 * products (those run through CLBlast).
 *
 * Kernels:
 *   encoder_embeddings           word + position + token-type-0 embedding, then LayerNorm;
 *                                one work-item per (sequence, token) row.
 *   encoder_residual_layer_norm  hidden = LayerNorm(hidden + update); one work-item per row.
 *   encoder_gelu                 exact GELU, x * (1 + erf(x / sqrt(2))) / 2, in place;
 *                                one work-item per element.
 *   encoder_mean_pool            mean of the valid token rows of each sequence; one
 *                                work-item per (sequence, channel) element.
 *
 * Tensors are row-major float32: hidden states are (batch, tokens, hidden_size) and a
 * LayerNorm's weight and bias are (hidden_size). The host rounds global sizes up to a
 * multiple of the work-group size, so every kernel guards its index against the real size.
 * No kernel uses local memory or barriers. Arguments run sizes, then scalars, then buffers.
 */

/* Normalizes `row` of `width` entries in place: (x - mean) / sqrt(var + eps) * weight + bias.
 * The variance is the biased one, as in PyTorch's LayerNorm, and is taken in a second pass
 * over the deviations, which loses less precision than E[x^2] - mean^2. */
void encoder_layer_norm_row(const int width, const float eps, __global float *row,
                            __global const float *weight, __global const float *bias)
{
    float sum = 0.0f;
    for (int c = 0; c < width; ++c)
        sum += row[c];
    const float mean = sum / (float)width;

    float squares = 0.0f;
    for (int c = 0; c < width; ++c) {
        const float deviation = row[c] - mean;
        squares += deviation * deviation;
    }
    const float inverse_std = rsqrt(squares / (float)width + eps);

    for (int c = 0; c < width; ++c)
        row[c] = (row[c] - mean) * inverse_std * weight[c] + bias[c];
}

/* hidden[row, :] = LayerNorm(word[ids[row]] + position[row % tokens] + token_type[0]).
 * Position ids start at 0 in every sequence, as in BERT. The host checks that every id is
 * below the vocabulary size and that tokens <= the number of position embeddings. */
__kernel void encoder_embeddings(const int rows, const int tokens, const int hidden_size,
                                 const float eps, __global const int *ids,
                                 __global const float *word, __global const float *position,
                                 __global const float *token_type,
                                 __global const float *norm_weight,
                                 __global const float *norm_bias, __global float *hidden)
{
    const int row = (int)get_global_id(0);
    if (row >= rows)
        return;

    __global const float *word_row = word + (size_t)ids[row] * hidden_size;
    __global const float *position_row = position + (size_t)(row % tokens) * hidden_size;
    __global float *out = hidden + (size_t)row * hidden_size;
    for (int c = 0; c < hidden_size; ++c)
        out[c] = word_row[c] + position_row[c] + token_type[c];

    encoder_layer_norm_row(hidden_size, eps, out, norm_weight, norm_bias);
}

/* hidden[row, :] = LayerNorm(hidden[row, :] + update[row, :]): the residual connection
 * after the attention block and after the feed-forward block. */
__kernel void encoder_residual_layer_norm(const int rows, const int hidden_size,
                                          const float eps, __global const float *update,
                                          __global const float *norm_weight,
                                          __global const float *norm_bias,
                                          __global float *hidden)
{
    const int row = (int)get_global_id(0);
    if (row >= rows)
        return;

    __global float *out = hidden + (size_t)row * hidden_size;
    __global const float *update_row = update + (size_t)row * hidden_size;
    for (int c = 0; c < hidden_size; ++c)
        out[c] += update_row[c];

    encoder_layer_norm_row(hidden_size, eps, out, norm_weight, norm_bias);
}

/* x = x * (1 + erf(x / sqrt(2))) / 2, the exact GELU of BERT's "gelu" activation (not the
 * tanh approximation). `count` may exceed INT_MAX, so it is a 64-bit size. */
__kernel void encoder_gelu(const ulong count, __global float *x)
{
    const size_t i = get_global_id(0);
    if (i >= count)
        return;

    const float value = x[i];
    x[i] = 0.5f * value * (1.0f + erf(value * M_SQRT1_2_F));
}

/* pooled[b, c] = mean of hidden[b, t, c] over t < valid_lengths[b], the mean pooling of
 * sentence-transformers. A sequence with no valid token gives 0. */
__kernel void encoder_mean_pool(const int batch, const int tokens, const int hidden_size,
                                __global const int *valid_lengths,
                                __global const float *hidden, __global float *pooled)
{
    const int element = (int)get_global_id(0);
    if (element >= batch * hidden_size)
        return;

    const int b = element / hidden_size;
    const int c = element % hidden_size;
    const int length = valid_lengths[b];
    __global const float *column = hidden + (size_t)b * tokens * hidden_size + c;

    float sum = 0.0f;
    for (int t = 0; t < length; ++t)
        sum += column[(size_t)t * hidden_size];
    pooled[element] = length > 0 ? sum / (float)length : 0.0f;
}
