/* Attention layer: exact mode against a double-precision reference, batching and padding,
 * the exact path of MCA mode, minimum samples and input validation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "context.h"
#include "safetensors.h"
#include "test_util.h"

/* Largest |a - b| / (1 + |b|) over `count` values. */
static double max_relative_error(const float *a, const double *b, size_t count)
{
    double worst = 0.0;
    for (size_t i = 0; i < count; i++) {
        double error = fabs((double)a[i] - b[i]) / (1.0 + fabs(b[i]));
        if (!(error <= worst))
            worst = isnan(error) ? INFINITY : error;
    }
    return worst;
}

static double max_difference(const float *a, const float *b, size_t count)
{
    double worst = 0.0;
    for (size_t i = 0; i < count; i++) {
        double error = fabs((double)a[i] - (double)b[i]);
        if (!(error <= worst))
            worst = isnan(error) ? INFINITY : error;
    }
    return worst;
}

typedef struct run {
    int batch, tokens;
    const int *lengths;
    float *hidden;
    float *output;
} run_t;

static int forward(mca_attention_t *layer, const mca_forward_options_t *options, run_t *run,
                   mca_forward_stats_t *stats)
{
    int status = mca_attention_forward(layer, options, run->batch, run->tokens, run->lengths,
                                       run->hidden, run->output, stats);
    if (status != MCA_SUCCESS)
        fprintf(stderr, "forward: %s: %s\n", mca_status_string(status), mca_last_error());
    return status;
}

/* Compares exact mode with the double reference on a batch of mixed lengths. */
static void check_exact_against_reference(const mca_attention_weights_t *w, int batch,
                                          int tokens, const int *lengths, uint64_t seed,
                                          double tolerance)
{
    size_t count = (size_t)batch * tokens * w->hidden_size;
    float *hidden = malloc(count * sizeof *hidden);
    float *output = malloc(count * sizeof *output);
    double *expected = malloc(count * sizeof *expected);
    test_rng_t rng = {seed};
    test_fill(&rng, hidden, count, 1.0f);

    mca_attention_t *layer = NULL;
    assert_int_equal(mca_attention_create(context, w, &layer), MCA_SUCCESS);
    mca_forward_options_t options;
    mca_forward_options_init(&options);
    run_t run = {batch, tokens, lengths, hidden, output};
    assert_int_equal(forward(layer, &options, &run, NULL), MCA_SUCCESS);

    reference_attention(w, batch, tokens, lengths, hidden, expected);
    double error = max_relative_error(output, expected, count);
    if (error > tolerance)
        fprintf(stderr, "exact attention: max relative error %.3g > %.3g\n", error, tolerance);
    assert_true(error <= tolerance);

    mca_attention_destroy(layer);
    free(hidden);
    free(output);
    free(expected);
}

static void exact_matches_reference_random(void **state)
{
    (void)state;
    test_weights_t t;
    test_weights_random(&t, 64, 4, 11, 0.2f);
    const int lengths[] = {13, 5, 0, 9};
    /* float32 dot products of length 64 followed by a softmax: 1e-5 relative is about 100
     * ulp, far above rounding and far below any indexing mistake. */
    check_exact_against_reference(&t.w, 4, 13, lengths, 12, 1e-5);
    free(t.storage);
}

static void exact_matches_reference_real(void **state)
{
    (void)state;
    const char *model_dir = getenv("MCA_MODEL_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", model_dir != NULL ? model_dir : "");
    mca_safetensors_t *file = NULL;
    if (model_dir == NULL || mca_safetensors_open(path, &file) != MCA_SUCCESS)
        skip();

    const int D = 384;
    const int64_t matrix[2] = {D, D};
    const int64_t vector[1] = {D};
    float *storage = malloc((3 * (size_t)D * D + 3 * D) * sizeof *storage);
    const char *names[] = {"encoder.layer.0.attention.self.query.weight",
                           "encoder.layer.0.attention.self.key.weight",
                           "encoder.layer.0.attention.self.value.weight",
                           "encoder.layer.0.attention.self.query.bias",
                           "encoder.layer.0.attention.self.key.bias",
                           "encoder.layer.0.attention.self.value.bias"};
    for (int i = 0; i < 6; i++) {
        float *target = i < 3 ? storage + (size_t)i * D * D
                              : storage + 3 * (size_t)D * D + (size_t)(i - 3) * D;
        assert_int_equal(mca_safetensors_read_f32(file, names[i], i < 3 ? 2 : 1,
                                                  i < 3 ? matrix : vector, target),
                         MCA_SUCCESS);
    }
    mca_safetensors_close(file);

    mca_attention_weights_t w = {
        .hidden_size = D,
        .heads = 12,
        .query_weight = storage,
        .key_weight = storage + (size_t)D * D,
        .value_weight = storage + 2 * (size_t)D * D,
        .query_bias = storage + 3 * (size_t)D * D,
        .key_bias = storage + 3 * (size_t)D * D + D,
        .value_bias = storage + 3 * (size_t)D * D + 2 * D,
    };
    const int lengths[] = {40, 17};
    /* Length-384 float32 products of the real weights: 2e-5 relative leaves room for
     * rounding in CLBlast's blocked summation order. */
    check_exact_against_reference(&w, 2, 40, lengths, 21, 2e-5);
    free(storage);
}

