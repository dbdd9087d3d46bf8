/* Sampling: the CDF tables, Philox known-answer vectors, the sampler's index frequencies, the
 * estimator's mean and error, and independence from the work-group size. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "attention.h"
#include "test_util.h"

static void read_floats(cl_mem buffer, size_t count, float *out)
{
    assert_int_equal(mca_buffer_read(context, buffer, 0, count * sizeof *out, out), MCA_SUCCESS);
}

/* Random weights whose value columns have unequal norms, with two zero columns in head 0:
 * column 3 and the last one, so both a leading and a trailing zero are covered. */
static void make_skewed_weights(test_weights_t *t, int hidden, int heads, uint64_t seed)
{
    test_weights_random(t, hidden, heads, seed, 0.3f);
    float *value = (float *)t->w.value_weight;
    int width = hidden / heads;
    for (int out = 0; out < hidden; out++) {
        for (int in = 0; in < hidden; in++) {
            value[(size_t)out * hidden + in] *= 1.0f + (float)(in % 7);
            if (out < width && (in == 3 || in == hidden - 1))
                value[(size_t)out * hidden + in] = 0.0f;
        }
    }
}

static void cdf_matches_double_prefix_sum(void **state)
{
    (void)state;
    const int D = 384, H = 12, d = 32;
    test_weights_t t;
    make_skewed_weights(&t, D, H, 101);
    mca_attention_t *layer = NULL;
    assert_int_equal(mca_attention_create(context, &t.w, &layer), MCA_SUCCESS);

    float *cdf = malloc((size_t)H * D * sizeof *cdf);
    float *p = malloc((size_t)H * D * sizeof *p);
    float head_norms[12];
    read_floats(layer->tables.cdf, (size_t)H * D, cdf);
    read_floats(layer->tables.probabilities, (size_t)H * D, p);
    read_floats(layer->tables.head_norms, H, head_norms);

    for (int h = 0; h < H; h++) {
        double norms[384], total = 0.0;
        for (int k = 0; k < D; k++) {
            norms[k] = 0.0;
            for (int c = 0; c < d; c++) {
                double w = t.w.value_weight[(size_t)(h * d + c) * D + k];
                norms[k] += w * w;
            }
            total += norms[k];
        }
        assert_true(fabs(head_norms[h] - sqrt(total)) <= 1e-6 * sqrt(total));
        double running = 0.0;
        for (int k = 0; k < D; k++) {
            running += norms[k];
            /* float32 division of a compensated running sum: a few ulp of 1. */
            assert_true(fabs(cdf[h * D + k] - running / total) < 1e-6);
            assert_true(fabs(p[h * D + k] - norms[k] / total) <= 1e-6 * (norms[k] / total));
            if (k > 0)
                assert_true(cdf[h * D + k] >= cdf[h * D + k - 1]);
        }
        assert_true(cdf[h * D + D - 1] == 1.0f);
    }
    /* Head 0's zero columns have probability 0; the trailing one keeps the CDF at 1. */
    assert_true(p[3] == 0.0f);
    assert_true(cdf[3] == cdf[2]);
    assert_true(p[D - 1] == 0.0f);
    assert_true(cdf[D - 2] == 1.0f);

    mca_attention_destroy(layer);
    free(t.storage);
    free(cdf);
    free(p);
}

static void philox_known_answers(void **state)
{
    (void)state;
    /* Random123's published known-answer vectors for Philox4x32-10 (kat_vectors). */
    const cl_uint counters[12] = {0,          0,          0,          0,
                                  0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff,
                                  0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344};
    const cl_uint keys[6] = {0, 0, 0xffffffff, 0xffffffff, 0xa4093822, 0x299f31d0};
    const cl_uint expected[12] = {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8,
                                  0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd,
                                  0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1};
    cl_mem counter_buffer = NULL, key_buffer = NULL, out = NULL;
    assert_int_equal(mca_buffer_create(context, sizeof counters, counters, "counters",
                                       &counter_buffer),
                     MCA_SUCCESS);
    assert_int_equal(mca_buffer_create(context, sizeof keys, keys, "keys", &key_buffer),
                     MCA_SUCCESS);
    assert_int_equal(mca_buffer_create(context, sizeof expected, NULL, "out", &out),
                     MCA_SUCCESS);
    cl_kernel kernel = NULL;
    assert_int_equal(mca_context_kernel(context, "philox_known_answer", &kernel), MCA_SUCCESS);
    cl_uint count = 3;
    assert_int_equal(mca_set_kernel_args(context, kernel, 4, MCA_ARG(count),
                                         MCA_ARG(counter_buffer), MCA_ARG(key_buffer),
                                         MCA_ARG(out)),
                     MCA_SUCCESS);
    size_t global = 3;
    assert_int_equal(mca_launch(context, kernel, 1, &global, NULL), MCA_SUCCESS);
    cl_uint actual[12];
    assert_int_equal(mca_buffer_read(context, out, 0, sizeof actual, actual), MCA_SUCCESS);
    for (int i = 0; i < 12; i++)
        assert_int_equal(actual[i], expected[i]);
    mca_buffer_release(&counter_buffer);
    mca_buffer_release(&key_buffer);
    mca_buffer_release(&out);
}

