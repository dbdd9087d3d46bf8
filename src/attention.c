/* Attention layer: exact and Monte-Carlo self-attention for a padded batch. */
#include "attention.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"

/* The Philox counter packs layer * 65536 + head into one 32-bit word. */
#define MAX_COUNTER_FIELD 65536u

/* Kernels index with 32-bit integers; every element count must stay below this. */
#define MAX_ELEMENTS ((size_t)1 << 31)

const char *const mca_stage_names[MCA_STAGE_COUNT] = {
    "qk_projection", "scores",  "statistics",   "planning",
    "exact_values",  "sampling", "accumulation", "attend",
};

/* Enqueues a marker at the start (end = 0) or end (end = 1) of a stage when profiling. */
static int mark_stage(mca_attention_t *layer, mca_stage_t stage, int end)
{
    if (layer->profile == NULL)
        return MCA_SUCCESS;
    cl_event *event = &layer->stage_events[stage][end];
    if (*event != NULL) {
        clReleaseEvent(*event);
        *event = NULL;
    }
    cl_int code = clEnqueueMarkerWithWaitList(layer->context->queue, 0, NULL, event);
    return mca_check_cl(layer->context, code, "clEnqueueMarkerWithWaitList");
}

static int event_end_time(const mca_context_t *context, cl_event event, cl_ulong *nanoseconds)
{
    cl_int code = clGetEventProfilingInfo(event, CL_PROFILING_COMMAND_END, sizeof *nanoseconds,
                                          nanoseconds, NULL);
    return mca_check_cl(context, code, "clGetEventProfilingInfo");
}

static void release_stage_events(mca_attention_t *layer)
{
    for (int stage = 0; stage < MCA_STAGE_COUNT; stage++) {
        for (int i = 0; i < 2; i++) {
            if (layer->stage_events[stage][i] != NULL)
                clReleaseEvent(layer->stage_events[stage][i]);
            layer->stage_events[stage][i] = NULL;
        }
    }
}

/* Converts the markers of a finished forward pass into stage times and releases them. */
static int collect_stage_times(mca_attention_t *layer)
{
    mca_stage_times_t *times = layer->profile;
    memset(times, 0, sizeof *times);
    cl_ulong first = 0, last = 0;
    int status = MCA_SUCCESS;
    for (int stage = 0; stage < MCA_STAGE_COUNT; stage++) {
        cl_event *events = layer->stage_events[stage];
        if (events[0] != NULL && events[1] != NULL && status == MCA_SUCCESS) {
            cl_ulong begin = 0, end = 0;
            status = event_end_time(layer->context, events[0], &begin);
            if (status == MCA_SUCCESS)
                status = event_end_time(layer->context, events[1], &end);
            if (status == MCA_SUCCESS) {
                times->seconds[stage] = (double)(end - begin) * 1e-9;
                first = (first == 0 || begin < first) ? begin : first;
                last = end > last ? end : last;
            }
        }
    }
    release_stage_events(layer);
    times->total = (double)(last - first) * 1e-9;
    return status;
}

void mca_forward_options_init(mca_forward_options_t *options)
{
    if (options == NULL)
        return;
    memset(options, 0, sizeof *options);
    options->mode = MCA_MODE_EXACT;
    options->alpha = 0.02f;
    options->min_samples = 1;
}

/* ------------------------------------------------------------------------------------ */
/* Creation                                                                              */
/* ------------------------------------------------------------------------------------ */

static int check_finite(const float *values, size_t count, const char *name)
{
    for (size_t i = 0; i < count; i++) {
        if (!isfinite(values[i]))
            return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                             "%s[%zu] is %g; weights must be finite", name, i,
                             (double)values[i]);
    }
    return MCA_SUCCESS;
}

static int validate_weights(const mca_attention_weights_t *w)
{
    if (w->hidden_size <= 0 || w->heads <= 0)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "hidden_size %d and heads %d must both be positive", w->hidden_size,
                         w->heads);
    if (w->hidden_size % w->heads != 0)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "hidden_size %d is not divisible by heads %d", w->hidden_size,
                         w->heads);
    if (w->hidden_size / w->heads > MCA_MAX_HEAD_WIDTH)
        return mca_error(MCA_ERROR_NOT_IMPLEMENTED,
                         "head width %d (hidden_size %d / heads %d) exceeds the supported "
                         "maximum %d",
                         w->hidden_size / w->heads, w->hidden_size, w->heads,
                         MCA_MAX_HEAD_WIDTH);
    if ((unsigned)w->heads >= MAX_COUNTER_FIELD)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT, "heads %d must be below %u", w->heads,
                         MAX_COUNTER_FIELD);
    if ((size_t)w->hidden_size * (size_t)w->hidden_size * 3 >= MAX_ELEMENTS)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT, "hidden_size %d is too large",
                         w->hidden_size);

    const float *arrays[] = {w->query_weight, w->query_bias, w->key_weight,
                             w->key_bias,     w->value_weight, w->value_bias};
    const char *names[] = {"query_weight", "query_bias", "key_weight",
                           "key_bias",     "value_weight", "value_bias"};
    size_t d = (size_t)w->hidden_size;
    for (int i = 0; i < 6; i++) {
        if (arrays[i] == NULL)
            return mca_error(MCA_ERROR_INVALID_ARGUMENT, "attention weight %s is NULL",
                             names[i]);
        int status = check_finite(arrays[i], i % 2 == 0 ? d * d : d, names[i]);
        if (status != MCA_SUCCESS)
            return status;
    }
    return MCA_SUCCESS;
}

/* Packs the host weights into the device layouts: Q, K and V stacked for one projection
 * GEMM, and W_V transposed once so that sampled columns are contiguous. */
static int upload_weights(mca_attention_t *layer, const mca_attention_weights_t *w)
{
    size_t d = (size_t)w->hidden_size;
    size_t block = d * d;
    float *packed = mca_malloc((3 * block + d * d + 3 * d) * sizeof *packed);
    if (packed == NULL)
        return mca_error(MCA_ERROR_OUT_OF_HOST_MEMORY,
                         "cannot allocate %zu bytes to pack attention weights",
                         (3 * block + d * d + 3 * d) * sizeof *packed);
    float *transposed = packed + 3 * block;
    float *bias = transposed + block;
    memcpy(packed, w->query_weight, block * sizeof *packed);
    memcpy(packed + block, w->key_weight, block * sizeof *packed);
    memcpy(packed + 2 * block, w->value_weight, block * sizeof *packed);
    for (size_t out = 0; out < d; out++)
        for (size_t in = 0; in < d; in++)
            transposed[in * d + out] = w->value_weight[out * d + in];
    memcpy(bias, w->query_bias, d * sizeof *bias);
    memcpy(bias + d, w->key_bias, d * sizeof *bias);
    memcpy(bias + 2 * d, w->value_bias, d * sizeof *bias);

    mca_context_t *context = layer->context;
    int status = mca_buffer_create(context, 3 * block * sizeof(float), packed,
                                   "projection weights", &layer->projection_weight);
    if (status == MCA_SUCCESS)
        status = mca_buffer_create(context, block * sizeof(float), transposed,
                                   "transposed value weight", &layer->value_weight_transposed);
    if (status == MCA_SUCCESS)
        status = mca_buffer_create(context, 3 * d * sizeof(float), bias, "projection biases",
                                   &layer->projection_bias);
    if (status == MCA_SUCCESS)
        status = mca_buffer_create(context, d * sizeof(float), bias + 2 * d, "value bias",
                                   &layer->value_bias);
    free(packed);
    return status;
}