static void batch_equals_single_sequences(void **state)
{
    (void)state;
    test_weights_t t;
    test_weights_random(&t, 64, 4, 31, 0.2f);
    const int D = 64, tokens = 11;
    const int lengths[] = {11, 3, 7};
    size_t count = 3 * (size_t)tokens * D;
    float *hidden = malloc(count * sizeof *hidden);
    float *batched = malloc(count * sizeof *batched);
    float *single = malloc(count * sizeof *single);
    test_rng_t rng = {32};
    test_fill(&rng, hidden, count, 1.0f);

    mca_attention_t *layer = NULL;
    assert_int_equal(mca_attention_create(context, &t.w, &layer), MCA_SUCCESS);
    mca_forward_options_t options;
    mca_forward_options_init(&options);
    run_t run = {3, tokens, lengths, hidden, batched};
    assert_int_equal(forward(layer, &options, &run, NULL), MCA_SUCCESS);

    for (int b = 0; b < 3; b++) {
        size_t offset = (size_t)b * tokens * D;
        run_t one = {1, lengths[b], &lengths[b], hidden + offset, single + offset};
        assert_int_equal(forward(layer, &options, &one, NULL), MCA_SUCCESS);
        /* GEMM blocking differs with the row count, so results agree to float rounding. */
        assert_true(max_difference(batched + offset, single + offset, (size_t)lengths[b] * D) <
                    1e-5);
    }
    mca_attention_destroy(layer);
    free(t.storage);
    free(hidden);
    free(batched);
    free(single);
}

/* In MCA mode, with either rule for exact rows, a sequence of a batch gives what it gives
 * alone with the same sequence number: the whole-rows decision is made per sequence. */
static void mca_batch_equals_single_sequences(void **state)
{
    (void)state;
    test_weights_t t;
    test_weights_random(&t, 64, 4, 35, 0.2f);
    const int D = 64, tokens = 11, batch = 4;
    const int lengths[] = {11, 3, 7, 0};
    size_t count = (size_t)batch * tokens * D;
    float *hidden = malloc(count * sizeof *hidden);
    float *batched = malloc(count * sizeof *batched);
    float *single = malloc(count * sizeof *single);
    test_rng_t rng = {36};
    test_fill(&rng, hidden, count, 1.0f);

    mca_attention_t *layer = NULL;
    assert_int_equal(mca_attention_create(context, &t.w, &layer), MCA_SUCCESS);
    mca_forward_options_t options;
    mca_forward_options_init(&options);
    options.mode = MCA_MODE_MCA;
    options.seed = 11;
    const mca_exact_rows_t rules[] = {MCA_EXACT_PAIRS, MCA_EXACT_WHOLE_ROWS};
    const float alphas[] = {0.3f, 0.6f, 1.2f};
    uint64_t exact_pairs[2] = {0, 0};
    for (size_t r = 0; r < 2; r++) {
        for (size_t a = 0; a < sizeof alphas / sizeof *alphas; a++) {
            options.exact_rows = rules[r];
            options.alpha = alphas[a];
            options.first_sequence = 0;
            run_t run = {batch, tokens, lengths, hidden, batched};
            mca_forward_stats_t stats;
            mca_forward_stats_reset(&stats);
            assert_int_equal(forward(layer, &options, &run, &stats), MCA_SUCCESS);
            exact_pairs[r] += stats.histogram[MCA_HISTOGRAM_BINS - 1];
            for (int b = 0; b < batch; b++) {
                if (lengths[b] == 0)
                    continue;
                size_t offset = (size_t)b * tokens * D;
                options.first_sequence = (uint32_t)b;
                run_t one = {1, lengths[b], &lengths[b], hidden + offset, single + offset};
                assert_int_equal(forward(layer, &options, &one, NULL), MCA_SUCCESS);
                double difference = max_difference(batched + offset, single + offset,
                                                   (size_t)lengths[b] * D);
                if (!(difference < 1e-5))
                    fail_msg("rule %zu, alpha %g, sequence %d: difference %g", r,
                             (double)alphas[a], b, difference);
            }
        }
    }
    /* Whole rows made more pairs exact somewhere, so both rules were really exercised. */
    assert_true(exact_pairs[1] > exact_pairs[0]);
    mca_attention_destroy(layer);
    free(t.storage);
    free(hidden);
    free(batched);
    free(single);
}

/* Padded rows filled with NaN in the second run must leave every valid output unchanged. */
static void check_padding_invariance(mca_mode_t mode)
{
    test_weights_t t;
    test_weights_random(&t, 32, 2, 41, 0.3f);
    const int D = 32, tokens = 9;
    const int lengths[] = {6, 9, 2};
    size_t count = 3 * (size_t)tokens * D;
    float *hidden = malloc(count * sizeof *hidden);
    float *first = malloc(count * sizeof *first);
    float *second = malloc(count * sizeof *second);
    test_rng_t rng = {42};
    test_fill(&rng, hidden, count, 1.0f);

    mca_attention_t *layer = NULL;
    assert_int_equal(mca_attention_create(context, &t.w, &layer), MCA_SUCCESS);
    mca_forward_options_t options;
    mca_forward_options_init(&options);
    options.mode = mode;
    options.alpha = 0.5f;
    options.seed = 7;
    run_t run = {3, tokens, lengths, hidden, first};
    assert_int_equal(forward(layer, &options, &run, NULL), MCA_SUCCESS);

    for (int b = 0; b < 3; b++)
        for (int i = lengths[b]; i < tokens; i++)
            for (int c = 0; c < D; c++)
                hidden[((size_t)b * tokens + i) * D + c] = NAN;
    run.output = second;
    assert_int_equal(forward(layer, &options, &run, NULL), MCA_SUCCESS);

    for (int b = 0; b < 3; b++) {
        for (int i = 0; i < tokens; i++) {
            const float *a = first + ((size_t)b * tokens + i) * D;
            const float *c = second + ((size_t)b * tokens + i) * D;
            if (i < lengths[b])
                assert_memory_equal(a, c, D * sizeof *a);
            else
                for (int e = 0; e < D; e++)
                    assert_true(c[e] == 0.0f);
        }
    }
    mca_attention_destroy(layer);
    free(t.storage);
    free(hidden);
    free(first);
    free(second);
}

static void padding_changes_nothing_exact(void **state)
{
    (void)state;
    check_padding_invariance(MCA_MODE_EXACT);
}