/* Device buffers for a direct call of the sampler: `pairs` pairs of head `head`, each with
 * r samples, on rows 0 .. pairs-1 of an all-ones hidden state. */
typedef struct draw_setup {
    mca_draw_request_t request;
    size_t pair_count, samples;
    cl_uint r;
} draw_setup_t;

static void draw_setup_create(draw_setup_t *s, int hidden, size_t pair_count, cl_uint r,
                              cl_uint head, uint64_t seed)
{
    memset(s, 0, sizeof *s);
    s->pair_count = pair_count;
    s->r = r;
    s->samples = pair_count * r;
    cl_uint *pairs = malloc(pair_count * 4 * sizeof *pairs);
    float *ones = malloc(pair_count * hidden * sizeof *ones);
    for (size_t q = 0; q < pair_count; q++) {
        pairs[4 * q] = (cl_uint)q;
        pairs[4 * q + 1] = head;
        pairs[4 * q + 2] = r;
        pairs[4 * q + 3] = (cl_uint)(q * r);
    }
    for (size_t i = 0; i < pair_count * hidden; i++)
        ones[i] = 1.0f;
    mca_draw_request_t *q = &s->request;
    q->pair_count = (uint32_t)pair_count;
    q->tokens = (uint32_t)pair_count;
    q->seed = seed;
    assert_int_equal(mca_buffer_create(context, pair_count * 4 * sizeof *pairs, pairs, "pairs",
                                       &q->pairs),
                     MCA_SUCCESS);
    assert_int_equal(mca_buffer_create(context, pair_count * hidden * sizeof *ones, ones,
                                       "hidden", &q->hidden),
                     MCA_SUCCESS);
    assert_int_equal(mca_buffer_create(context, s->samples * sizeof(cl_uint), NULL, "columns",
                                       &q->columns),
                     MCA_SUCCESS);
    assert_int_equal(mca_buffer_create(context, s->samples * sizeof(float), NULL, "weights",
                                       &q->weights),
                     MCA_SUCCESS);
    assert_int_equal(mca_buffer_create(context, pair_count * sizeof(cl_uint), NULL, "distinct",
                                       &q->distinct),
                     MCA_SUCCESS);
    free(pairs);
    free(ones);
}

static void draw_setup_release(draw_setup_t *s)
{
    mca_buffer_release(&s->request.pairs);
    mca_buffer_release(&s->request.hidden);
    mca_buffer_release(&s->request.columns);
    mca_buffer_release(&s->request.weights);
    mca_buffer_release(&s->request.distinct);
}

/* Host copies of one draw's output. */
typedef struct draw_result {
    cl_uint *columns;
    float *weights;
    cl_uint *distinct;
} draw_result_t;

static void draw_and_read(mca_attention_t *layer, draw_setup_t *s, draw_result_t *result)
{
    assert_int_equal(mca_sampling_draw(context, &layer->tables, &s->request), MCA_SUCCESS);
    result->columns = malloc(s->samples * sizeof(cl_uint));
    result->weights = malloc(s->samples * sizeof(float));
    result->distinct = malloc(s->pair_count * sizeof(cl_uint));
    assert_int_equal(mca_buffer_read(context, s->request.columns, 0,
                                     s->samples * sizeof(cl_uint), result->columns),
                     MCA_SUCCESS);
    assert_int_equal(mca_buffer_read(context, s->request.weights, 0, s->samples * sizeof(float),
                                     result->weights),
                     MCA_SUCCESS);
    assert_int_equal(mca_buffer_read(context, s->request.distinct, 0,
                                     s->pair_count * sizeof(cl_uint), result->distinct),
                     MCA_SUCCESS);
}

static void draw_result_free(draw_result_t *result)
{
    free(result->columns);
    free(result->weights);
    free(result->distinct);
}

