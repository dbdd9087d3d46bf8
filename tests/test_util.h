/* Helpers shared by the device tests: a context on the test device, seeded random data and
 * a double-precision reference of exact attention. */
#ifndef MCA_TEST_UTIL_H
#define MCA_TEST_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mca.h"

/* Log callback for tests: warnings and errors go to standard error so failures explain
 * themselves. */
static inline void test_log(mca_log_level_t level, const char *message, void *user_data)
{
    (void)user_data;
    if (level >= MCA_LOG_WARNING)
        fprintf(stderr, "[mca %s] %s\n", level == MCA_LOG_ERROR ? "error" : "warning", message);
}

/* Creates a context on the default device, or returns NULL after printing why. */
static inline mca_context_t *test_context_create(void)
{
    mca_context_options_t options;
    mca_context_options_init(&options);
    options.log = test_log;
    options.log_level = MCA_LOG_WARNING;
    mca_context_t *context = NULL;
    int status = mca_context_create(&options, &context);
    if (status != MCA_SUCCESS) {
        fprintf(stderr, "mca_context_create: %s: %s\n", mca_status_string(status),
                mca_last_error());
        return NULL;
    }
    return context;
}

/* Context shared by the tests of one cmocka group, created by test_group_setup. Each test
 * program that includes this header has its own. */
static mca_context_t *context;

static inline int test_group_setup(void **state)
{
    (void)state;
    context = test_context_create();
    return context != NULL ? 0 : -1;
}

static inline int test_group_teardown(void **state)
{
    (void)state;
    mca_context_destroy(context);
    return 0;
}

/* xorshift64* stream: deterministic test data without libc's rand(). */
typedef struct test_rng {
    uint64_t state;
} test_rng_t;

static inline uint64_t test_rng_next(test_rng_t *rng)
{
    rng->state ^= rng->state >> 12;
    rng->state ^= rng->state << 25;
    rng->state ^= rng->state >> 27;
    return rng->state * 2685821657736338717ull;
}

/* Uniform in [-1, 1). */
static inline float test_rng_uniform(test_rng_t *rng)
{
    return (float)((double)(test_rng_next(rng) >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

static inline void test_fill(test_rng_t *rng, float *values, size_t count, float scale)
{
    for (size_t i = 0; i < count; i++)
        values[i] = scale * test_rng_uniform(rng);
}

/*
 * Exact self-attention in double precision: the context (batch, tokens, D) before the output
 * projection, zero for padded rows. Weights in (out, in) layout.
 */
static inline void reference_attention(const mca_attention_weights_t *w, int batch, int tokens,
                                       const int *lengths, const float *hidden, double *out)
{
    int D = w->hidden_size, H = w->heads, d = D / H;
    size_t rows = (size_t)batch * tokens;
    double *q = calloc(rows * D, sizeof *q);
    double *k = calloc(rows * D, sizeof *k);
    double *v = calloc(rows * D, sizeof *v);
    double *scores = calloc((size_t)tokens, sizeof *scores);
    for (size_t r = 0; r < rows; r++) {
        const float *x = hidden + r * D;
        for (int o = 0; o < D; o++) {
            double sq = w->query_bias[o], sk = w->key_bias[o], sv = w->value_bias[o];
            for (int i = 0; i < D; i++) {
                sq += (double)w->query_weight[(size_t)o * D + i] * x[i];
                sk += (double)w->key_weight[(size_t)o * D + i] * x[i];
                sv += (double)w->value_weight[(size_t)o * D + i] * x[i];
            }
            q[r * D + o] = sq;
            k[r * D + o] = sk;
            v[r * D + o] = sv;
        }
    }
    memset(out, 0, rows * D * sizeof *out);
    for (int b = 0; b < batch; b++) {
        int n = lengths[b];
        for (int h = 0; h < H; h++) {
            for (int i = 0; i < n; i++) {
                const double *qi = q + ((size_t)b * tokens + i) * D + h * d;
                double maximum = -INFINITY, sum = 0.0;
                for (int j = 0; j < n; j++) {
                    const double *kj = k + ((size_t)b * tokens + j) * D + h * d;
                    double dot = 0.0;
                    for (int c = 0; c < d; c++)
                        dot += qi[c] * kj[c];
                    scores[j] = dot / sqrt((double)d);
                    if (scores[j] > maximum)
                        maximum = scores[j];
                }
                for (int j = 0; j < n; j++) {
                    scores[j] = exp(scores[j] - maximum);
                    sum += scores[j];
                }
                double *o = out + ((size_t)b * tokens + i) * D + h * d;
                for (int j = 0; j < n; j++) {
                    const double *vj = v + ((size_t)b * tokens + j) * D + h * d;
                    for (int c = 0; c < d; c++)
                        o[c] += scores[j] / sum * vj[c];
                }
            }
        }
    }
    free(q);
    free(k);
    free(v);
    free(scores);
}

/* Random attention weights of the given shape, owned by the caller through `storage`. */
typedef struct test_weights {
    mca_attention_weights_t w;
    float *storage;
} test_weights_t;

static inline void test_weights_random(test_weights_t *t, int hidden, int heads, uint64_t seed,
                                       float weight_scale)
{
    size_t dd = (size_t)hidden * hidden;
    t->storage = malloc((3 * dd + 3 * (size_t)hidden) * sizeof(float));
    test_rng_t rng = {seed};
    test_fill(&rng, t->storage, 3 * dd + 3 * (size_t)hidden, weight_scale);
    t->w.hidden_size = hidden;
    t->w.heads = heads;
    t->w.query_weight = t->storage;
    t->w.key_weight = t->storage + dd;
    t->w.value_weight = t->storage + 2 * dd;
    t->w.query_bias = t->storage + 3 * dd;
    t->w.key_bias = t->storage + 3 * dd + hidden;
    t->w.value_bias = t->storage + 3 * dd + 2 * (size_t)hidden;
}

#endif /* MCA_TEST_UTIL_H */
