/* Part of mca-tune: times and checks GEMMs with XgemmDirect and with Xgemm and chooses
 * CLBlast's XGEMM_MIN_INDIRECT_SIZE. */
#include "tune_switch.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <clblast_c.h>

#include "gemm.h"

/* GEMM shapes as the library calls CLBlast: batches of per-head products for 12 heads, and
 * row-major products with B transposed, as in mca_linear, for the projections and dense
 * layers. The per-head batches are the scores Q_h K_h^T (tokens, D/H, tokens with B
 * transposed), A*V (tokens, tokens, D/H) and the exact value rows of MCA mode (tokens rows
 * against D/H rows of W_V, k = D, B transposed). */
typedef struct gemm_shape {
    size_t m, n, k;
    size_t count;     /* products in the batch; 1 calls CLBlastSgemm */
    bool transpose_b; /* always set for single products */
} gemm_shape_t;

/* Timed shapes, which decide XGEMM_MIN_INDIRECT_SIZE: the three per-head batches for two
 * sequence lengths, and m = 128, 512 and 2048 rows with (n, k) = (D, D), (3D, D), (4D, D)
 * and (D, 4D) for D = 384 and 768. */
#define HEADS 12
static const size_t timed_attention[][2] = {{128, 32}, {512, 64}}; /* tokens, D/H */
#define PER_HEAD_KINDS 3 /* scores, A*V, exact value rows */
static const size_t timed_widths[] = {384, 768};
static const size_t timed_rows[] = {128, 512, 2048};
static const size_t timed_n_k[][2] = {{1, 1}, {3, 1}, {4, 1}, {1, 4}}; /* multiples of D */
#define TIMED_SHAPE_COUNT 30
_Static_assert(TIMED_SHAPE_COUNT == PER_HEAD_KINDS * sizeof timed_attention /
                                            sizeof *timed_attention +
                                        sizeof timed_widths / sizeof *timed_widths *
                                            sizeof timed_rows / sizeof *timed_rows *
                                            sizeof timed_n_k / sizeof *timed_n_k,
               "TIMED_SHAPE_COUNT must match the shape lists");

/* Checked but not timed: sizes that are not multiples of any tile, as real sentences give.
 * CLBlast pads them, which runs other code than the timed shapes. */
static const gemm_shape_t odd_shapes[] = {
    {19, 32, 19, HEADS, false}, {37, 64, 37, HEADS, false}, {37, 37, 64, HEADS, true},
    {23, 64, 768, HEADS, true}, {20, 384, 384, 1, true},     {37, 1152, 384, 1, true},
    {100, 384, 1536, 1, true},  {5, 3072, 768, 1, true},
};
#define ODD_SHAPE_COUNT (sizeof odd_shapes / sizeof *odd_shapes)

/* Timed runs of a shape stop after this many, or after two once they have taken
 * TIMED_SECONDS together. */
#define TIMED_REPETITIONS 3
#define TIMED_SECONDS 0.5

/* Largest accepted error of C x against A op(B) x, relative to the same sum over absolute
 * values. Float32 rounding gave errors near 1e-7 for these shapes, and broken kernels gave
 * 0.1 and more. */
#define MAX_RELATIVE_ERROR 1e-3

/* XGEMM_MIN_INDIRECT_SIZE values that force one kernel: CLBlast runs the direct kernel when
 * m * n * k < value^3, so 0 always runs Xgemm and 2^20 runs XgemmDirect for every shape that
 * fits in device memory. */
#define ALWAYS_INDIRECT 0
#define ALWAYS_DIRECT (1u << 20)

/* Random operands large enough for every shape, on the device and on the host, and the
 * result of the last GEMM read back. */
typedef struct operands {
    cl_mem a, b, c;
    float *a_host, *b_host, *c_host;
    size_t c_size;
    size_t offsets[3 * HEADS]; /* A, B and C offsets of the products in a batch */
} operands_t;

void mca_tune_progress(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    fprintf(stderr, "mca-tune: ");
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
}