/* Upper critical value of the chi-square distribution with `df` degrees of freedom for
 * the one-sided normal quantile z (Wilson-Hilferty; accurate to ~1% for df > 30). */
static double chi_square_critical(double df, double z)
{
    double a = 2.0 / (9.0 * df);
    double base = 1.0 - a + z * sqrt(a);
    return df * base * base * base;
}

static void sampler_frequencies_match_p(void **state)
{
    (void)state;
    const int D = 64, H = 2;
    test_weights_t t;
    make_skewed_weights(&t, D, H, 111);
    mca_attention_t *layer = NULL;
    assert_int_equal(mca_attention_create(context, &t.w, &layer), MCA_SUCCESS);
    float p[64];
    read_floats(layer->tables.probabilities, D, p);

    draw_setup_t s;
    const cl_uint r = 63;
    draw_setup_create(&s, D, 2000, r, 0, 12345);
    draw_result_t result;
    draw_and_read(layer, &s, &result);

    /* Weights are count * x[k] / (r p[k]) with x = 1, so each entry gives back its count. */
    double observed[64] = {0};
    for (size_t q = 0; q < s.pair_count; q++) {
        const cl_uint *columns = result.columns + q * r;
        const float *weights = result.weights + q * r;
        cl_uint total = 0;
        for (cl_uint e = 0; e < result.distinct[q]; e++) {
            if (e > 0)
                assert_true(columns[e] > columns[e - 1]);
            double count = weights[e] * r * p[columns[e]];
            long rounded = lround(count);
            assert_true(fabs(count - (double)rounded) < 1e-3);
            observed[columns[e]] += (double)rounded;
            total += (cl_uint)rounded;
        }
        assert_int_equal(total, r);
    }

    double n = (double)s.samples, chi_square = 0.0;
    int categories = 0;
    for (int k = 0; k < D; k++) {
        if (p[k] == 0.0f) {
            assert_true(observed[k] == 0.0);
            continue;
        }
        double expected = n * p[k];
        chi_square += (observed[k] - expected) * (observed[k] - expected) / expected;
        categories++;
    }
    /* z = 3.719 is the 1e-4 upper quantile: a correct sampler fails this with p = 1e-4,
     * and the seed is fixed, so the test is deterministic. */
    double critical = chi_square_critical(categories - 1, 3.719);
    fprintf(stderr, "chi-square %.1f with %d degrees of freedom, critical %.1f\n", chi_square,
            categories - 1, critical);
    assert_true(chi_square < critical);

    draw_result_free(&result);
    draw_setup_release(&s);
    mca_attention_destroy(layer);
    free(t.storage);
}

static void draws_ignore_work_group_size(void **state)
{
    (void)state;
    const int D = 64, H = 2;
    test_weights_t t;
    make_skewed_weights(&t, D, H, 121);
    mca_attention_t *layer = NULL;
    assert_int_equal(mca_attention_create(context, &t.w, &layer), MCA_SUCCESS);

    draw_setup_t s;
    draw_setup_create(&s, D, 300, 37, 1, 777);
    /* CPUs draw with one work-item per pair. Clearing is_cpu runs the GPU path too, where
     * work-groups of 7 and 64 share each pair's counters in local memory. */
    const size_t original = context->local_size;
    const bool original_cpu = context->is_cpu;
    const size_t sizes[] = {1, 7, 64};
    draw_result_t results[6];
    for (int i = 0; i < 6; i++) {
        context->is_cpu = i < 3;
        context->local_size = sizes[i % 3] < context->max_work_group_size
                                  ? sizes[i % 3]
                                  : context->max_work_group_size;
        draw_and_read(layer, &s, &results[i]);
    }
    context->local_size = original;
    context->is_cpu = original_cpu;
    for (int i = 1; i < 6; i++) {
        assert_memory_equal(results[0].distinct, results[i].distinct,
                            s.pair_count * sizeof(cl_uint));
        for (size_t q = 0; q < s.pair_count; q++) {
            size_t offset = q * s.r;
            size_t bytes = results[0].distinct[q];
            assert_memory_equal(results[0].columns + offset, results[i].columns + offset,
                                bytes * sizeof(cl_uint));
            assert_memory_equal(results[0].weights + offset, results[i].weights + offset,
                                bytes * sizeof(float));
        }
    }
    /* Different tokens draw different indices: independent counters. */
    assert_true(memcmp(results[0].columns, results[0].columns + s.r, s.r * sizeof(cl_uint)) != 0);
    for (int i = 0; i < 6; i++)
        draw_result_free(&results[i]);
    draw_setup_release(&s);
    mca_attention_destroy(layer);
    free(t.storage);
}