mca_status_t mca_attention_create(mca_context_t *context, const mca_attention_weights_t *weights,
                                  mca_attention_t **attention)
{
    mca_error_clear();
    if (context == NULL || weights == NULL || attention == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "mca_attention_create: context, weights and output must not be NULL");
    int status = validate_weights(weights);
    if (status != MCA_SUCCESS)
        return mca_context_error(context, status, "%s", mca_last_error());

    mca_attention_t *layer = mca_calloc(1, sizeof *layer);
    if (layer == NULL)
        return mca_error(MCA_ERROR_OUT_OF_HOST_MEMORY, "cannot allocate an attention layer");
    layer->context = context;
    layer->hidden_size = weights->hidden_size;
    layer->heads = weights->heads;
    layer->head_width = weights->hidden_size / weights->heads;

    status = upload_weights(layer, weights);
    /* W_V is the last (D, D) block of the stacked projection weights. */
    if (status == MCA_SUCCESS)
        status = mca_sampling_tables_create(
            context, layer->projection_weight,
            2 * (size_t)layer->hidden_size * (size_t)layer->hidden_size, layer->hidden_size,
            layer->heads, &layer->tables);
    if (status != MCA_SUCCESS) {
        mca_attention_destroy(layer);
        return status;
    }
    *attention = layer;
    return MCA_SUCCESS;
}

void mca_attention_destroy(mca_attention_t *attention)
{
    if (attention == NULL)
        return;
    mca_buffer_release(&attention->projection_weight);
    mca_buffer_release(&attention->projection_bias);
    mca_buffer_release(&attention->value_bias);
    mca_buffer_release(&attention->value_weight_transposed);
    mca_sampling_tables_release(&attention->tables);

    mca_workspace_buffer_t *buffers = (mca_workspace_buffer_t *)&attention->workspace;
    size_t count = sizeof attention->workspace / sizeof *buffers;
    for (size_t i = 0; i < count; i++)
        mca_buffer_release(&buffers[i].buffer);

    free(attention->host.counts);
    free(attention->host.bounds);
    free(attention->host.pairs);
    free(attention->host.distinct);
    free(attention->host.exact_rows);
    free(attention->host.gemm_offsets);
    release_stage_events(attention);
    free(attention);
}

/* ------------------------------------------------------------------------------------ */
/* Forward pass                                                                          */
/* ------------------------------------------------------------------------------------ */

/* Shape of one forward call. */
typedef struct forward_shape {
    size_t batch, tokens, hidden, heads, head_width;
    size_t rows;       /* batch * tokens */
    size_t proj_ld;    /* 3 * hidden */
} forward_shape_t;

static int validate_forward(const mca_attention_t *layer, const mca_forward_options_t *options,
                            int batch, int tokens, const int *valid_lengths)
{
    if (options == NULL || valid_lengths == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "forward: options and valid_lengths must not be NULL");
    if (batch <= 0 || tokens <= 0)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "forward: batch %d and tokens %d must both be positive", batch, tokens);
    if (options->mode != MCA_MODE_EXACT && options->mode != MCA_MODE_MCA)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "mode %d is invalid; use MCA_MODE_EXACT or MCA_MODE_MCA",
                         (int)options->mode);
    if (options->exact_rows != MCA_EXACT_PAIRS && options->exact_rows != MCA_EXACT_WHOLE_ROWS)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "exact_rows %d is invalid; use MCA_EXACT_PAIRS or MCA_EXACT_WHOLE_ROWS",
                         (int)options->exact_rows);
    if (options->mode == MCA_MODE_MCA && !(isfinite(options->alpha) && options->alpha > 0.0f))
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "alpha %g is invalid; it must be finite and greater than 0",
                         (double)options->alpha);
    if (options->budget_length < 0 || options->budget_length > MCA_MAX_BUDGET_LENGTH)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "budget length %d is out of range 0 .. %d (0 uses each sequence's "
                         "valid length)",
                         options->budget_length, MCA_MAX_BUDGET_LENGTH);
    if (options->min_samples < 0 || options->min_samples > layer->hidden_size)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "minimum samples %d is out of range 0 .. %d (the hidden size)",
                         options->min_samples, layer->hidden_size);
    if (options->layer_index >= MAX_COUNTER_FIELD)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT, "layer index %u must be below %u",
                         options->layer_index, MAX_COUNTER_FIELD);
    if ((uint64_t)options->first_sequence + (uint64_t)batch > UINT32_MAX)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "first sequence %u plus batch %d exceeds the 32-bit sequence counter",
                         options->first_sequence, batch);
    for (int b = 0; b < batch; b++) {
        if (valid_lengths[b] < 0 || valid_lengths[b] > tokens)
            return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                             "valid_lengths[%d] = %d is out of range 0 .. %d (tokens)", b,
                             valid_lengths[b], tokens);
    }

    /* The largest per-call array is the (B, H, T, T) probability tensor. */
    size_t b = (size_t)batch, t = (size_t)tokens, h = (size_t)layer->heads;
    if (t > MAX_ELEMENTS / t || b * h > MAX_ELEMENTS / (t * t) ||
        b * t > MAX_ELEMENTS / (3 * (size_t)layer->hidden_size))
        return mca_error(MCA_ERROR_INPUT_TOO_LONG,
                         "batch %d x %d tokens x %d heads is too large for 32-bit kernel "
                         "indexing; split the batch",
                         batch, tokens, layer->heads);
    return MCA_SUCCESS;
}

static int reserve(mca_attention_t *layer, mca_workspace_buffer_t *slot, size_t bytes,
                   const char *what)
{
    return mca_buffer_reserve(layer->context, &slot->buffer, &slot->capacity,
                              bytes > 0 ? bytes : sizeof(float), what);
}

static int reserve_host(void **array, size_t *capacity, size_t count, size_t size)
{
    if (*capacity >= count && *array != NULL)
        return MCA_SUCCESS;
    void *grown = mca_realloc(*array, (count > 0 ? count : 1) * size);
    if (grown == NULL)
        return mca_error(MCA_ERROR_OUT_OF_HOST_MEMORY, "cannot allocate %zu bytes of host "
                         "scratch memory", count * size);
    *array = grown;
    *capacity = count;
    return MCA_SUCCESS;
}

/* Projects every row onto `columns` outputs starting at output `first` of the stacked
 * Q | K | V weights, and adds their biases. */
static int project_columns(mca_attention_t *layer, const forward_shape_t *s, size_t first,
                           size_t columns, cl_mem hidden, cl_mem projections)
{
    mca_context_t *context = layer->context;
    mca_matrix_t x = {hidden, 0, s->hidden};
    mca_matrix_t w = {layer->projection_weight, first * s->hidden, s->hidden};
    mca_matrix_t out = {projections, first, s->proj_ld};
    int status = mca_gemm(context, false, true, s->rows, columns, s->hidden, 1.0f, x, w, 0.0f,
                          out);

    cl_kernel kernel = NULL;
    if (status == MCA_SUCCESS)
        status = mca_context_kernel(context, "add_bias", &kernel);
    cl_uint rows = (cl_uint)s->rows, width = (cl_uint)columns, ld = (cl_uint)s->proj_ld;
    cl_uint offset = (cl_uint)first;
    if (status == MCA_SUCCESS)
        status = mca_set_kernel_args(context, kernel, 7, MCA_ARG(rows), MCA_ARG(width),
                                     MCA_ARG(ld), MCA_ARG(offset), MCA_ARG(offset),
                                     MCA_ARG(layer->projection_bias), MCA_ARG(projections));
    size_t global[2] = {columns, s->rows};
    if (status == MCA_SUCCESS)
        status = mca_launch(context, kernel, 2, global, NULL);
    return status;
}

