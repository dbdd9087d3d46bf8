/*
 * Exact self-attention on the host with OpenBLAS's cblas_sgemm, written the way a CPU user
 * would: the three projections as one GEMM on a packed (3D, D) weight, and per (sequence,
 * head) one GEMM for the scores, a numerically stable softmax and one GEMM for A_h V_h.
 */
#include "host_attention.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static _Thread_local char last_error[512];

const char *host_attention_last_error(void)
{
    return last_error;
}

static int fail(int status, const char *format, ...)
{
    va_list arguments;
    va_start(arguments, format);
    vsnprintf(last_error, sizeof last_error, format, arguments);
    va_end(arguments);
    return status;
}

static double now_seconds(void)
{
    struct timespec time;
    clock_gettime(CLOCK_MONOTONIC, &time);
    return (double)time.tv_sec + 1e-9 * (double)time.tv_nsec;
}

/* True when a * b * element_size fits in size_t. */
static int product_fits(size_t a, size_t b, size_t element_size)
{
    return b == 0 || a <= SIZE_MAX / element_size / b;
}

static int validate(const mca_attention_weights_t *w, int batch, int tokens,
                    const int *valid_lengths, const float *hidden, float *context)
{
    if (w == NULL || valid_lengths == NULL || hidden == NULL || context == NULL)
        return fail(MCA_ERROR_INVALID_ARGUMENT,
                    "host attention: weights, valid_lengths, hidden and context must not be NULL");
    if (w->query_weight == NULL || w->query_bias == NULL || w->key_weight == NULL ||
        w->key_bias == NULL || w->value_weight == NULL || w->value_bias == NULL)
        return fail(MCA_ERROR_INVALID_ARGUMENT,
                    "host attention: every weight and bias pointer must be non-NULL");
    if (w->hidden_size <= 0 || w->heads <= 0 || w->hidden_size % w->heads != 0)
        return fail(MCA_ERROR_INVALID_ARGUMENT,
                    "host attention: hidden size %d and heads %d must be positive, and the "
                    "hidden size divisible by the heads",
                    w->hidden_size, w->heads);
    if (batch <= 0 || tokens <= 0)
        return fail(MCA_ERROR_INVALID_ARGUMENT,
                    "host attention: batch %d and tokens %d must both be positive", batch, tokens);
    for (int b = 0; b < batch; b++) {
        if (valid_lengths[b] < 0 || valid_lengths[b] > tokens)
            return fail(MCA_ERROR_INVALID_ARGUMENT,
                        "host attention: valid_lengths[%d] = %d is out of range 0 .. %d (tokens)",
                        b, valid_lengths[b], tokens);
    }

    /* BLAS takes int sizes and leading dimensions. The rows of a merged projection reach
     * batch * tokens, and the packed output is 3D wide. */
    size_t rows = (size_t)batch * (size_t)tokens, width = 3 * (size_t)w->hidden_size;
    if (rows > INT_MAX || width > INT_MAX || !product_fits(rows, width, sizeof(float)) ||
        !product_fits((size_t)tokens, (size_t)tokens, sizeof(float)) ||
        !product_fits(width, (size_t)w->hidden_size, sizeof(float)))
        return fail(MCA_ERROR_INPUT_TOO_LONG,
                    "host attention: batch %d x %d tokens x hidden size %d overflows BLAS int "
                    "sizes or memory sizes; split the batch",
                    batch, tokens, w->hidden_size);
    return MCA_SUCCESS;
}

/* Scratch memory of one call. */
typedef struct scratch {
    float *packed_weight; /* (3D, D): W_Q, W_K, W_V stacked in (out, in) layout */
    float *packed_bias;   /* (3D) */
    float *qkv;           /* (batch * tokens, 3D): row r contains Q, K and V of hidden row r */
    float *scores;        /* (tokens, tokens): scores, then probabilities, of one head */
} scratch_t;

static void scratch_free(scratch_t *s)
{
    free(s->packed_weight);
    free(s->packed_bias);
    free(s->qkv);
    free(s->scores);
}