/* A small layer whose counts at alpha = 1 mix r = 1, intermediate r and exact tokens. */
typedef struct estimator_case {
    test_weights_t t;
    mca_attention_t *layer;
    int tokens;
    float *hidden;
    float *exact;
    float *output;
} estimator_case_t;

enum { EST_D = 32, EST_H = 2, EST_T = 6 };

static void estimator_case_create(estimator_case_t *e)
{
    test_weights_random(&e->t, EST_D, EST_H, 131, 0.3f);
    assert_int_equal(mca_attention_create(context, &e->t.w, &e->layer), MCA_SUCCESS);
    e->tokens = EST_T;
    size_t count = (size_t)EST_T * EST_D;
    e->hidden = malloc(count * sizeof(float));
    e->exact = malloc(count * sizeof(float));
    e->output = malloc(count * sizeof(float));
    test_rng_t rng = {132};
    test_fill(&rng, e->hidden, count, 1.0f);
    mca_forward_options_t options;
    mca_forward_options_init(&options);
    const int length = EST_T;
    assert_int_equal(mca_attention_forward(e->layer, &options, 1, EST_T, &length, e->hidden,
                                           e->exact, NULL),
                     MCA_SUCCESS);
}

static void estimator_case_free(estimator_case_t *e)
{
    mca_attention_destroy(e->layer);
    free(e->t.storage);
    free(e->hidden);
    free(e->exact);
    free(e->output);
}

static void estimator_is_unbiased_within_bound(void **state)
{
    (void)state;
    estimator_case_t e;
    estimator_case_create(&e);
    const int runs = 1000, length = EST_T;
    const size_t count = (size_t)EST_T * EST_D;
    double *mean = calloc(count, sizeof *mean);
    double row_error[EST_H * EST_T] = {0};
    double squared_error = 0.0;

    mca_forward_options_t options;
    mca_forward_options_init(&options);
    options.mode = MCA_MODE_MCA;
    options.alpha = 1.0f;
    mca_forward_stats_t stats;
    for (int run = 0; run < runs; run++) {
        options.seed = 1000 + (uint64_t)run;
        mca_forward_stats_reset(&stats);
        assert_int_equal(mca_attention_forward(e.layer, &options, 1, EST_T, &length, e.hidden,
                                               e.output, &stats),
                         MCA_SUCCESS);
        for (size_t i = 0; i < count; i++) {
            mean[i] += e.output[i] / runs;
            squared_error += (e.output[i] - e.exact[i]) * (e.output[i] - e.exact[i]);
        }
        for (int h = 0; h < EST_H; h++) {
            for (int i = 0; i < EST_T; i++) {
                double norm = 0.0;
                for (int c = 0; c < EST_D / EST_H; c++) {
                    size_t at = (size_t)i * EST_D + h * (EST_D / EST_H) + c;
                    norm += (e.output[at] - e.exact[at]) * (e.output[at] - e.exact[at]);
                }
                row_error[h * EST_T + i] += sqrt(norm) / runs;
            }
        }
    }
    /* The case must exercise sampling, not only the exact path. */
    uint64_t sampled = 0;
    for (int bin = 1; bin < MCA_HISTOGRAM_BINS - 1; bin++)
        sampled += stats.histogram[bin];
    assert_true(sampled >= 4);

    /* Unbiased: the error of the mean shrinks like 1/sqrt(runs), about 0.032 of a single
     * run's RMS error here; a biased estimator stays near 1. */
    double mean_error = 0.0;
    for (size_t i = 0; i < count; i++)
        mean_error += (mean[i] - e.exact[i]) * (mean[i] - e.exact[i]);
    double ratio = sqrt(mean_error) / sqrt(squared_error / runs);
    fprintf(stderr, "error of the mean / RMS error of one run = %.4f\n", ratio);
    assert_true(ratio < 0.1);

    /* Each row's mean error stays under its bound; the bound is deterministic given A,
     * so the last run's bounds apply to every run. 1000 runs estimate the expectation to
     * a few percent, covered by the 5% margin. */
    const float *bounds = e.layer->host.bounds;
    for (int h = 0; h < EST_H; h++) {
        for (int i = 0; i < EST_T; i++) {
            double bound = bounds[h * EST_T + i];
            if (row_error[h * EST_T + i] > 1.05 * bound)
                fprintf(stderr, "row %d head %d: mean error %.4g > bound %.4g\n", i, h,
                        row_error[h * EST_T + i], bound);
            assert_true(row_error[h * EST_T + i] <= 1.05 * bound);
        }
    }
    free(mean);
    estimator_case_free(&e);
}