/* Zeroes the value rows of padded tokens, so that 0 * (garbage) in A * V cannot give NaN. */
static int zero_padded_values(mca_attention_t *layer, const forward_shape_t *s,
                              cl_mem projections, cl_mem lengths)
{
    mca_context_t *context = layer->context;
    cl_kernel kernel = NULL;
    int status = mca_context_kernel(context, "zero_padded_rows", &kernel);
    cl_uint batch = (cl_uint)s->batch, tokens = (cl_uint)s->tokens;
    cl_uint hidden_size = (cl_uint)s->hidden, ld = (cl_uint)s->proj_ld;
    cl_uint value_offset = (cl_uint)(2 * s->hidden);
    if (status == MCA_SUCCESS)
        status = mca_set_kernel_args(context, kernel, 7, MCA_ARG(batch), MCA_ARG(tokens),
                                     MCA_ARG(hidden_size), MCA_ARG(ld), MCA_ARG(value_offset),
                                     MCA_ARG(lengths), MCA_ARG(projections));
    size_t global[2] = {s->hidden, s->rows};
    if (status == MCA_SUCCESS)
        status = mca_launch(context, kernel, 2, global, NULL);
    return status;
}

static int enqueue_rows(mca_attention_t *layer, cl_kernel kernel, const forward_shape_t *s)
{
    size_t global[2] = {s->tokens, s->batch * s->heads};
    return mca_launch(layer->context, kernel, 2, global, NULL);
}

/* Reserves the host arrays of A, B and C offsets for a batch of `count` GEMMs. */
static int reserve_gemm_offsets(mca_attention_t *layer, size_t count, size_t **a_offsets,
                                size_t **b_offsets, size_t **c_offsets)
{
    int status = reserve_host((void **)&layer->host.gemm_offsets,
                              &layer->host.offsets_capacity, 3 * count, sizeof(size_t));
    if (status != MCA_SUCCESS)
        return status;
    *a_offsets = layer->host.gemm_offsets;
    *b_offsets = *a_offsets + count;
    *c_offsets = *b_offsets + count;
    return MCA_SUCCESS;
}

/* A[b, h] = softmax(Q_h K_h^T / sqrt(d)) over the valid keys: the scores of every (b, h)
 * come from one batched GEMM, then the softmax_rows kernel masks and normalizes them. */
static int compute_probabilities(mca_attention_t *layer, const forward_shape_t *s,
                                 cl_mem projections, cl_mem lengths, cl_mem probabilities)
{
    size_t count = s->batch * s->heads;
    size_t *q_offsets, *k_offsets, *s_offsets;
    int status = reserve_gemm_offsets(layer, count, &q_offsets, &k_offsets, &s_offsets);
    if (status != MCA_SUCCESS)
        return status;
    for (size_t b = 0; b < s->batch; b++) {
        for (size_t h = 0; h < s->heads; h++) {
            size_t bh = b * s->heads + h;
            q_offsets[bh] = b * s->tokens * s->proj_ld + h * s->head_width;
            k_offsets[bh] = q_offsets[bh] + s->hidden;
            s_offsets[bh] = bh * s->tokens * s->tokens;
        }
    }
    mca_matrix_t q = {projections, 0, s->proj_ld};
    mca_matrix_t k = {projections, 0, s->proj_ld};
    mca_matrix_t scores = {probabilities, 0, s->tokens};
    float scale = 1.0f / sqrtf((float)s->head_width);
    status = mca_gemm_batched(layer->context, false, true, s->tokens, s->tokens,
                              s->head_width, scale, q, q_offsets, k, k_offsets, 0.0f, scores,
                              s_offsets, count);

    cl_kernel kernel = NULL;
    if (status == MCA_SUCCESS)
        status = mca_context_kernel(layer->context, "softmax_rows", &kernel);
    cl_uint batch = (cl_uint)s->batch, heads = (cl_uint)s->heads, tokens = (cl_uint)s->tokens;
    if (status == MCA_SUCCESS)
        status = mca_set_kernel_args(layer->context, kernel, 5, MCA_ARG(batch), MCA_ARG(heads),
                                     MCA_ARG(tokens), MCA_ARG(lengths), MCA_ARG(probabilities));
    if (status == MCA_SUCCESS)
        status = enqueue_rows(layer, kernel, s);
    return status;
}

/* out[b, :, h*d:(h+1)*d] = A[b, h] * V_h for every (b, h), as one batched GEMM. */
static int multiply_values(mca_attention_t *layer, const forward_shape_t *s,
                           cl_mem probabilities, cl_mem projections, cl_mem output)
{
    size_t count = s->batch * s->heads;
    size_t *a_offsets, *b_offsets, *c_offsets;
    int status = reserve_gemm_offsets(layer, count, &a_offsets, &b_offsets, &c_offsets);
    if (status != MCA_SUCCESS)
        return status;
    for (size_t b = 0; b < s->batch; b++) {
        for (size_t h = 0; h < s->heads; h++) {
            size_t bh = b * s->heads + h;
            a_offsets[bh] = bh * s->tokens * s->tokens;
            b_offsets[bh] = b * s->tokens * s->proj_ld + 2 * s->hidden + h * s->head_width;
            c_offsets[bh] = b * s->tokens * s->hidden + h * s->head_width;
        }
    }
    mca_matrix_t a = {probabilities, 0, s->tokens};
    mca_matrix_t v = {projections, 0, s->proj_ld};
    mca_matrix_t c = {output, 0, s->hidden};
    return mca_gemm_batched(layer->context, false, false, s->tokens, s->head_width, s->tokens,
                            1.0f, a, a_offsets, v, b_offsets, 0.0f, c, c_offsets, count);
}

/* Sample count of every (sequence, head, key) triple from the column maxima of A. */
static int compute_sample_counts(mca_attention_t *layer, const mca_forward_options_t *options,
                                 const forward_shape_t *s, cl_mem lengths, cl_mem probabilities)
{
    mca_context_t *context = layer->context;
    mca_attention_workspace_t *ws = &layer->workspace;
    size_t triples = s->batch * s->heads * s->tokens;
    int status = reserve(layer, &ws->counts, triples * sizeof(cl_uint), "sample counts");
    cl_kernel kernel = NULL;
    if (status == MCA_SUCCESS)
        status = mca_context_kernel(context, "sample_counts", &kernel);
    cl_uint batch = (cl_uint)s->batch, heads = (cl_uint)s->heads, tokens = (cl_uint)s->tokens;
    cl_uint hidden_size = (cl_uint)s->hidden;
    cl_uint budget = (cl_uint)options->budget_length;
    cl_uint min_samples = (cl_uint)options->min_samples;
    float alpha = options->alpha;
    if (status == MCA_SUCCESS)
        status = mca_set_kernel_args(context, kernel, 10, MCA_ARG(batch), MCA_ARG(heads),
                                     MCA_ARG(tokens), MCA_ARG(hidden_size), MCA_ARG(budget),
                                     MCA_ARG(min_samples), MCA_ARG(alpha), MCA_ARG(lengths),
                                     MCA_ARG(probabilities), MCA_ARG(ws->counts.buffer));
    if (status == MCA_SUCCESS)
        status = enqueue_rows(layer, kernel, s);
    return status;
}

