/* OpenBLAS host attention of the benchmarks: agreement with mca_attention_forward in exact
 * mode and with the double-precision reference, padding, stage times and input validation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "host_attention.h"
#include "test_util.h"

/* Largest |a - b| / (1 + |b|) over the valid rows. NaN counts as infinite. */
static double max_relative_error(const float *a, const double *b, int batch, int tokens,
                                 const int *lengths, int D)
{
    double worst = 0.0;
    for (int s = 0; s < batch; s++) {
        for (size_t i = (size_t)s * tokens * D; i < ((size_t)s * tokens + lengths[s]) * D; i++) {
            double error = fabs((double)a[i] - b[i]) / (1.0 + fabs(b[i]));
            if (!(error <= worst))
                worst = isnan(error) ? INFINITY : error;
        }
    }
    return worst;
}

/* Fills hidden with random values in the valid rows and NaN in the padded rows, which
 * neither implementation may read. */
static void fill_hidden(float *hidden, int batch, int tokens, const int *lengths, int D,
                        uint64_t seed)
{
    test_rng_t rng = {seed};
    for (int s = 0; s < batch; s++) {
        float *rows = hidden + (size_t)s * tokens * D;
        test_fill(&rng, rows, (size_t)tokens * D, 1.0f);
        for (size_t i = (size_t)lengths[s] * D; i < (size_t)tokens * D; i++)
            rows[i] = NAN;
    }
}

typedef struct shape_case {
    int batch, tokens;
    const int *lengths;
} shape_case_t;

/* Runs one shape through the host, the device in exact mode and the double reference. */
static void check_case(const mca_attention_weights_t *w, const shape_case_t *c, uint64_t seed)
{
    int D = w->hidden_size;
    size_t count = (size_t)c->batch * c->tokens * D;
    float *hidden = malloc(count * sizeof *hidden);
    float *host = malloc(count * sizeof *host);
    float *device = malloc(count * sizeof *device);
    double *expected = malloc(count * sizeof *expected);
    assert_non_null(hidden);
    assert_non_null(host);
    assert_non_null(device);
    assert_non_null(expected);
    fill_hidden(hidden, c->batch, c->tokens, c->lengths, D, seed);

    host_attention_times_t times;
    int status = host_attention_forward(w, c->batch, c->tokens, c->lengths, hidden, host, &times);
    if (status != MCA_SUCCESS)
        fprintf(stderr, "host_attention_forward: %s\n", host_attention_last_error());
    assert_int_equal(status, MCA_SUCCESS);

    mca_attention_t *layer = NULL;
    assert_int_equal(mca_attention_create(context, w, &layer), MCA_SUCCESS);
    mca_forward_options_t options;
    mca_forward_options_init(&options);
    options.mode = MCA_MODE_EXACT;
    status = mca_attention_forward(layer, &options, c->batch, c->tokens, c->lengths, hidden,
                                   device, NULL);
    if (status != MCA_SUCCESS)
        fprintf(stderr, "mca_attention_forward: %s\n", mca_last_error());
    assert_int_equal(status, MCA_SUCCESS);
    mca_attention_destroy(layer);

    /* Both sides compute float32 dot products of length 64 in different orders, then a
     * softmax. 1e-5 relative is about 100 ulp, far above rounding and far below any indexing
     * mistake. */
    double *device_double = malloc(count * sizeof *device_double);
    assert_non_null(device_double);
    for (size_t i = 0; i < count; i++)
        device_double[i] = device[i];
    double versus_device = max_relative_error(host, device_double, c->batch, c->tokens,
                                              c->lengths, D);
    if (versus_device > 1e-5)
        fprintf(stderr, "host versus device: max relative error %.3g\n", versus_device);
    assert_true(versus_device <= 1e-5);

    reference_attention(w, c->batch, c->tokens, c->lengths, hidden, expected);
    double versus_reference = max_relative_error(host, expected, c->batch, c->tokens,
                                                 c->lengths, D);
    if (versus_reference > 1e-5)
        fprintf(stderr, "host versus double reference: max relative error %.3g\n",
                versus_reference);
    assert_true(versus_reference <= 1e-5);

    for (int s = 0; s < c->batch; s++) {
        for (size_t i = (size_t)c->lengths[s] * D; i < (size_t)c->tokens * D; i++)
            assert_true(host[(size_t)s * c->tokens * D + i] == 0.0f);
    }

    assert_true(times.projections >= 0.0);
    assert_true(times.scores >= 0.0);
    assert_true(times.attend >= 0.0);
    assert_true(times.projections + times.scores + times.attend <= times.total);

    free(hidden);
    free(host);
    free(device);
    free(device_double);
    free(expected);
}

