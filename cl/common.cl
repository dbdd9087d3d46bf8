/*
 * common.cl: element-wise kernels shared by the attention layer and the encoder.
 *
 *   add_bias          out[out_offset + r * ld + c] += bias[bias_offset + c] over a
 *                     (rows, columns) block.
 *   zero_padded_rows  sets rows i >= valid_lengths[b] of a (batch, tokens, width) block that
 *                     starts at element `offset` with leading dimension ld to zero.
 *
 * Global sizes are rounded up to whole work-groups on the host, so every kernel checks its
 * indices against the real sizes.
 */

__kernel void add_bias(const uint rows, const uint columns, const uint ld,
                       const uint bias_offset, const uint out_offset,
                       __global const float *bias, __global float *out)
{
    const uint c = get_global_id(0);
    const uint r = get_global_id(1);
    if (c >= columns || r >= rows)
        return;
    out[out_offset + (size_t)r * ld + c] += bias[bias_offset + c];
}

__kernel void zero_padded_rows(const uint batch, const uint tokens, const uint width,
                               const uint ld, const uint offset,
                               __global const int *valid_lengths,
                               __global float *out)
{
    const uint c = get_global_id(0);
    const uint row = get_global_id(1);
    if (c >= width || row >= batch * tokens)
        return;
    if ((int)(row % tokens) >= valid_lengths[row / tokens])
        out[offset + (size_t)row * ld + c] = 0.0f;
}