/* Token norms and the per-row error bound of every valid query row. */
static int compute_error_bounds(mca_attention_t *layer, const forward_shape_t *s, cl_mem hidden,
                                cl_mem lengths, cl_mem probabilities)
{
    mca_context_t *context = layer->context;
    mca_attention_workspace_t *ws = &layer->workspace;
    size_t triples = s->batch * s->heads * s->tokens;
    int status = reserve(layer, &ws->norms, s->rows * sizeof(float), "token norms");
    if (status == MCA_SUCCESS)
        status = reserve(layer, &ws->bounds, triples * sizeof(float), "error bounds");

    cl_kernel norms = NULL;
    if (status == MCA_SUCCESS)
        status = mca_context_kernel(context, "token_norms", &norms);
    cl_uint rows = (cl_uint)s->rows, hidden_size = (cl_uint)s->hidden;
    if (status == MCA_SUCCESS)
        status = mca_set_kernel_args(context, norms, 4, MCA_ARG(rows), MCA_ARG(hidden_size),
                                     MCA_ARG(hidden), MCA_ARG(ws->norms.buffer));
    if (status == MCA_SUCCESS)
        status = mca_launch(context, norms, 1, &s->rows, NULL);

    cl_kernel bounds = NULL;
    if (status == MCA_SUCCESS)
        status = mca_context_kernel(context, "error_bounds", &bounds);
    cl_uint batch = (cl_uint)s->batch, heads = (cl_uint)s->heads, tokens = (cl_uint)s->tokens;
    if (status == MCA_SUCCESS)
        status = mca_set_kernel_args(context, bounds, 10, MCA_ARG(batch), MCA_ARG(heads),
                                     MCA_ARG(tokens), MCA_ARG(hidden_size), MCA_ARG(lengths),
                                     MCA_ARG(probabilities), MCA_ARG(ws->counts.buffer),
                                     MCA_ARG(ws->norms.buffer),
                                     MCA_ARG(layer->tables.head_norms),
                                     MCA_ARG(ws->bounds.buffer));
    if (status == MCA_SUCCESS)
        status = enqueue_rows(layer, bounds, s);
    return status;
}

/* Host copy of the counts, for planning. */
static int read_counts(mca_attention_t *layer, const forward_shape_t *s)
{
    mca_attention_host_t *host = &layer->host;
    size_t triples = s->batch * s->heads * s->tokens;
    int status = reserve_host((void **)&host->counts, &host->counts_capacity, triples,
                              sizeof(cl_uint));
    if (status == MCA_SUCCESS)
        status = mca_buffer_read(layer->context, layer->workspace.counts.buffer, 0,
                                 triples * sizeof(cl_uint), host->counts);
    return status;
}

/* Host copy of the error bounds, for the statistics. */
static int read_bounds(mca_attention_t *layer, const forward_shape_t *s)
{
    mca_attention_host_t *host = &layer->host;
    size_t triples = s->batch * s->heads * s->tokens;
    int status = reserve_host((void **)&host->bounds, &host->bounds_capacity, triples,
                              sizeof(float));
    if (status == MCA_SUCCESS)
        status = mca_buffer_read(layer->context, layer->workspace.bounds.buffer, 0,
                                 triples * sizeof(float), host->bounds);
    return status;
}

/* Marks an unused slot of the exact rows' table, padding a head's group. */
#define NO_ROW 0xffffffffu

/* With MCA_EXACT_WHOLE_ROWS, a sequence computes every head of each token that has an exact
 * head, if such tokens are at most this many times the exact tokens of its largest head.
 * The decision is per sequence, so a sequence's result does not depend on the batch. NOTE: 2 comes from mca-tune's timings on PoCL 3.1
 * (2-core AMD EPYC), where the batched per-head GEMM with n = d = 64 ran at 7.5 GFLOP/s and
 * the (512, 768, 768) one at 17.7, because CLBlast's tuned Xgemm pads n to its 128-wide
 * tiles. Other devices may differ. */
#define WHOLE_ROWS_FACTOR 2

/* How the exact (token, head) pairs are computed. Tokens whose every head is exact run as
 * whole value rows in one (whole_rows, D, D) GEMM. The other exact pairs run in a batched
 * GEMM of H per-head groups of rows_per_head rows, each against its head's d rows of W_V. */
typedef struct exact_plan {
    size_t whole_rows;
    size_t rows_per_head; /* 0 when no pair outside the whole rows is exact */
} exact_plan_t;

static bool is_exact(const mca_attention_host_t *host, const forward_shape_t *s, size_t b,
                     size_t h, size_t j)
{
    return host->counts[(b * s->heads + h) * s->tokens + j] >= s->hidden;
}

/* Whether every head of token j of sequence b is exact. */
static bool is_whole_row(const mca_attention_host_t *host, const forward_shape_t *s, size_t b,
                         size_t j)
{
    for (size_t h = 0; h < s->heads; h++) {
        if (!is_exact(host, s, b, h, j))
            return false;
    }
    return true;
}

/* With MCA_EXACT_WHOLE_ROWS, raises the counts of every head of sequence b's tokens that
 * have an exact head to D when WHOLE_ROWS_FACTOR allows it. */
static void raise_whole_rows(mca_attention_host_t *host, const forward_shape_t *s, size_t b,
                             size_t length)
{
    size_t tokens_with_exact = 0, largest_group = 0;
    for (size_t h = 0; h < s->heads; h++) {
        size_t group = 0;
        for (size_t j = 0; j < length; j++)
            group += is_exact(host, s, b, h, j);
        largest_group = group > largest_group ? group : largest_group;
    }
    for (size_t j = 0; j < length; j++) {
        for (size_t h = 0; h < s->heads; h++) {
            if (is_exact(host, s, b, h, j)) {
                tokens_with_exact++;
                break;
            }
        }
    }
    if (tokens_with_exact > WHOLE_ROWS_FACTOR * largest_group)
        return;
    for (size_t j = 0; j < length; j++) {
        bool exact = false;
        for (size_t h = 0; h < s->heads && !exact; h++)
            exact = is_exact(host, s, b, h, j);
        for (size_t h = 0; exact && h < s->heads; h++)
            host->counts[(b * s->heads + h) * s->tokens + j] = (cl_uint)s->hidden;
    }
}

/* Chooses how to compute the exact pairs and lists their rows in host->exact_rows: first
 * the plan->whole_rows tokens whose every head is exact, then H groups of
 * plan->rows_per_head slots, where slot i of group h contains the row of head h's i-th
 * other exact pair and NO_ROW pads the groups of heads with fewer. With
 * MCA_EXACT_WHOLE_ROWS the counts raised to D stay raised, so that the statistics, the
 * error bounds and the sampling see those pairs as exact; *counts_raised reports whether
 * any count changed. */