static void host_matches_device_exact(void **state)
{
    (void)state;
    test_weights_t t;
    test_weights_random(&t, 64, 4, 21, 0.2f);

    /* Full sequences next to each other share one projection GEMM, so the cases cover runs
     * of full sequences at the start, before the last sequence and over the whole batch, as
     * well as empty sequences and a single sequence. */
    const int mixed[] = {13, 13, 5, 0, 9, 13, 13, 1};
    const int all_full[] = {7, 7, 7};
    const int all_empty[] = {0, 0};
    const int single[] = {11};
    const int one_token[] = {1, 0, 1};
    const shape_case_t cases[] = {
        {8, 13, mixed},
        {3, 7, all_full},
        {2, 4, all_empty},
        {1, 11, single},
        {3, 1, one_token},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_case(&t.w, &cases[i], 100 + i);
    free(t.storage);
}

/* Calls host_attention_forward with bad input and checks the status, the message and that
 * the output stays untouched. */
static void expect_rejected(const mca_attention_weights_t *w, int batch, int tokens,
                            const int *lengths, const float *hidden, float *output,
                            int expected_status)
{
    output[0] = 42.0f;
    host_attention_times_t times;
    int status = host_attention_forward(w, batch, tokens, lengths, hidden, output, &times);
    assert_int_equal(status, expected_status);
    assert_true(strlen(host_attention_last_error()) > 0);
    assert_true(output[0] == 42.0f);
}

static void host_rejects_invalid_input(void **state)
{
    (void)state;
    test_weights_t t;
    test_weights_random(&t, 64, 4, 22, 0.2f);
    const int lengths[] = {3, 2};
    float hidden[2 * 3 * 64] = {0};
    float output[2 * 3 * 64];
    const int invalid = MCA_ERROR_INVALID_ARGUMENT;

    expect_rejected(NULL, 2, 3, lengths, hidden, output, invalid);
    expect_rejected(&t.w, 2, 3, NULL, hidden, output, invalid);
    expect_rejected(&t.w, 2, 3, lengths, NULL, output, invalid);
    assert_int_equal(host_attention_forward(&t.w, 2, 3, lengths, hidden, NULL, NULL), invalid);
    expect_rejected(&t.w, 0, 3, lengths, hidden, output, invalid);
    expect_rejected(&t.w, 2, 0, lengths, hidden, output, invalid);
    expect_rejected(&t.w, -1, 3, lengths, hidden, output, invalid);

    const int negative[] = {3, -1};
    const int too_long[] = {4, 2};
    expect_rejected(&t.w, 2, 3, negative, hidden, output, invalid);
    expect_rejected(&t.w, 2, 3, too_long, hidden, output, invalid);

    mca_attention_weights_t bad = t.w;
    bad.heads = 5;
    expect_rejected(&bad, 2, 3, lengths, hidden, output, invalid);
    bad.heads = 0;
    expect_rejected(&bad, 2, 3, lengths, hidden, output, invalid);
    bad = t.w;
    bad.hidden_size = 0;
    expect_rejected(&bad, 2, 3, lengths, hidden, output, invalid);
    bad = t.w;
    bad.value_bias = NULL;
    expect_rejected(&bad, 2, 3, lengths, hidden, output, invalid);
    free(t.storage);
}

static void host_rejects_oversized_batch(void **state)
{
    (void)state;
    test_weights_t t;
    test_weights_random(&t, 64, 4, 23, 0.2f);
    /* 65536 x 65536 rows overflow BLAS's int. Validation reads every length, so they are
     * allocated, but hidden and the output are never touched. */
    int batch = 65536, tokens = 65536;
    int *lengths = calloc((size_t)batch, sizeof *lengths);
    assert_non_null(lengths);
    float hidden[1] = {0};
    float output[1];
    expect_rejected(&t.w, batch, tokens, lengths, hidden, output, MCA_ERROR_INPUT_TOO_LONG);
    free(lengths);
    free(t.storage);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(host_matches_device_exact),
        cmocka_unit_test(host_rejects_invalid_input),
        cmocka_unit_test(host_rejects_oversized_batch),
    };
    return cmocka_run_group_tests(tests, test_group_setup, test_group_teardown);
}