static double monotonic_seconds(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

static void list_timed_shapes(gemm_shape_t shapes[TIMED_SHAPE_COUNT])
{
    size_t count = 0;
    for (size_t a = 0; a < sizeof timed_attention / sizeof *timed_attention; a++) {
        size_t tokens = timed_attention[a][0], width = timed_attention[a][1];
        shapes[count++] = (gemm_shape_t){tokens, tokens, width, HEADS, true};
        shapes[count++] = (gemm_shape_t){tokens, width, tokens, HEADS, false};
        shapes[count++] = (gemm_shape_t){tokens, width, width * HEADS, HEADS, true};
    }
    for (size_t w = 0; w < sizeof timed_widths / sizeof *timed_widths; w++) {
        for (size_t r = 0; r < sizeof timed_rows / sizeof *timed_rows; r++) {
            for (size_t f = 0; f < sizeof timed_n_k / sizeof *timed_n_k; f++) {
                size_t d = timed_widths[w];
                shapes[count++] = (gemm_shape_t){timed_rows[r], timed_n_k[f][0] * d,
                                                 timed_n_k[f][1] * d, 1, true};
            }
        }
    }
}

static unsigned long long shape_size(const gemm_shape_t *shape)
{
    return (unsigned long long)shape->m * shape->n * shape->k;
}

static size_t larger(size_t a, size_t b)
{
    return a > b ? a : b;
}

/* ------------------------------------------------------------------------------------ */
/* Operands and checks                                                                   */
/* ------------------------------------------------------------------------------------ */

/* Uniform in [-1, 1) from an xorshift64* stream, so that every run checks the same data. */
static float next_uniform(uint64_t *state)
{
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    uint64_t bits = *state * 2685821657736338717ull;
    return (float)((double)(bits >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

static bool fill_random(mca_context_t *context, size_t count, float **host, cl_mem *buffer,
                        const char *what, uint64_t seed)
{
    *host = malloc(count * sizeof **host);
    if (*host == NULL)
        return false;
    for (size_t i = 0; i < count; i++)
        (*host)[i] = next_uniform(&seed);
    return mca_buffer_create(context, count * sizeof **host, *host, what, buffer) == 0;
}

static bool create_operands(mca_context_t *context, const gemm_shape_t timed[],
                            operands_t *operands)
{
    size_t a_size = 0, b_size = 0, c_size = 0;
    for (size_t s = 0; s < TIMED_SHAPE_COUNT + ODD_SHAPE_COUNT; s++) {
        const gemm_shape_t *shape = s < TIMED_SHAPE_COUNT ? &timed[s]
                                                          : &odd_shapes[s - TIMED_SHAPE_COUNT];
        a_size = larger(a_size, shape->count * shape->m * shape->k);
        b_size = larger(b_size, shape->count * shape->k * shape->n);
        c_size = larger(c_size, shape->count * shape->m * shape->n);
    }
    memset(operands, 0, sizeof *operands);
    operands->c_size = c_size;
    operands->c_host = malloc(c_size * sizeof *operands->c_host);
    return operands->c_host != NULL &&
           fill_random(context, a_size, &operands->a_host, &operands->a, "A", 1) &&
           fill_random(context, b_size, &operands->b_host, &operands->b, "B", 2) &&
           mca_buffer_create(context, c_size * sizeof(float), NULL, "C", &operands->c) == 0;
}

static void release_operands(operands_t *operands)
{
    mca_buffer_release(&operands->a);
    mca_buffer_release(&operands->b);
    mca_buffer_release(&operands->c);
    free(operands->a_host);
    free(operands->b_host);
    free(operands->c_host);
}

static int run_gemm(const mca_context_t *context, const gemm_shape_t *shape,
                    operands_t *operands)
{
    size_t m = shape->m, n = shape->n, k = shape->k;
    if (shape->count == 1) {
        mca_matrix_t a = {operands->a, 0, k};
        mca_matrix_t b = {operands->b, 0, k};
        mca_matrix_t c = {operands->c, 0, n};
        return mca_gemm(context, false, true, m, n, k, 1.0f, a, b, 0.0f, c);
    }
    size_t *a_offsets = operands->offsets;
    size_t *b_offsets = a_offsets + shape->count;
    size_t *c_offsets = b_offsets + shape->count;
    for (size_t i = 0; i < shape->count; i++) {
        a_offsets[i] = i * m * k;
        b_offsets[i] = i * k * n;
        c_offsets[i] = i * m * n;
    }
    mca_matrix_t a = {operands->a, 0, k};
    mca_matrix_t b = {operands->b, 0, shape->transpose_b ? k : n};
    mca_matrix_t c = {operands->c, 0, n};
    return mca_gemm_batched(context, false, shape->transpose_b, m, n, k, 1.0f, a, a_offsets, b,
                            b_offsets, 0.0f, c, c_offsets, shape->count);
}

/* Returns the largest relative error of C x against A (op(B) x) over the rows of every
 * product, for a random vector x. This costs O(m n + n k + m k) per product instead of the
 * O(m n k) of a full reference product. */
static double probe_error(const gemm_shape_t *shape, const operands_t *operands)
{
    size_t m = shape->m, n = shape->n, k = shape->k;
    double *x = malloc(n * sizeof *x);
    double *bx = malloc(2 * k * sizeof *bx); /* op(B) x, then op(|B|) |x| */
    if (x == NULL || bx == NULL) {
        free(x);
        free(bx);
        return INFINITY;
    }
    uint64_t seed = 3;
    for (size_t j = 0; j < n; j++)
        x[j] = next_uniform(&seed);

    double worst = 0.0;
    for (size_t t = 0; t < shape->count; t++) {
        const float *a = operands->a_host + t * m * k;
        const float *b = operands->b_host + t * k * n;
        const float *c = operands->c_host + t * m * n;
        for (size_t p = 0; p < k; p++) {
            bx[p] = 0.0;
            bx[k + p] = 0.0;
            for (size_t j = 0; j < n; j++) {
                /* B is (n, k) when transposed, else (k, n). */
                double value = shape->transpose_b ? b[j * k + p] : b[p * n + j];
                bx[p] += value * x[j];
                bx[k + p] += fabs(value * x[j]);
            }
        }
        for (size_t i = 0; i < m; i++) {
            double expected = 0.0, scale = 0.0, computed = 0.0;
            for (size_t p = 0; p < k; p++) {
                expected += a[i * k + p] * bx[p];
                scale += fabs((double)a[i * k + p]) * bx[k + p];
            }
            for (size_t j = 0; j < n; j++)
                computed += c[i * n + j] * x[j];
            double error = fabs(computed - expected) / (scale > 0.0 ? scale : 1.0);
            worst = isnan(error) || error > worst ? error : worst;
        }
    }
    free(x);
    free(bx);
    return worst;
}

/* Reads back C and checks it. `kernel` names the forced kernel in the error message. */
static bool check_result(const mca_context_t *context, const gemm_shape_t *shape,
                         operands_t *operands, const char *kernel)
{
    size_t bytes = shape->count * shape->m * shape->n * sizeof(float);
    if (mca_buffer_read(context, operands->c, 0, bytes, operands->c_host) != 0) {
        mca_tune_progress("error: reading a GEMM result failed: %s", mca_last_error());
        return false;
    }
    double error = probe_error(shape, operands);
    if (error <= MAX_RELATIVE_ERROR)
        return true;
    mca_tune_progress("error: GEMM %zu x %zu x %zu (batch of %zu) with %s computed wrong "
                      "results (relative error %.3g). CLBlast's kernels fail for these "
                      "parameters, so no file is written. Rerun with another --effort to "
                      "test other configurations",
                      shape->m, shape->n, shape->k, shape->count, kernel, error);
    return false;
}

static int force_kernel(const mca_context_t *context, size_t min_indirect_size)
{
    const char *names[] = {"XGEMM_MIN_INDIRECT_SIZE"};
    size_t values[] = {min_indirect_size};
    CLBlastStatusCode code = CLBlastOverrideParameters(context->device, "GemmRoutine",
                                                       CLBlastPrecisionSingle, 1, names, values);
    if (code != CLBlastSuccess)
        mca_tune_progress("error: CLBlast rejected XGEMM_MIN_INDIRECT_SIZE=%zu: %s (%d)",
                          min_indirect_size, mca_status_string(code), (int)code);
    return code;
}

/* Runs the shape with the kernel that `min_indirect_size` forces, checks the result, and
 * stores the fastest run in seconds in *seconds when `timed` is set. The first run of a
 * shape may include compiling CLBlast's program or PoCL's kernels, so timing takes at least
 * two runs. */
static bool run_forced(mca_context_t *context, const gemm_shape_t *shape, operands_t *operands,
                       size_t min_indirect_size, bool timed, double *seconds)
{
    const char *kernel = min_indirect_size == ALWAYS_DIRECT ? "XgemmDirect" : "Xgemm";
    if (force_kernel(context, min_indirect_size) != CLBlastSuccess)
        return false;

    double best = INFINITY, total = 0.0;
    int runs = timed ? TIMED_REPETITIONS : 1;
    for (int run = 0; run < runs && (run < 2 || total < TIMED_SECONDS); run++) {
        double start = monotonic_seconds();
        int status = run_gemm(context, shape, operands);
        if (status == MCA_SUCCESS)
            status = clFinish(context->queue);
        if (status != MCA_SUCCESS) {
            mca_tune_progress("error: GEMM %zu x %zu x %zu with %s failed: %s", shape->m,
                              shape->n, shape->k, kernel, mca_last_error());
            return false;
        }
        double elapsed = monotonic_seconds() - start;
        total += elapsed;
        best = fmin(best, elapsed);
    }
    if (seconds != NULL)
        *seconds = best;
    return check_result(context, shape, operands, kernel);
}

/* Times and checks every timed shape with each kernel, and checks the odd shapes. */
static bool run_shapes(mca_context_t *context, const gemm_shape_t timed[], double direct[],
                       double indirect[])
{
    operands_t operands;
    bool ok = create_operands(context, timed, &operands);
    if (!ok)
        mca_tune_progress("error: cannot create the GEMM operands: %s", mca_last_error());

    for (size_t s = 0; ok && s < TIMED_SHAPE_COUNT; s++) {
        const gemm_shape_t *shape = &timed[s];
        ok = run_forced(context, shape, &operands, ALWAYS_DIRECT, true, &direct[s]) &&
             run_forced(context, shape, &operands, ALWAYS_INDIRECT, true, &indirect[s]);
        if (ok) {
            double flops = 2.0 * (double)shape->count * (double)shape_size(shape);
            mca_tune_progress("  GEMM %4zu x %4zu x %4zu (batch of %2zu): XgemmDirect %6.1f "
                              "GFLOP/s, Xgemm %6.1f GFLOP/s",
                              shape->m, shape->n, shape->k, shape->count,
                              flops / direct[s] * 1e-9, flops / indirect[s] * 1e-9);
        }
    }
    for (size_t s = 0; ok && s < ODD_SHAPE_COUNT; s++) {
        ok = run_forced(context, &odd_shapes[s], &operands, ALWAYS_DIRECT, false, NULL) &&
             run_forced(context, &odd_shapes[s], &operands, ALWAYS_INDIRECT, false, NULL);
    }
    if (ok)
        mca_tune_progress("  every GEMM result matches the host computation, %zu odd shapes "
                          "included",
                          ODD_SHAPE_COUNT);
    release_operands(&operands);
    return ok;
}

/* ------------------------------------------------------------------------------------ */
/* Choosing the switch point                                                             */
/* ------------------------------------------------------------------------------------ */

/* Returns the largest t with t^3 <= value. */
static size_t integer_cube_root(unsigned long long value)
{
    size_t root = (size_t)cbrt((double)value);
    while ((unsigned long long)(root + 1) * (root + 1) * (root + 1) <= value)
        root++;
    while (root > 0 && (unsigned long long)root * root * root > value)
        root--;
    return root;
}

/* Returns the XGEMM_MIN_INDIRECT_SIZE that minimizes the summed slowdown over the shapes,
 * where a shape's slowdown is its time with the chosen kernel over its time with the faster
 * one. Summing ratios, not seconds, keeps the largest shapes from deciding alone. */
static size_t best_switch_point(const gemm_shape_t shapes[], const double direct[],
                                const double indirect[])
{
    size_t best_value = ALWAYS_INDIRECT;
    double best_cost = INFINITY;
    unsigned long long largest = 0;
    for (size_t s = 0; s < TIMED_SHAPE_COUNT; s++)
        largest = shape_size(&shapes[s]) > largest ? shape_size(&shapes[s]) : largest;

    /* Candidates: the cube root of every shape's size, which sends that shape and larger
     * ones to Xgemm, and one above the largest shape, which sends every shape to
     * XgemmDirect. */
    for (size_t candidate = 0; candidate <= TIMED_SHAPE_COUNT; candidate++) {
        size_t value = candidate < TIMED_SHAPE_COUNT
                           ? integer_cube_root(shape_size(&shapes[candidate]))
                           : integer_cube_root(largest) + 1;
        unsigned long long threshold = (unsigned long long)value * value * value;
        double cost = 0.0;
        for (size_t s = 0; s < TIMED_SHAPE_COUNT; s++) {
            double chosen = shape_size(&shapes[s]) < threshold ? direct[s] : indirect[s];
            cost += chosen / fmin(direct[s], indirect[s]);
        }
        if (cost < best_cost) {
            best_cost = cost;
            best_value = value;
        }
    }
    mca_tune_progress("  XGEMM_MIN_INDIRECT_SIZE=%zu: GEMMs of fewer than %zu^3 multiply-adds "
                      "run XgemmDirect. With it the shapes take %.0f%% longer on average than "
                      "with the faster kernel for each",
                      best_value, best_value,
                      100.0 * (best_cost / TIMED_SHAPE_COUNT - 1.0));
    return best_value;
}

bool mca_tune_switch_point(mca_context_t *context, size_t *value, bool *runs_direct)
{
    gemm_shape_t shapes[TIMED_SHAPE_COUNT];
    double direct[TIMED_SHAPE_COUNT], indirect[TIMED_SHAPE_COUNT];
    list_timed_shapes(shapes);
    if (!run_shapes(context, shapes, direct, indirect))
        return false;

    *value = best_switch_point(shapes, direct, indirect);
    unsigned long long threshold = (unsigned long long)*value * *value * *value;
    *runs_direct = false;
    for (size_t s = 0; s < TIMED_SHAPE_COUNT; s++)
        *runs_direct = *runs_direct || shape_size(&shapes[s]) < threshold;
    return true;
}