static int plan_exact_values(mca_attention_t *layer, const mca_forward_options_t *options,
                             const forward_shape_t *s, const int *lengths, exact_plan_t *plan,
                             bool *counts_raised)
{
    mca_attention_host_t *host = &layer->host;
    size_t triples = s->batch * s->heads * s->tokens;
    *counts_raised = false;
    if (options->exact_rows == MCA_EXACT_WHOLE_ROWS) {
        size_t exact_before = 0, exact_after = 0;
        for (size_t t = 0; t < triples; t++)
            exact_before += host->counts[t] >= s->hidden;
        for (size_t b = 0; b < s->batch; b++)
            raise_whole_rows(host, s, b, (size_t)lengths[b]);
        for (size_t t = 0; t < triples; t++)
            exact_after += host->counts[t] >= s->hidden;
        *counts_raised = exact_after != exact_before;
    }

    /* Whole rows first, then the size of the largest per-head group of the others. */
    plan->whole_rows = 0;
    plan->rows_per_head = 0;
    for (size_t b = 0; b < s->batch; b++) {
        for (size_t j = 0; j < (size_t)lengths[b]; j++)
            plan->whole_rows += is_whole_row(host, s, b, j);
    }
    for (size_t h = 0; h < s->heads; h++) {
        size_t group = 0;
        for (size_t b = 0; b < s->batch; b++) {
            for (size_t j = 0; j < (size_t)lengths[b]; j++)
                group += !is_whole_row(host, s, b, j) && is_exact(host, s, b, h, j);
        }
        plan->rows_per_head = group > plan->rows_per_head ? group : plan->rows_per_head;
    }

    size_t slots = plan->whole_rows + s->heads * plan->rows_per_head;
    int status = reserve_host((void **)&host->exact_rows, &host->rows_capacity, slots,
                              sizeof(cl_uint));
    if (status != MCA_SUCCESS)
        return status;
    size_t whole = 0;
    for (size_t b = 0; b < s->batch; b++) {
        for (size_t j = 0; j < (size_t)lengths[b]; j++) {
            if (is_whole_row(host, s, b, j))
                host->exact_rows[whole++] = (cl_uint)(b * s->tokens + j);
        }
    }
    for (size_t h = 0; h < s->heads; h++) {
        cl_uint *group = host->exact_rows + plan->whole_rows + h * plan->rows_per_head;
        size_t used = 0;
        for (size_t b = 0; b < s->batch; b++) {
            for (size_t j = 0; j < (size_t)lengths[b]; j++) {
                if (!is_whole_row(host, s, b, j) && is_exact(host, s, b, h, j))
                    group[used++] = (cl_uint)(b * s->tokens + j);
            }
        }
        while (used < plan->rows_per_head)
            group[used++] = NO_ROW;
    }
    return MCA_SUCCESS;
}

/* Lists the (token, head) pairs to sample, those with 0 < r < D after plan_exact_values. */
static int plan_sampled_values(mca_attention_t *layer, const forward_shape_t *s,
                               const int *lengths, size_t *pair_count, size_t *sample_total)
{
    mca_attention_host_t *host = &layer->host;
    size_t triples = s->batch * s->heads * s->tokens;
    int status = reserve_host((void **)&host->pairs, &host->pairs_capacity, 4 * triples,
                              sizeof(cl_uint));
    if (status == MCA_SUCCESS)
        status = reserve_host((void **)&host->distinct, &host->distinct_capacity, triples,
                              sizeof(cl_uint));
    if (status != MCA_SUCCESS)
        return status;

    size_t pairs = 0, samples = 0;
    for (size_t b = 0; b < s->batch; b++) {
        for (size_t j = 0; j < (size_t)lengths[b]; j++) {
            for (size_t h = 0; h < s->heads; h++) {
                cl_uint r = host->counts[(b * s->heads + h) * s->tokens + j];
                if (r >= s->hidden)
                    continue;
                cl_uint *pair = host->pairs + 4 * pairs++;
                pair[0] = (cl_uint)(b * s->tokens + j);
                pair[1] = (cl_uint)h;
                pair[2] = r;
                pair[3] = (cl_uint)samples;
                samples += r;
            }
        }
    }
    *pair_count = pairs;
    *sample_total = samples;
    return MCA_SUCCESS;
}

/* Writes the `count` exact products from slot `first` of the exact table into the value
 * columns of their rows, with the bias added. Each slot contributes group_width values, and
 * slot first + q writes value columns (q / rows_per_group) * group_width onwards. */
static int scatter_exact_values(mca_attention_t *layer, const forward_shape_t *s, size_t first,
                                size_t count, size_t rows_per_group, size_t group_width,
                                cl_mem projections)
{
    mca_context_t *context = layer->context;
    mca_attention_workspace_t *ws = &layer->workspace;
    cl_kernel scatter = NULL;
    int status = mca_context_kernel(context, "scatter_exact_values", &scatter);
    cl_uint first_slot = (cl_uint)first, slots = (cl_uint)count;
    cl_uint first_value = (cl_uint)(first * s->hidden), slot_width = (cl_uint)s->hidden;
    cl_uint group_rows = (cl_uint)rows_per_group, width = (cl_uint)group_width;
    cl_uint ld = (cl_uint)s->proj_ld, value_offset = (cl_uint)(2 * s->hidden);
    if (status == MCA_SUCCESS)
        status = mca_set_kernel_args(context, scatter, 12, MCA_ARG(first_slot), MCA_ARG(slots),
                                     MCA_ARG(first_value), MCA_ARG(slot_width),
                                     MCA_ARG(group_rows), MCA_ARG(width), MCA_ARG(ld),
                                     MCA_ARG(value_offset),
                                     MCA_ARG(ws->exact_rows.buffer),
                                     MCA_ARG(ws->exact_values.buffer),
                                     MCA_ARG(layer->value_bias), MCA_ARG(projections));
    size_t global[2] = {group_width, count};
    if (status == MCA_SUCCESS)
        status = mca_launch(context, scatter, 2, global, NULL);
    return status;
}

/* Computes the value rows of the exact (token, head) pairs as `plan` groups them. The
 * hidden states are gathered, with zero rows padding the per-head groups. The whole rows
 * take one GEMM and the per-head groups one batched GEMM, because each CLBlast call costs
 * about 2 ms on PoCL whatever its size. A scatter then adds the bias. Slot q's product
 * starts at element q * D of exact_values, so both parts share the two buffers. */
static int compute_exact_values(mca_attention_t *layer, const forward_shape_t *s,
                                const exact_plan_t *plan, cl_mem hidden, cl_mem projections)
{
    size_t slots = plan->whole_rows + s->heads * plan->rows_per_head;
    if (slots == 0)
        return MCA_SUCCESS;
    mca_context_t *context = layer->context;
    mca_attention_workspace_t *ws = &layer->workspace;
    mca_attention_host_t *host = &layer->host;
    size_t *a_offsets = NULL, *b_offsets = NULL, *c_offsets = NULL;
    int status = reserve(layer, &ws->exact_rows, slots * sizeof(cl_uint), "exact rows");
    if (status == MCA_SUCCESS)
        status = reserve(layer, &ws->exact_hidden, slots * s->hidden * sizeof(float),
                         "exact hidden rows");
    if (status == MCA_SUCCESS)
        status = reserve(layer, &ws->exact_values, slots * s->hidden * sizeof(float),
                         "exact value rows");
    if (status == MCA_SUCCESS)
        status = reserve_gemm_offsets(layer, s->heads, &a_offsets, &b_offsets, &c_offsets);
    if (status == MCA_SUCCESS)
        status = mca_buffer_write(context, ws->exact_rows.buffer, 0, slots * sizeof(cl_uint),
                                  host->exact_rows);
    if (status != MCA_SUCCESS)
        return status;

    cl_kernel gather = NULL;
    cl_uint count = (cl_uint)slots, width = (cl_uint)s->hidden;
    status = mca_context_kernel(context, "gather_rows", &gather);
    if (status == MCA_SUCCESS)
        status = mca_set_kernel_args(context, gather, 5, MCA_ARG(count), MCA_ARG(width),
                                     MCA_ARG(ws->exact_rows.buffer), MCA_ARG(hidden),
                                     MCA_ARG(ws->exact_hidden.buffer));
    size_t gather_global[2] = {s->hidden, slots};
    if (status == MCA_SUCCESS)
        status = mca_launch(context, gather, 2, gather_global, NULL);

    /* W_V is the last third of the stacked projection weight. */
    size_t value_weight = 2 * s->hidden * s->hidden;
    if (status == MCA_SUCCESS && plan->whole_rows > 0) {
        mca_matrix_t x = {ws->exact_hidden.buffer, 0, s->hidden};
        mca_matrix_t w = {layer->projection_weight, value_weight, s->hidden};
        mca_matrix_t v = {ws->exact_values.buffer, 0, s->hidden};
        status = mca_gemm(context, false, true, plan->whole_rows, s->hidden, s->hidden, 1.0f,
                          x, w, 0.0f, v);
        if (status == MCA_SUCCESS)
            status = scatter_exact_values(layer, s, 0, plan->whole_rows, plan->whole_rows,
                                          s->hidden, projections);
    }

    if (status == MCA_SUCCESS && plan->rows_per_head > 0) {
        /* Group h's products are (rows_per_head, d) with row stride D, so that slot q's
         * product starts at element q * D like the whole rows'. */
        for (size_t h = 0; h < s->heads; h++) {
            size_t first_slot = plan->whole_rows + h * plan->rows_per_head;
            a_offsets[h] = first_slot * s->hidden;
            b_offsets[h] = value_weight + h * s->head_width * s->hidden;
            c_offsets[h] = first_slot * s->hidden;
        }
        mca_matrix_t x = {ws->exact_hidden.buffer, 0, s->hidden};
        mca_matrix_t w = {layer->projection_weight, 0, s->hidden};
        mca_matrix_t v = {ws->exact_values.buffer, 0, s->hidden};
        status = mca_gemm_batched(context, false, true, plan->rows_per_head, s->head_width,
                                  s->hidden, 1.0f, x, a_offsets, w, b_offsets, 0.0f, v,
                                  c_offsets, s->heads);
        if (status == MCA_SUCCESS)
            status = scatter_exact_values(layer, s, plan->whole_rows,
                                          s->heads * plan->rows_per_head, plan->rows_per_head,
                                          s->head_width, projections);
    }
    return status;
}