static void padding_changes_nothing_mca(void **state)
{
    (void)state;
    check_padding_invariance(MCA_MODE_MCA);
}

/* Runs exact mode and MCA mode with `configure` applied; returns the max difference. */
static double mca_versus_exact(float alpha, int min_samples, mca_forward_stats_t *stats,
                               float *mca_out_bias_check)
{
    test_weights_t t;
    test_weights_random(&t, 48, 3, 51, 0.25f);
    const int D = 48, tokens = 10;
    const int lengths[] = {10, 4};
    size_t count = 2 * (size_t)tokens * D;
    float *hidden = malloc(count * sizeof *hidden);
    float *exact = malloc(count * sizeof *exact);
    float *approximate = malloc(count * sizeof *approximate);
    test_rng_t rng = {52};
    test_fill(&rng, hidden, count, 1.0f);

    mca_attention_t *layer = NULL;
    assert_int_equal(mca_attention_create(context, &t.w, &layer), MCA_SUCCESS);
    mca_forward_options_t options;
    mca_forward_options_init(&options);
    run_t run = {2, tokens, lengths, hidden, exact};
    assert_int_equal(forward(layer, &options, &run, NULL), MCA_SUCCESS);
    options.mode = MCA_MODE_MCA;
    options.alpha = alpha;
    options.min_samples = min_samples;
    run.output = approximate;
    assert_int_equal(forward(layer, &options, &run, stats), MCA_SUCCESS);

    double difference = 0.0;
    for (int b = 0; b < 2; b++) {
        size_t offset = (size_t)b * tokens * D;
        double e = max_difference(approximate + offset, exact + offset,
                                  (size_t)lengths[b] * D);
        if (e > difference)
            difference = e;
    }
    if (mca_out_bias_check != NULL) {
        /* With every value row reduced to its bias, each output row is sum_j A[i,j] b = b. */
        for (int b = 0; b < 2; b++)
            for (int i = 0; i < lengths[b]; i++)
                for (int c = 0; c < D; c++)
                    mca_out_bias_check[0] = fmaxf(
                        mca_out_bias_check[0],
                        fabsf(approximate[((size_t)b * tokens + i) * D + c] - t.w.value_bias[c]));
    }
    mca_attention_destroy(layer);
    free(t.storage);
    free(hidden);
    free(exact);
    free(approximate);
    return difference;
}

static void full_samples_take_exact_path(void **state)
{
    (void)state;
    mca_forward_stats_t stats;
    mca_forward_stats_reset(&stats);
    /* alpha this small sends every count to D, so every value row is computed exactly. */
    double difference = mca_versus_exact(1e-6f, 1, &stats, NULL);
    assert_true(difference < 1e-5);
    assert_int_equal(stats.histogram[MCA_HISTOGRAM_BINS - 1], (10 + 4) * 3);
    assert_true(fabs(stats.flops_fraction - 1.0) < 1e-12);
    assert_true(stats.error_bound_max == 0.0);
}

/* MCA_EXACT_WHOLE_ROWS computes every head of a token exactly once one head of it reaches
 * r = D, or falls back to per-pair exact rows; it never makes fewer pairs exact, and when
 * it makes every pair exact the output is the exact one. */
static void whole_rows_make_tokens_exact(void **state)
{
    (void)state;
    test_weights_t t;
    test_weights_random(&t, 48, 3, 51, 0.25f);
    const int D = 48, heads = 3, tokens = 10, valid = 10 + 4;
    const int lengths[] = {10, 4};
    size_t count = 2 * (size_t)tokens * D;
    float *hidden = malloc(count * sizeof *hidden);
    float *exact = malloc(count * sizeof *exact);
    float *approximate = malloc(count * sizeof *approximate);
    test_rng_t rng = {52};
    test_fill(&rng, hidden, count, 1.0f);

    mca_attention_t *layer = NULL;
    assert_int_equal(mca_attention_create(context, &t.w, &layer), MCA_SUCCESS);
    mca_forward_options_t options;
    mca_forward_options_init(&options);
    run_t run = {2, tokens, lengths, hidden, exact};
    assert_int_equal(forward(layer, &options, &run, NULL), MCA_SUCCESS);
    run.output = approximate;
    options.mode = MCA_MODE_MCA;

    const float alphas[] = {1e-6f, 0.05f, 0.1f, 0.2f, 0.35f, 0.5f, 0.8f, 1.5f};
    int raised = 0;
    for (size_t a = 0; a < sizeof alphas / sizeof *alphas; a++) {
        options.alpha = alphas[a];
        mca_forward_stats_t pairs, rows;
        mca_forward_stats_reset(&pairs);
        mca_forward_stats_reset(&rows);
        options.exact_rows = MCA_EXACT_PAIRS;
        assert_int_equal(forward(layer, &options, &run, &pairs), MCA_SUCCESS);
        options.exact_rows = MCA_EXACT_WHOLE_ROWS;
        assert_int_equal(forward(layer, &options, &run, &rows), MCA_SUCCESS);

        uint64_t exact_pairs = pairs.histogram[MCA_HISTOGRAM_BINS - 1];
        uint64_t exact_rows = rows.histogram[MCA_HISTOGRAM_BINS - 1];
        assert_true(exact_rows >= exact_pairs);
        assert_true(rows.flops_fraction >= pairs.flops_fraction - 1e-12);
        assert_true(rows.error_bound_sum <= pairs.error_bound_sum * (1.0 + 1e-6));
        if (exact_rows > exact_pairs) {
            /* Whole rows were chosen: exact pairs come in whole tokens. */
            assert_int_equal(exact_rows % heads, 0);
            raised++;
        }
        if (exact_rows == (uint64_t)valid * heads) {
            for (int b = 0; b < 2; b++) {
                size_t offset = (size_t)b * tokens * D;
                assert_true(max_difference(approximate + offset, exact + offset,
                                           (size_t)lengths[b] * D) < 1e-5);
            }
        }
    }
    /* The alphas above mix exact and sampled pairs, so whole rows must matter for one. */
    assert_true(raised > 0);

    mca_attention_destroy(layer);
    free(t.storage);
    free(hidden);
    free(exact);
    free(approximate);
}