static int scratch_create(const mca_attention_weights_t *w, int batch, int tokens, scratch_t *s)
{
    size_t D = (size_t)w->hidden_size, rows = (size_t)batch * (size_t)tokens;
    memset(s, 0, sizeof *s);
    s->packed_weight = malloc(3 * D * D * sizeof(float));
    s->packed_bias = malloc(3 * D * sizeof(float));
    s->qkv = malloc(rows * 3 * D * sizeof(float));
    s->scores = malloc((size_t)tokens * (size_t)tokens * sizeof(float));
    if (s->packed_weight == NULL || s->packed_bias == NULL || s->qkv == NULL ||
        s->scores == NULL) {
        scratch_free(s);
        return fail(MCA_ERROR_OUT_OF_HOST_MEMORY,
                    "host attention: out of memory for %zu x %zu projections and %d x %d scores",
                    rows, 3 * D, tokens, tokens);
    }

    const float *weights[3] = {w->query_weight, w->key_weight, w->value_weight};
    const float *biases[3] = {w->query_bias, w->key_bias, w->value_bias};
    for (int m = 0; m < 3; m++) {
        memcpy(s->packed_weight + (size_t)m * D * D, weights[m], D * D * sizeof(float));
        memcpy(s->packed_bias + (size_t)m * D, biases[m], D * sizeof(float));
    }
    return MCA_SUCCESS;
}

/* Computes [Q K V] = X W_packed^T + b_packed for `rows` consecutive hidden rows. */
static void project_rows(const scratch_t *s, int D, int rows, const float *x, float *qkv)
{
    int width = 3 * D;
    for (int r = 0; r < rows; r++)
        memcpy(qkv + (size_t)r * width, s->packed_bias, (size_t)width * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, width, D, 1.0f, x, D,
                s->packed_weight, D, 1.0f, qkv, width);
}

/*
 * Projects the valid rows of every sequence. The valid rows of sequence b run on into those
 * of sequence b + 1 when b is full, so a run of full sequences becomes one GEMM, and padded
 * rows, which may hold anything, are never read.
 */
static void project(const scratch_t *s, int D, int batch, int tokens, const int *valid_lengths,
                    const float *hidden)
{
    int first = 0;
    for (int b = 0; b < batch; b++) {
        if (valid_lengths[b] == tokens && b < batch - 1)
            continue;
        int rows = (b - first) * tokens + valid_lengths[b];
        size_t offset = (size_t)first * (size_t)tokens;
        if (rows > 0)
            project_rows(s, D, rows, hidden + offset * D, s->qkv + offset * 3 * D);
        first = b + 1;
    }
}

/* Turns each of the n rows of scores (leading dimension n) into probabilities. Subtracting
 * the row maximum keeps expf from overflowing. */
static void softmax_rows(float *scores, int n)
{
    for (int i = 0; i < n; i++) {
        float *row = scores + (size_t)i * n;
        float maximum = row[0];
        for (int j = 1; j < n; j++)
            maximum = fmaxf(maximum, row[j]);

        float sum = 0.0f;
        for (int j = 0; j < n; j++) {
            row[j] = expf(row[j] - maximum);
            sum += row[j];
        }

        float scale = 1.0f / sum;
        for (int j = 0; j < n; j++)
            row[j] *= scale;
    }
}

int host_attention_forward(const mca_attention_weights_t *weights, int batch, int tokens,
                           const int *valid_lengths, const float *hidden, float *context,
                           host_attention_times_t *times)
{
    last_error[0] = '\0';
    int status = validate(weights, batch, tokens, valid_lengths, hidden, context);
    if (status != MCA_SUCCESS)
        return status;
    scratch_t s;
    status = scratch_create(weights, batch, tokens, &s);
    if (status != MCA_SUCCESS)
        return status;

    int D = weights->hidden_size, width = 3 * D, d = D / weights->heads;
    float scale = 1.0f / sqrtf((float)d);
    host_attention_times_t elapsed = {0};

    double start = now_seconds();
    project(&s, D, batch, tokens, valid_lengths, hidden);
    double mark = now_seconds();
    elapsed.projections = mark - start;

    for (int b = 0; b < batch; b++) {
        int n = valid_lengths[b];
        const float *sequence = s.qkv + (size_t)b * tokens * width;
        float *output = context + (size_t)b * tokens * D;

        for (int h = 0; n > 0 && h < weights->heads; h++) {
            const float *q = sequence + (size_t)h * d;
            const float *k = q + D;
            const float *v = q + 2 * (size_t)D;

            double before = now_seconds();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, d, scale, q, width, k,
                        width, 0.0f, s.scores, n);
            softmax_rows(s.scores, n);
            double between = now_seconds();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, n, 1.0f, s.scores, n,
                        v, width, 0.0f, output + (size_t)h * d, D);
            double after = now_seconds();

            elapsed.scores += between - before;
            elapsed.attend += after - between;
        }

        double before = now_seconds();
        memset(output + (size_t)n * D, 0, (size_t)(tokens - n) * D * sizeof(float));
        elapsed.attend += now_seconds() - before;
    }
    elapsed.total = now_seconds() - start;

    scratch_free(&s);
    if (times != NULL)
        *times = elapsed;
    return MCA_SUCCESS;
}