/* Sampled value rows: draw and merge column indices, then accumulate. */
static int compute_sampled_values(mca_attention_t *layer, const mca_forward_options_t *options,
                                  const forward_shape_t *s, size_t pair_count,
                                  size_t sample_total, cl_mem hidden, cl_mem projections)
{
    if (pair_count == 0)
        return MCA_SUCCESS;
    mca_context_t *context = layer->context;
    mca_attention_workspace_t *ws = &layer->workspace;
    int status = reserve(layer, &ws->pairs, pair_count * 4 * sizeof(cl_uint), "sample pairs");
    if (status == MCA_SUCCESS)
        status = reserve(layer, &ws->distinct, pair_count * sizeof(cl_uint), "distinct counts");
    if (status == MCA_SUCCESS)
        status = reserve(layer, &ws->columns, sample_total * sizeof(cl_uint), "sampled columns");
    if (status == MCA_SUCCESS)
        status = reserve(layer, &ws->weights, sample_total * sizeof(float), "sample weights");
    if (status == MCA_SUCCESS)
        status = mca_buffer_write(context, ws->pairs.buffer, 0,
                                  pair_count * 4 * sizeof(cl_uint), layer->host.pairs);
    if (status != MCA_SUCCESS)
        return status;

    mca_draw_request_t request = {
        .pair_count = (uint32_t)pair_count,
        .tokens = (uint32_t)s->tokens,
        .seed = options->seed,
        .layer = options->layer_index,
        .first_sequence = options->first_sequence,
        .pairs = ws->pairs.buffer,
        .hidden = hidden,
        .columns = ws->columns.buffer,
        .weights = ws->weights.buffer,
        .distinct = ws->distinct.buffer,
    };
    if (layer->value_strategy == MCA_VALUES_PUBLISHED) {
        /* No merging: every sample is a column read, which the statistics count. */
        for (size_t q = 0; q < pair_count; q++)
            layer->host.distinct[q] = layer->host.pairs[4 * q + 2];
        status = mark_stage(layer, MCA_STAGE_ACCUMULATION, 0);
        if (status == MCA_SUCCESS)
            status = mca_sampling_published(context, &layer->tables, &request,
                                            layer->projection_weight,
                                            2 * s->hidden * s->hidden, layer->value_bias,
                                            s->proj_ld, 2 * s->hidden, projections);
        if (status == MCA_SUCCESS)
            status = mark_stage(layer, MCA_STAGE_ACCUMULATION, 1);
        return status;
    }

    status = mark_stage(layer, MCA_STAGE_SAMPLING, 0);
    if (status == MCA_SUCCESS)
        status = mca_sampling_draw(context, &layer->tables, &request);
    if (status == MCA_SUCCESS)
        status = mark_stage(layer, MCA_STAGE_SAMPLING, 1);
    if (status == MCA_SUCCESS)
        status = mark_stage(layer, MCA_STAGE_ACCUMULATION, 0);
    if (status == MCA_SUCCESS)
        status = mca_sampling_accumulate(context, &layer->tables, &request,
                                         layer->value_weight_transposed, layer->value_bias,
                                         s->proj_ld, 2 * s->hidden, projections);
    if (status == MCA_SUCCESS)
        status = mark_stage(layer, MCA_STAGE_ACCUMULATION, 1);
    if (status == MCA_SUCCESS)
        status = mca_buffer_read(context, ws->distinct.buffer, 0, pair_count * sizeof(cl_uint),
                                 layer->host.distinct);
    return status;
}

static int histogram_bin(cl_uint r, size_t hidden)
{
    if (r >= hidden)
        return MCA_HISTOGRAM_BINS - 1;
    int bin = 0;
    while (r > 0 && bin < MCA_HISTOGRAM_BINS - 2) {
        r >>= 1;
        bin++;
    }
    return bin;
}

static unsigned search_steps(size_t n)
{
    unsigned steps = 0;
    while (((size_t)1 << steps) < n)
        steps++;
    return steps;
}

/* Adds this call's counts to *stats. In MCA mode reads the host copies of the counts,
 * bounds and distinct-column counts that the forward pass left. */
static void add_stats(const mca_attention_t *layer, const mca_forward_options_t *options,
                      const forward_shape_t *s, const int *lengths, size_t pair_count,
                      mca_forward_stats_t *stats)
{
    mca_forward_stats_t call;
    memset(&call, 0, sizeof call);
    double d = (double)s->hidden;
    call.padded_positions = s->rows;
    call.paper_ratio_count = s->batch * s->heads * s->tokens;
    for (size_t b = 0; b < s->batch; b++) {
        call.valid_tokens += (uint64_t)lengths[b];
        call.exact_value_flops += 2.0 * lengths[b] * d * d;
    }

    if (options->mode == MCA_MODE_EXACT) {
        call.value_flops = call.exact_value_flops;
        call.paper_ratio_sum = (double)call.paper_ratio_count;
        call.histogram[MCA_HISTOGRAM_BINS - 1] = call.valid_tokens * s->heads;
        call.error_bound_rows = call.valid_tokens * s->heads;
        mca_forward_stats_add(stats, &call);
        return;
    }

    const mca_attention_host_t *host = &layer->host;
    unsigned steps = search_steps(s->hidden);
    for (size_t b = 0; b < s->batch; b++) {
        for (size_t h = 0; h < s->heads; h++) {
            size_t base = (b * s->heads + h) * s->tokens;
            for (size_t j = 0; j < (size_t)lengths[b]; j++) {
                cl_uint r = host->counts[base + j];
                call.paper_ratio_sum += r >= s->hidden ? 1.0 : r / d;
                call.histogram[histogram_bin(r, s->hidden)]++;
                if (r >= s->hidden) {
                    call.value_flops += 2.0 * s->head_width * d;
                } else {
                    call.samples_drawn += r;
                    call.uniforms_drawn += 4 * (((uint64_t)r + 3) / 4);
                    call.search_steps += (uint64_t)r * steps;
                }
                double bound = host->bounds[base + j];
                call.error_bound_sum += bound;
                call.error_bound_rows++;
                if (bound > call.error_bound_max)
                    call.error_bound_max = bound;
            }
        }
    }
    for (size_t q = 0; q < pair_count; q++) {
        call.distinct_columns += host->distinct[q];
        call.value_flops += 2.0 * host->distinct[q] * s->head_width;
    }
    mca_forward_stats_add(stats, &call);
}