static void min_samples_of_d_is_exact(void **state)
{
    (void)state;
    mca_forward_stats_t stats;
    mca_forward_stats_reset(&stats);
    double difference = mca_versus_exact(1e6f, 48, &stats, NULL);
    assert_true(difference < 1e-5);
    assert_int_equal(stats.histogram[MCA_HISTOGRAM_BINS - 1], (10 + 4) * 3);
}

static void min_samples_zero_gives_bias(void **state)
{
    (void)state;
    mca_forward_stats_t stats;
    mca_forward_stats_reset(&stats);
    float worst = 0.0f;
    /* alpha this large gives r = 0 for every token. */
    mca_versus_exact(1e9f, 0, &stats, &worst);
    assert_true(worst < 1e-5f);
    assert_int_equal(stats.histogram[0], (10 + 4) * 3);
    assert_true(stats.value_flops == 0.0);
    assert_int_equal(stats.samples_drawn, 0);
    assert_true(stats.error_bound_max > 0.0);
}

static void min_samples_one_draws_one(void **state)
{
    (void)state;
    mca_forward_stats_t stats;
    mca_forward_stats_reset(&stats);
    mca_versus_exact(1e9f, 1, &stats, NULL);
    assert_int_equal(stats.histogram[1], (10 + 4) * 3);
    assert_int_equal(stats.samples_drawn, (10 + 4) * 3);
    assert_int_equal(stats.distinct_columns, (10 + 4) * 3);
    /* One column of d entries per (token, head): 2 * d FLOPs against 2 * D * D per token. */
    double expected = (14.0 * 3 * 2 * 16) / (14.0 * 2 * 48 * 48);
    assert_true(fabs(stats.flops_fraction - expected) < 1e-12);
    assert_true(fabs(stats.flops_fraction_paper - 14.0 * 3 / 48.0 / (2 * 10 * 3)) < 1e-12);
}

static void exact_mode_stats(void **state)
{
    (void)state;
    test_weights_t t;
    test_weights_random(&t, 32, 4, 61, 0.2f);
    const int lengths[] = {5, 2};
    float hidden[2 * 6 * 32], output[2 * 6 * 32];
    test_rng_t rng = {62};
    test_fill(&rng, hidden, 2 * 6 * 32, 1.0f);
    mca_attention_t *layer = NULL;
    assert_int_equal(mca_attention_create(context, &t.w, &layer), MCA_SUCCESS);
    mca_forward_options_t options;
    mca_forward_options_init(&options);
    mca_forward_stats_t stats;
    mca_forward_stats_reset(&stats);
    run_t run = {2, 6, lengths, hidden, output};
    assert_int_equal(forward(layer, &options, &run, &stats), MCA_SUCCESS);
    assert_int_equal(stats.valid_tokens, 7);
    assert_int_equal(stats.padded_positions, 12);
    assert_true(stats.flops_fraction == 1.0);
    assert_true(stats.flops_fraction_paper == 1.0);
    assert_true(stats.exact_value_flops == 2.0 * 7 * 32 * 32);
    mca_attention_destroy(layer);
    free(t.storage);
}