static void forward_ignores_work_group_size(void **state)
{
    (void)state;
    estimator_case_t e;
    estimator_case_create(&e);
    const int length = EST_T;
    const size_t count = (size_t)EST_T * EST_D;
    float *first = malloc(count * sizeof *first);
    mca_forward_options_t options;
    mca_forward_options_init(&options);
    options.mode = MCA_MODE_MCA;
    options.alpha = 1.0f;
    options.seed = 99;

    /* One work-item per work-group on the CPU path, against the default size on the GPU
     * path, whose accumulation kernel sums in the same order. */
    const size_t original = context->local_size;
    const bool original_cpu = context->is_cpu;
    context->local_size = 1;
    context->is_cpu = true;
    assert_int_equal(mca_attention_forward(e.layer, &options, 1, EST_T, &length, e.hidden, first,
                                           NULL),
                     MCA_SUCCESS);
    context->local_size = original;
    context->is_cpu = false;
    assert_int_equal(mca_attention_forward(e.layer, &options, 1, EST_T, &length, e.hidden,
                                           e.output, NULL),
                     MCA_SUCCESS);
    /* Every work-item computes its outputs in a fixed order, so the results agree to the
     * bit, not only to float rounding. */
    assert_memory_equal(first, e.output, count * sizeof *first);
    context->is_cpu = original_cpu;

    options.seed = 100;
    assert_int_equal(mca_attention_forward(e.layer, &options, 1, EST_T, &length, e.hidden,
                                           e.output, NULL),
                     MCA_SUCCESS);
    assert_true(memcmp(first, e.output, count * sizeof *first) != 0);
    free(first);
    estimator_case_free(&e);
}

/* The published strategy draws the same uniforms without merging, so both strategies give
 * the same value rows up to the order of float additions. */
static void merged_equals_published_strategy(void **state)
{
    (void)state;
    estimator_case_t e;
    estimator_case_create(&e);
    const int length = EST_T;
    const size_t count = (size_t)EST_T * EST_D;
    float *published = malloc(count * sizeof *published);
    mca_forward_options_t options;
    mca_forward_options_init(&options);
    options.mode = MCA_MODE_MCA;
    options.alpha = 0.7f;
    options.seed = 5;
    options.layer_index = 3;
    options.first_sequence = 11;

    mca_forward_stats_t merged_stats, published_stats;
    mca_forward_stats_reset(&merged_stats);
    mca_forward_stats_reset(&published_stats);
    assert_int_equal(mca_attention_forward(e.layer, &options, 1, EST_T, &length, e.hidden,
                                           e.output, &merged_stats),
                     MCA_SUCCESS);
    e.layer->value_strategy = MCA_VALUES_PUBLISHED;
    assert_int_equal(mca_attention_forward(e.layer, &options, 1, EST_T, &length, e.hidden,
                                           published, &published_stats),
                     MCA_SUCCESS);
    e.layer->value_strategy = MCA_VALUES_MERGED;

    double worst = 0.0, scale = 0.0;
    for (size_t i = 0; i < count; i++) {
        worst = fmax(worst, fabs((double)published[i] - e.output[i]));
        scale = fmax(scale, fabs((double)e.output[i]));
    }
    /* Up to 31 samples summed in another order: a few float ulp of the largest value. */
    assert_true(worst <= 1e-5 * scale);
    assert_true(memcmp(published, e.exact, count * sizeof *published) != 0);
    assert_int_equal(merged_stats.samples_drawn, published_stats.samples_drawn);
    assert_true(merged_stats.distinct_columns <= published_stats.distinct_columns);
    free(published);
    estimator_case_free(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cdf_matches_double_prefix_sum),
        cmocka_unit_test(philox_known_answers),
        cmocka_unit_test(sampler_frequencies_match_p),
        cmocka_unit_test(draws_ignore_work_group_size),
        cmocka_unit_test(estimator_is_unbiased_within_bound),
        cmocka_unit_test(forward_ignores_work_group_size),
        cmocka_unit_test(merged_equals_published_strategy),
    };
    return cmocka_run_group_tests(tests, test_group_setup, test_group_teardown);
}