/* Value rows in MCA mode: counts read back, pairs planned, then exact and sampled rows.
 * The error bounds cost as much as the softmax, so they are computed only when the caller
 * asked for statistics. */
static int compute_mca_values(mca_attention_t *layer, const mca_forward_options_t *options,
                              const forward_shape_t *s, const int *valid_lengths, cl_mem hidden,
                              bool with_statistics, size_t *pair_count)
{
    mca_context_t *context = layer->context;
    mca_attention_workspace_t *ws = &layer->workspace;
    size_t sample_total = 0;
    exact_plan_t plan = {0, 0};
    bool counts_raised = false;

    int status = mark_stage(layer, MCA_STAGE_PLANNING, 0);
    if (status == MCA_SUCCESS)
        status = read_counts(layer, s);
    if (status == MCA_SUCCESS)
        status = plan_exact_values(layer, options, s, valid_lengths, &plan, &counts_raised);
    if (status == MCA_SUCCESS)
        status = plan_sampled_values(layer, s, valid_lengths, pair_count, &sample_total);
    if (status == MCA_SUCCESS && sample_total >= MAX_ELEMENTS)
        status = mca_context_error(context, MCA_ERROR_INPUT_TOO_LONG,
                                   "%zu samples exceed 32-bit kernel indexing; split the batch "
                                   "or raise alpha",
                                   sample_total);
    /* The error bounds read the counts on the device. */
    if (status == MCA_SUCCESS && counts_raised && with_statistics)
        status = mca_buffer_write(context, ws->counts.buffer, 0,
                                  s->batch * s->heads * s->tokens * sizeof(cl_uint),
                                  layer->host.counts);
    if (status == MCA_SUCCESS)
        status = mark_stage(layer, MCA_STAGE_PLANNING, 1);

    if (status == MCA_SUCCESS && with_statistics) {
        status = mark_stage(layer, MCA_STAGE_STATISTICS, 0);
        if (status == MCA_SUCCESS)
            status = compute_error_bounds(layer, s, hidden, ws->lengths.buffer,
                                          ws->probabilities.buffer);
        if (status == MCA_SUCCESS)
            status = mark_stage(layer, MCA_STAGE_STATISTICS, 1);
    }

    if (status == MCA_SUCCESS)
        status = mark_stage(layer, MCA_STAGE_EXACT_VALUES, 0);
    if (status == MCA_SUCCESS)
        status = zero_padded_values(layer, s, ws->projections.buffer, ws->lengths.buffer);
    if (status == MCA_SUCCESS)
        status = compute_exact_values(layer, s, &plan, hidden, ws->projections.buffer);
    if (status == MCA_SUCCESS)
        status = mark_stage(layer, MCA_STAGE_EXACT_VALUES, 1);

    if (status == MCA_SUCCESS)
        status = compute_sampled_values(layer, options, s, *pair_count, sample_total, hidden,
                                        ws->projections.buffer);
    if (status == MCA_SUCCESS && with_statistics)
        status = read_bounds(layer, s);
    return status;
}

/* Rejects a call whose largest buffers exceed the device's limits, before any buffer is
 * created: each against CL_DEVICE_MAX_MEM_ALLOC_SIZE, and their sum against
 * CL_DEVICE_GLOBAL_MEM_SIZE. The buffers whose size depends on the sample counts are checked
 * when they are created, by mca_buffer_create. */
static int check_device_limits(const mca_attention_t *layer, const forward_shape_t *s,
                               bool host_copies, mca_mode_t mode)
{
    const mca_context_t *context = layer->context;
    /* The sampling kernel counts the draws of a pair in local memory, one counter per
     * column, plus one per work-item; see mca_sampling_draw. */
    size_t counters = (s->hidden + context->local_size + 1) * sizeof(cl_uint);
    if (mode == MCA_MODE_MCA && counters > context->local_mem_size)
        return mca_context_error(context, MCA_ERROR_DEVICE_LIMIT,
                                 "MCA mode needs %zu bytes of local memory for hidden size %zu, "
                                 "but the device has %llu (CL_DEVICE_LOCAL_MEM_SIZE); use exact "
                                 "mode on this device",
                                 counters, s->hidden,
                                 (unsigned long long)context->local_mem_size);
    const struct {
        const char *what;
        size_t bytes;
    } buffers[] = {
        {"the attention probabilities", s->batch * s->heads * s->tokens * s->tokens *
                                            sizeof(float)},
        {"the Q, K and V projections", s->rows * s->proj_ld * sizeof(float)},
        {"a copy of the hidden states", host_copies ? s->rows * s->hidden * sizeof(float) : 0},
        {"the attention output", host_copies ? s->rows * s->hidden * sizeof(float) : 0},
    };
    unsigned long long total = 0;
    for (size_t i = 0; i < sizeof buffers / sizeof *buffers; i++) {
        if (buffers[i].bytes > context->max_mem_alloc_size)
            return mca_context_error(context, MCA_ERROR_DEVICE_LIMIT,
                                     "batch %zu x %zu tokens needs %zu bytes for %s in one "
                                     "buffer, but the device allows at most %llu "
                                     "(CL_DEVICE_MAX_MEM_ALLOC_SIZE); split the batch or "
                                     "shorten the sequences",
                                     s->batch, s->tokens, buffers[i].bytes, buffers[i].what,
                                     (unsigned long long)context->max_mem_alloc_size);
        total += buffers[i].bytes;
    }
    if (total > context->global_mem_size)
        return mca_context_error(context, MCA_ERROR_DEVICE_LIMIT,
                                 "batch %zu x %zu tokens needs at least %llu bytes of device "
                                 "memory, but the device has %llu (CL_DEVICE_GLOBAL_MEM_SIZE); "
                                 "split the batch or shorten the sequences",
                                 s->batch, s->tokens, total,
                                 (unsigned long long)context->global_mem_size);
    return MCA_SUCCESS;
}