static void forward_on_device_buffers(void **state)
{
    (void)state;
    test_weights_t t;
    test_weights_random(&t, 32, 2, 71, 0.2f);
    const int lengths[] = {7};
    size_t count = 7 * 32;
    float *hidden = malloc(count * sizeof *hidden);
    float *from_host = malloc(count * sizeof *from_host);
    float *from_device = malloc(count * sizeof *from_device);
    test_rng_t rng = {72};
    test_fill(&rng, hidden, count, 1.0f);

    mca_attention_t *layer = NULL;
    assert_int_equal(mca_attention_create(context, &t.w, &layer), MCA_SUCCESS);
    mca_forward_options_t options;
    mca_forward_options_init(&options);
    options.mode = MCA_MODE_MCA;
    options.seed = 3;
    run_t run = {1, 7, lengths, hidden, from_host};
    assert_int_equal(forward(layer, &options, &run, NULL), MCA_SUCCESS);

    cl_int code = CL_SUCCESS;
    cl_context cl = NULL;
    clGetCommandQueueInfo(mca_context_queue(context), CL_QUEUE_CONTEXT, sizeof cl, &cl, NULL);
    cl_mem in = clCreateBuffer(cl, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR,
                               count * sizeof(float), hidden, &code);
    assert_int_equal(code, CL_SUCCESS);
    cl_mem out = clCreateBuffer(cl, CL_MEM_READ_WRITE, count * sizeof(float), NULL, &code);
    assert_int_equal(code, CL_SUCCESS);
    assert_int_equal(mca_attention_forward_buffers(layer, &options, 1, 7, lengths, in, out, NULL),
                     MCA_SUCCESS);
    assert_int_equal(clEnqueueReadBuffer(mca_context_queue(context), out, CL_TRUE, 0,
                                         count * sizeof(float), from_device, 0, NULL, NULL),
                     CL_SUCCESS);
    assert_memory_equal(from_host, from_device, count * sizeof(float));

    /* A buffer smaller than batch x tokens x D is rejected before any work. */
    assert_int_equal(mca_attention_forward_buffers(layer, &options, 2, 7, (int[]){7, 7}, in, out,
                                                   NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(mca_last_error(), "batch 2 x 7 tokens"));

    /* Rejected calls leave the output buffer as the last successful call wrote it. */
    mca_forward_options_t invalid = options;
    invalid.alpha = -1.0f;
    assert_int_equal(mca_attention_forward_buffers(layer, &invalid, 1, 7, lengths, in, out, NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(mca_last_error(), "alpha -1"));
    assert_int_equal(mca_attention_forward_buffers(NULL, &options, 1, 7, lengths, in, out, NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_attention_forward_buffers(layer, NULL, 1, 7, lengths, in, out, NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_attention_forward_buffers(layer, &options, 1, 7, NULL, in, out, NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_attention_forward_buffers(layer, &options, 1, 7, lengths, NULL, out,
                                                   NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_attention_forward_buffers(layer, &options, 1, 7, lengths, in, NULL,
                                                   NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
    float *after = malloc(count * sizeof *after);
    assert_non_null(after);
    assert_int_equal(clEnqueueReadBuffer(mca_context_queue(context), out, CL_TRUE, 0,
                                         count * sizeof(float), after, 0, NULL, NULL),
                     CL_SUCCESS);
    assert_memory_equal(after, from_device, count * sizeof(float));
    free(after);

    clReleaseMemObject(in);
    clReleaseMemObject(out);
    mca_attention_destroy(layer);
    free(t.storage);
    free(hidden);
    free(from_host);
    free(from_device);
}

/* A sequence of valid length 0 gives zero output rows, never NaN, and leaves the other
 * sequences as they are when run alone. Its positions count as padding in the statistics. */
static void check_zero_length_sequences(mca_mode_t mode)
{
    test_weights_t t;
    test_weights_random(&t, 32, 2, 101, 0.2f);
    const int D = 32, tokens = 5;
    const int lengths[] = {0, 5, 0};
    size_t count = 3 * (size_t)tokens * D, row_block = (size_t)tokens * D;
    float *hidden = malloc(count * sizeof *hidden);
    float *batched = malloc(count * sizeof *batched);
    float *single = malloc(row_block * sizeof *single);
    test_rng_t rng = {102};
    test_fill(&rng, hidden, count, 1.0f);

    mca_attention_t *layer = NULL;
    assert_int_equal(mca_attention_create(context, &t.w, &layer), MCA_SUCCESS);
    mca_forward_options_t options;
    mca_forward_options_init(&options);
    options.mode = mode;
    /* alpha this large gives every valid token one sample, whatever rounding does to the
     * probabilities, so the batched and single runs draw the same columns. */
    options.alpha = 1e9f;
    options.seed = 5;
    mca_forward_stats_t stats;
    mca_forward_stats_reset(&stats);
    run_t run = {3, tokens, lengths, hidden, batched};
    assert_int_equal(forward(layer, &options, &run, &stats), MCA_SUCCESS);

    for (int b = 0; b < 3; b += 2)
        for (size_t i = 0; i < row_block; i++)
            assert_true(batched[(size_t)b * row_block + i] == 0.0f);
    assert_int_equal(stats.valid_tokens, 5);
    assert_int_equal(stats.padded_positions, 15);
    assert_true(stats.exact_value_flops == 2.0 * 5 * D * D);
    if (mode == MCA_MODE_MCA) {
        assert_int_equal(stats.samples_drawn, 5 * 2);
        assert_int_equal(stats.error_bound_rows, 5 * 2);
    }

    /* Sequence 1 of the batch draws from sequence number 1. */
    options.first_sequence = 1;
    run_t one = {1, tokens, &lengths[1], hidden + row_block, single};
    assert_int_equal(forward(layer, &options, &one, NULL), MCA_SUCCESS);
    /* GEMM blocking differs with the row count, so results agree to float rounding. */
    assert_true(max_difference(batched + row_block, single, row_block) < 1e-4);

    /* A batch with no valid token at all. */
    const int empty[] = {0, 0};
    run_t none = {2, tokens, empty, hidden, batched};
    assert_int_equal(forward(layer, &options, &none, NULL), MCA_SUCCESS);
    for (size_t i = 0; i < 2 * row_block; i++)
        assert_true(batched[i] == 0.0f);

    mca_attention_destroy(layer);
    free(t.storage);
    free(hidden);
    free(batched);
    free(single);
}

static void zero_length_sequences_exact(void **state)
{
    (void)state;
    check_zero_length_sequences(MCA_MODE_EXACT);
}

static void zero_length_sequences_mca(void **state)
{
    (void)state;
    check_zero_length_sequences(MCA_MODE_MCA);
}

/* The host forward rejects a NaN or infinity in a valid row, names its index and writes
 * nothing. Padded rows may hold NaN. */
static void non_finite_hidden_rejected(void **state)
{
    (void)state;
    test_weights_t t;
    test_weights_random(&t, 32, 2, 111, 0.2f);
    mca_attention_t *layer = NULL;
    assert_int_equal(mca_attention_create(context, &t.w, &layer), MCA_SUCCESS);
    const int D = 32, tokens = 4;
    const int lengths[] = {4, 2};
    float hidden[2 * 4 * 32], output[2 * 4 * 32], untouched[2 * 4 * 32];
    test_rng_t rng = {112};
    test_fill(&rng, hidden, sizeof hidden / sizeof *hidden, 1.0f);
    memset(output, 0x7f, sizeof output);
    memcpy(untouched, output, sizeof output);

    const struct {
        int b, i, k;
        float value;
        mca_mode_t mode;
        const char *index;
    } cases[] = {
        {1, 1, 5, NAN, MCA_MODE_EXACT, "hidden[1][1][5] is nan"},
        {0, 3, 31, INFINITY, MCA_MODE_EXACT, "hidden[0][3][31] is inf"},
        {1, 0, 0, -INFINITY, MCA_MODE_MCA, "hidden[1][0][0] is -inf"},
    };
    mca_forward_options_t options;
    mca_forward_options_init(&options);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        float *slot = &hidden[((size_t)cases[c].b * tokens + cases[c].i) * D + cases[c].k];
        float saved = *slot;
        *slot = cases[c].value;
        options.mode = cases[c].mode;
        assert_int_equal(mca_attention_forward(layer, &options, 2, tokens, lengths, hidden,
                                               output, NULL),
                         MCA_ERROR_INVALID_ARGUMENT);
        if (strstr(mca_last_error(), cases[c].index) == NULL)
            fail_msg("message \"%s\" does not name %s", mca_last_error(), cases[c].index);
        assert_memory_equal(output, untouched, sizeof output);
        *slot = saved;
    }

    /* Row 2 of sequence 1 is padding, so NaN there is accepted. */
    hidden[((size_t)1 * tokens + 2) * D + 3] = NAN;
    options.mode = MCA_MODE_EXACT;
    assert_int_equal(mca_attention_forward(layer, &options, 2, tokens, lengths, hidden, output,
                                           NULL),
                     MCA_SUCCESS);
    assert_string_equal(mca_last_error(), "");

    mca_attention_destroy(layer);
    free(t.storage);
}

/* mca_attention_forward_buffers does not check the values on the device: a NaN in a valid
 * row of sequence 0 makes every valid output row of sequence 0 NaN and leaves sequence 1
 * unchanged. */
static void check_non_finite_hidden_on_device(mca_mode_t mode)
{
    test_weights_t t;
    test_weights_random(&t, 32, 2, 121, 0.2f);
    mca_attention_t *layer = NULL;
    assert_int_equal(mca_attention_create(context, &t.w, &layer), MCA_SUCCESS);
    const int D = 32, tokens = 4;
    const int lengths[] = {4, 3};
    const size_t count = 2 * 4 * 32, row_block = 4 * 32;
    float hidden[2 * 4 * 32], clean[2 * 4 * 32], poisoned[2 * 4 * 32];
    test_rng_t rng = {122};
    test_fill(&rng, hidden, count, 1.0f);

    cl_command_queue queue = mca_context_queue(context);
    cl_context cl = NULL;
    assert_int_equal(clGetCommandQueueInfo(queue, CL_QUEUE_CONTEXT, sizeof cl, &cl, NULL),
                     CL_SUCCESS);
    cl_int code = CL_SUCCESS;
    cl_mem in = clCreateBuffer(cl, CL_MEM_READ_WRITE, sizeof hidden, NULL, &code);
    assert_int_equal(code, CL_SUCCESS);
    cl_mem out = clCreateBuffer(cl, CL_MEM_READ_WRITE, sizeof hidden, NULL, &code);
    assert_int_equal(code, CL_SUCCESS);

    mca_forward_options_t options;
    mca_forward_options_init(&options);
    options.mode = mode;
    options.alpha = 0.1f;
    options.seed = 9;
    float *results[2] = {clean, poisoned};
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1)
            hidden[(size_t)2 * D + 7] = NAN; /* sequence 0, token 2, feature 7 */
        assert_int_equal(clEnqueueWriteBuffer(queue, in, CL_TRUE, 0, sizeof hidden, hidden, 0,
                                              NULL, NULL),
                         CL_SUCCESS);
        assert_int_equal(mca_attention_forward_buffers(layer, &options, 2, tokens, lengths, in,
                                                       out, NULL),
                         MCA_SUCCESS);
        assert_int_equal(clEnqueueReadBuffer(queue, out, CL_TRUE, 0, sizeof hidden,
                                             results[pass], 0, NULL, NULL),
                         CL_SUCCESS);
    }

    for (size_t i = 0; i < (size_t)lengths[0] * D; i++)
        assert_true(isnan(poisoned[i]));
    for (size_t i = (size_t)lengths[0] * D; i < row_block; i++)
        assert_true(poisoned[i] == 0.0f);
    for (size_t i = 0; i < (size_t)lengths[1] * D; i++)
        assert_true(isfinite(poisoned[row_block + i]));
    /* Exact values are computed row by row, so sequence 1 is bit-identical. In MCA mode the
     * exact rows of all sequences share GEMMs whose shape follows the sample counts, which
     * the NaN changes. */
    if (mode == MCA_MODE_EXACT)
        assert_memory_equal(poisoned + row_block, clean + row_block, row_block * sizeof(float));
    else
        assert_true(max_difference(poisoned + row_block, clean + row_block, row_block) < 1e-5);

    clReleaseMemObject(in);
    clReleaseMemObject(out);
    mca_attention_destroy(layer);
    free(t.storage);
}

static void non_finite_hidden_on_device_exact(void **state)
{
    (void)state;
    check_non_finite_hidden_on_device(MCA_MODE_EXACT);
}

static void non_finite_hidden_on_device_mca(void **state)
{
    (void)state;
    check_non_finite_hidden_on_device(MCA_MODE_MCA);
}

/* A request over the device's limits fails before any buffer is created, and the message
 * names the limit and the request. The test lowers the limits that the context queried. */
static void device_limits_checked_first(void **state)
{
    (void)state;
    test_weights_t t;
    test_weights_random(&t, 32, 2, 133, 0.2f);
    mca_attention_t *layer = NULL;
    assert_int_equal(mca_attention_create(context, &t.w, &layer), MCA_SUCCESS);
    const int tokens = 64;
    const int lengths[] = {tokens, tokens};
    size_t count = 2 * (size_t)tokens * 32;
    float *hidden = calloc(count, sizeof *hidden);
    float *output = calloc(count, sizeof *output);
    assert_non_null(hidden);
    assert_non_null(output);
    mca_forward_options_t options;
    mca_forward_options_init(&options);

    const cl_ulong saved_alloc = context->max_mem_alloc_size;
    const cl_ulong saved_global = context->global_mem_size;
    /* The probabilities need 2 * 2 * 64 * 64 * 4 = 65536 bytes in one buffer. */
    context->max_mem_alloc_size = 65535;
    mca_fault_set(MCA_FAULT_BUFFER_CREATION, 0); /* counts buffer creations, fails none */
    assert_int_equal(mca_attention_forward(layer, &options, 2, tokens, lengths, hidden, output,
                                           NULL),
                     MCA_ERROR_DEVICE_LIMIT);
    assert_int_equal(mca_fault_calls(MCA_FAULT_BUFFER_CREATION), 0);
    assert_non_null(strstr(mca_last_error(), "65536 bytes"));
    assert_non_null(strstr(mca_last_error(), "at most 65535"));
    assert_non_null(strstr(mca_last_error(), "CL_DEVICE_MAX_MEM_ALLOC_SIZE"));
    context->max_mem_alloc_size = saved_alloc;

    /* Probabilities, projections, hidden copy and output: 65536 + 3 * 2 * 64 * 32 * 4 + 2 *
     * 2 * 64 * 32 * 4 bytes. */
    const unsigned long long total = 65536ull + 49152ull + 2ull * 16384ull;
    context->global_mem_size = total - 1;
    assert_int_equal(mca_attention_forward(layer, &options, 2, tokens, lengths, hidden, output,
                                           NULL),
                     MCA_ERROR_DEVICE_LIMIT);
    assert_int_equal(mca_fault_calls(MCA_FAULT_BUFFER_CREATION), 0);
    mca_fault_clear();
    char expected[64];
    snprintf(expected, sizeof expected, "at least %llu bytes", total);
    assert_non_null(strstr(mca_last_error(), expected));
    assert_non_null(strstr(mca_last_error(), "CL_DEVICE_GLOBAL_MEM_SIZE"));
    context->global_mem_size = saved_global;

    /* MCA mode needs (D + work-group size + 1) counters of local memory. */
    const cl_ulong saved_local = context->local_mem_size;
    context->local_mem_size = 64;
    options.mode = MCA_MODE_MCA;
    mca_fault_set(MCA_FAULT_BUFFER_CREATION, 0);
    assert_int_equal(mca_attention_forward(layer, &options, 2, tokens, lengths, hidden, output,
                                           NULL),
                     MCA_ERROR_DEVICE_LIMIT);
    assert_int_equal(mca_fault_calls(MCA_FAULT_BUFFER_CREATION), 0);
    mca_fault_clear();
    assert_non_null(strstr(mca_last_error(), "CL_DEVICE_LOCAL_MEM_SIZE"));
    assert_non_null(strstr(mca_last_error(), "use exact mode"));
    options.mode = MCA_MODE_EXACT;
    assert_int_equal(mca_attention_forward(layer, &options, 2, tokens, lengths, hidden, output,
                                           NULL),
                     MCA_SUCCESS);
    context->local_mem_size = saved_local;

    /* With the real limits the same call runs. */
    assert_int_equal(mca_attention_forward(layer, &options, 2, tokens, lengths, hidden, output,
                                           NULL),
                     MCA_SUCCESS);
    mca_attention_destroy(layer);
    free(t.storage);
    free(hidden);
    free(output);
}

/* A (tokens x tokens) probability matrix past 2^31 elements is rejected before any work. */
static void oversized_batch_rejected(void **state)
{
    (void)state;
    test_weights_t t;
    test_weights_random(&t, 32, 2, 131, 0.2f);
    mca_attention_t *layer = NULL;
    assert_int_equal(mca_attention_create(context, &t.w, &layer), MCA_SUCCESS);
    const int tokens = 46341; /* 46341^2 > 2^31 */
    const int lengths[] = {tokens};
    size_t count = (size_t)tokens * 32;
    float *hidden = calloc(count, sizeof *hidden);
    float *output = malloc(count * sizeof *output);
    assert_non_null(hidden);
    assert_non_null(output);
    memset(output, 0x7f, count * sizeof *output);

    mca_forward_options_t options;
    mca_forward_options_init(&options);
    assert_int_equal(mca_attention_forward(layer, &options, 1, tokens, lengths, hidden, output,
                                           NULL),
                     MCA_ERROR_INPUT_TOO_LONG);
    assert_non_null(strstr(mca_last_error(), "46341 tokens"));
    assert_non_null(strstr(mca_last_error(), "split the batch"));
    for (size_t i = 0; i < count; i++)
        assert_true(output[i] != 0.0f);

    mca_attention_destroy(layer);
    free(t.storage);
    free(hidden);
    free(output);
}

/* Each invalid option or argument returns its status and a message naming the value. */
static void invalid_forward_arguments(void **state)
{
    (void)state;
    test_weights_t t;
    test_weights_random(&t, 32, 2, 81, 0.2f);
    mca_attention_t *layer = NULL;
    assert_int_equal(mca_attention_create(context, &t.w, &layer), MCA_SUCCESS);
    float hidden[2 * 4 * 32] = {0}, output[2 * 4 * 32], untouched[2 * 4 * 32];
    memset(output, 0x7f, sizeof output);
    memcpy(untouched, output, sizeof output);
    const int lengths[] = {4, 3};
    mca_forward_options_t options;
    mca_forward_options_init(&options);
    options.mode = MCA_MODE_MCA;

    const float bad_alphas[] = {0.0f, -1.0f, NAN, INFINITY};
    for (int i = 0; i < 4; i++) {
        options.alpha = bad_alphas[i];
        assert_int_equal(mca_attention_forward(layer, &options, 2, 4, lengths, hidden, output,
                                               NULL),
                         MCA_ERROR_INVALID_ARGUMENT);
        assert_non_null(strstr(mca_last_error(), "alpha"));
    }
    options.alpha = 0.2f;

    options.budget_length = -1;
    assert_int_equal(mca_attention_forward(layer, &options, 2, 4, lengths, hidden, output, NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(mca_last_error(), "budget length -1"));
    options.budget_length = MCA_MAX_BUDGET_LENGTH + 1;
    assert_int_equal(mca_attention_forward(layer, &options, 2, 4, lengths, hidden, output, NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(mca_last_error(), "budget length 1048577"));
    options.budget_length = 0;

    options.layer_index = 65536;
    assert_int_equal(mca_attention_forward(layer, &options, 2, 4, lengths, hidden, output, NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(mca_last_error(), "layer index 65536"));
    options.layer_index = 0;

    options.first_sequence = UINT32_MAX - 1;
    assert_int_equal(mca_attention_forward(layer, &options, 2, 4, lengths, hidden, output, NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(mca_last_error(), "first sequence 4294967294"));
    options.first_sequence = 0;

    options.min_samples = 33;
    assert_int_equal(mca_attention_forward(layer, &options, 2, 4, lengths, hidden, output, NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(mca_last_error(), "minimum samples 33"));
    options.min_samples = -1;
    assert_int_equal(mca_attention_forward(layer, &options, 2, 4, lengths, hidden, output, NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
    options.min_samples = 1;

    options.mode = (mca_mode_t)5;
    assert_int_equal(mca_attention_forward(layer, &options, 2, 4, lengths, hidden, output, NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
    options.mode = MCA_MODE_MCA;

    options.exact_rows = (mca_exact_rows_t)2;
    assert_int_equal(mca_attention_forward(layer, &options, 2, 4, lengths, hidden, output, NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(mca_last_error(), "exact_rows 2"));
    options.exact_rows = MCA_EXACT_PAIRS;

    const int too_long[] = {4, 5};
    assert_int_equal(mca_attention_forward(layer, &options, 2, 4, too_long, hidden, output, NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(mca_last_error(), "valid_lengths[1] = 5"));
    const int negative[] = {-1, 2};
    assert_int_equal(mca_attention_forward(layer, &options, 2, 4, negative, hidden, output, NULL),
                     MCA_ERROR_INVALID_ARGUMENT);

    assert_int_equal(mca_attention_forward(layer, &options, 0, 4, lengths, hidden, output, NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_attention_forward(layer, &options, 2, 0, lengths, hidden, output, NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_attention_forward(NULL, &options, 2, 4, lengths, hidden, output, NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_attention_forward(layer, NULL, 2, 4, lengths, hidden, output, NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_attention_forward(layer, &options, 2, 4, NULL, hidden, output, NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_attention_forward(layer, &options, 2, 4, lengths, NULL, output, NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_attention_forward(layer, &options, 2, 4, lengths, hidden, NULL, NULL),
                     MCA_ERROR_INVALID_ARGUMENT);

    /* No failed call wrote to the output. */
    assert_memory_equal(output, untouched, sizeof output);

    mca_attention_destroy(layer);
    free(t.storage);
}

static void invalid_layer_weights(void **state)
{
    (void)state;
    test_weights_t t;
    test_weights_random(&t, 30, 4, 91, 0.2f);
    mca_attention_t *layer = NULL;
    assert_int_equal(mca_attention_create(context, &t.w, &layer), MCA_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(mca_last_error(), "hidden_size 30 is not divisible by heads 4"));
    assert_null(layer);

    t.w.heads = 0;
    assert_int_equal(mca_attention_create(context, &t.w, &layer), MCA_ERROR_INVALID_ARGUMENT);
    t.w.heads = 1;
    assert_int_equal(mca_attention_create(context, &t.w, &layer), MCA_SUCCESS);
    mca_attention_destroy(layer);
    layer = NULL;

    t.storage[5] = NAN;
    assert_int_equal(mca_attention_create(context, &t.w, &layer), MCA_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(mca_last_error(), "query_weight[5]"));
    t.storage[5] = 0.0f;

    /* test_weights_random stores W_Q, W_K, W_V and then b_Q, b_K, b_V. */
    float *value_weight = t.storage + 2 * 30 * 30;
    value_weight[899] = INFINITY;
    assert_int_equal(mca_attention_create(context, &t.w, &layer), MCA_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(mca_last_error(), "value_weight[899] is inf"));
    value_weight[899] = 0.0f;
    float *key_bias = t.storage + 3 * 30 * 30 + 30;
    key_bias[0] = -INFINITY;
    assert_int_equal(mca_attention_create(context, &t.w, &layer), MCA_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(mca_last_error(), "key_bias[0] is -inf"));
    key_bias[0] = 0.0f;
    assert_null(layer);

    t.w.value_bias = NULL;
    assert_int_equal(mca_attention_create(context, &t.w, &layer), MCA_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(mca_last_error(), "value_bias"));
    assert_int_equal(mca_attention_create(NULL, &t.w, &layer), MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_attention_create(context, NULL, &layer), MCA_ERROR_INVALID_ARGUMENT);
    assert_null(layer);
    mca_attention_destroy(NULL);
    free(t.storage);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(exact_matches_reference_random),
        cmocka_unit_test(exact_matches_reference_real),
        cmocka_unit_test(batch_equals_single_sequences),
        cmocka_unit_test(mca_batch_equals_single_sequences),
        cmocka_unit_test(padding_changes_nothing_exact),
        cmocka_unit_test(padding_changes_nothing_mca),
        cmocka_unit_test(full_samples_take_exact_path),
        cmocka_unit_test(whole_rows_make_tokens_exact),
        cmocka_unit_test(min_samples_of_d_is_exact),
        cmocka_unit_test(min_samples_zero_gives_bias),
        cmocka_unit_test(min_samples_one_draws_one),
        cmocka_unit_test(exact_mode_stats),
        cmocka_unit_test(forward_on_device_buffers),
        cmocka_unit_test(zero_length_sequences_exact),
        cmocka_unit_test(zero_length_sequences_mca),
        cmocka_unit_test(non_finite_hidden_rejected),
        cmocka_unit_test(non_finite_hidden_on_device_exact),
        cmocka_unit_test(non_finite_hidden_on_device_mca),
        cmocka_unit_test(device_limits_checked_first),
        cmocka_unit_test(oversized_batch_rejected),
        cmocka_unit_test(invalid_forward_arguments),
        cmocka_unit_test(invalid_layer_weights),
    };
    return cmocka_run_group_tests(tests, test_group_setup, test_group_teardown);
}