static int forward_on_device(mca_attention_t *layer, const mca_forward_options_t *options,
                             const forward_shape_t *s, const int *valid_lengths, cl_mem hidden,
                             cl_mem output, mca_forward_stats_t *stats)
{
    mca_context_t *context = layer->context;
    mca_attention_workspace_t *ws = &layer->workspace;
    bool exact = options->mode == MCA_MODE_EXACT;
    release_stage_events(layer); /* left by a profiled call that failed */

    int status = reserve(layer, &ws->lengths, s->batch * sizeof(int), "valid lengths");
    if (status == MCA_SUCCESS)
        status = reserve(layer, &ws->projections, s->rows * s->proj_ld * sizeof(float),
                         "Q, K and V projections");
    if (status == MCA_SUCCESS)
        status = reserve(layer, &ws->probabilities,
                         s->batch * s->heads * s->tokens * s->tokens * sizeof(float),
                         "attention probabilities");
    if (status == MCA_SUCCESS)
        status = mca_buffer_write(context, ws->lengths.buffer, 0, s->batch * sizeof(int),
                                  valid_lengths);

    if (status == MCA_SUCCESS)
        status = mark_stage(layer, MCA_STAGE_QK_PROJECTION, 0);
    if (status == MCA_SUCCESS)
        status = project_columns(layer, s, 0, 2 * s->hidden, hidden, ws->projections.buffer);
    if (status == MCA_SUCCESS)
        status = mark_stage(layer, MCA_STAGE_QK_PROJECTION, 1);

    if (status == MCA_SUCCESS)
        status = mark_stage(layer, MCA_STAGE_SCORES, 0);
    if (status == MCA_SUCCESS)
        status = compute_probabilities(layer, s, ws->projections.buffer, ws->lengths.buffer,
                                       ws->probabilities.buffer);
    if (status == MCA_SUCCESS && !exact)
        status = compute_sample_counts(layer, options, s, ws->lengths.buffer,
                                       ws->probabilities.buffer);
    if (status == MCA_SUCCESS)
        status = mark_stage(layer, MCA_STAGE_SCORES, 1);

    size_t pair_count = 0;
    if (status == MCA_SUCCESS && exact) {
        status = mark_stage(layer, MCA_STAGE_EXACT_VALUES, 0);
        if (status == MCA_SUCCESS)
            status = project_columns(layer, s, 2 * s->hidden, s->hidden, hidden,
                                     ws->projections.buffer);
        if (status == MCA_SUCCESS)
            status = zero_padded_values(layer, s, ws->projections.buffer, ws->lengths.buffer);
        if (status == MCA_SUCCESS)
            status = mark_stage(layer, MCA_STAGE_EXACT_VALUES, 1);
    } else if (status == MCA_SUCCESS) {
        status = compute_mca_values(layer, options, s, valid_lengths, hidden, stats != NULL,
                                    &pair_count);
    }

    if (status == MCA_SUCCESS)
        status = mark_stage(layer, MCA_STAGE_ATTEND, 0);
    if (status == MCA_SUCCESS)
        status = multiply_values(layer, s, ws->probabilities.buffer, ws->projections.buffer,
                                 output);
    if (status == MCA_SUCCESS)
        status = mark_stage(layer, MCA_STAGE_ATTEND, 1);
    if (status == MCA_SUCCESS)
        status = mca_check_cl(context, clFinish(context->queue), "clFinish");
    if (status == MCA_SUCCESS && layer->profile != NULL)
        status = collect_stage_times(layer);
    if (status == MCA_SUCCESS && stats != NULL)
        add_stats(layer, options, s, valid_lengths, pair_count, stats);
    return status;
}

static forward_shape_t make_shape(const mca_attention_t *layer, int batch, int tokens)
{
    forward_shape_t s;
    s.batch = (size_t)batch;
    s.tokens = (size_t)tokens;
    s.hidden = (size_t)layer->hidden_size;
    s.heads = (size_t)layer->heads;
    s.head_width = (size_t)layer->head_width;
    s.rows = s.batch * s.tokens;
    s.proj_ld = 3 * s.hidden;
    return s;
}

mca_status_t mca_attention_forward_buffers(mca_attention_t *attention,
                                           const mca_forward_options_t *options, int batch,
                                           int tokens, const int *valid_lengths, cl_mem hidden,
                                           cl_mem context, mca_forward_stats_t *stats)
{
    mca_error_clear();
    if (attention == NULL || hidden == NULL || context == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "forward: attention, hidden and context must not be NULL");
    int status = validate_forward(attention, options, batch, tokens, valid_lengths);
    if (status != MCA_SUCCESS)
        return mca_context_error(attention->context, status, "%s", mca_last_error());
    forward_shape_t s = make_shape(attention, batch, tokens);
    status = check_device_limits(attention, &s, false, options->mode);
    if (status != MCA_SUCCESS)
        return status;

    size_t needed = s.rows * s.hidden * sizeof(float);
    size_t hidden_size = 0, context_size = 0;
    cl_int code = clGetMemObjectInfo(hidden, CL_MEM_SIZE, sizeof hidden_size, &hidden_size, NULL);
    if (code == CL_SUCCESS)
        code = clGetMemObjectInfo(context, CL_MEM_SIZE, sizeof context_size, &context_size, NULL);
    if (code != CL_SUCCESS)
        return mca_check_cl(attention->context, code, "clGetMemObjectInfo on the forward buffers");
    if (hidden_size < needed || context_size < needed)
        return mca_context_error(attention->context, MCA_ERROR_INVALID_ARGUMENT,
                                 "forward buffers hold %zu and %zu bytes, but batch %d x %d "
                                 "tokens x %d needs %zu",
                                 hidden_size, context_size, batch, tokens,
                                 attention->hidden_size, needed);
    return forward_on_device(attention, options, &s, valid_lengths, hidden, context, stats);
}

/* Rejects a non-finite value in a valid row of host hidden states. Padded rows may hold
 * anything. The scan reads batch * tokens * D floats, little next to the projections. */
static int check_hidden_finite(const mca_attention_t *layer, int batch, int tokens,
                               const int *valid_lengths, const float *hidden)
{
    size_t width = (size_t)layer->hidden_size;
    for (int b = 0; b < batch; b++) {
        const float *rows = hidden + (size_t)b * (size_t)tokens * width;
        size_t count = (size_t)valid_lengths[b] * width;
        for (size_t i = 0; i < count; i++) {
            if (!isfinite(rows[i]))
                return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                                 "hidden[%d][%zu][%zu] is %g; hidden states of valid tokens "
                                 "must be finite, so fix the input or count the row as padding",
                                 b, i / width, i % width, (double)rows[i]);
        }
    }
    return MCA_SUCCESS;
}

mca_status_t mca_attention_forward(mca_attention_t *attention, const mca_forward_options_t *options,
                                   int batch, int tokens, const int *valid_lengths,
                                   const float *hidden, float *context, mca_forward_stats_t *stats)
{
    mca_error_clear();
    if (attention == NULL || hidden == NULL || context == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "forward: attention, hidden and context must not be NULL");
    int status = validate_forward(attention, options, batch, tokens, valid_lengths);
    if (status == MCA_SUCCESS)
        status = check_hidden_finite(attention, batch, tokens, valid_lengths, hidden);
    if (status != MCA_SUCCESS)
        return mca_context_error(attention->context, status, "%s", mca_last_error());
    forward_shape_t s = make_shape(attention, batch, tokens);
    status = check_device_limits(attention, &s, true, options->mode);
    if (status != MCA_SUCCESS)
        return status;

    mca_attention_workspace_t *ws = &attention->workspace;
    size_t bytes = s.rows * s.hidden * sizeof(float);
    status = reserve(attention, &ws->hidden, bytes, "hidden states");
    if (status == MCA_SUCCESS)
        status = reserve(attention, &ws->output, bytes, "attention output");
    if (status == MCA_SUCCESS)
        status = mca_buffer_write(attention->context, ws->hidden.buffer, 0, bytes, hidden);
    if (status == MCA_SUCCESS)
        status = forward_on_device(attention, options, &s, valid_lengths, ws->hidden.buffer,
                                   ws->output.buffer, stats);
    if (status == MCA_SUCCESS)
        status = mca_buffer_read(attention->context, ws->output.buffer, 0, bytes, context);
    return status;
}
