/* Exact matrix products through CLBlast. */
#include "gemm.h"

#include <stdlib.h>
#include <threads.h>

#include <clblast_c.h>

/* CLBlast 1.5.3 races in its program cache when several threads call it (fixed in 1.6.1),
 * so every call in the process goes through this lock. */
static mtx_t clblast_lock;
static once_flag clblast_lock_once = ONCE_FLAG_INIT;

static void clblast_lock_init(void)
{
    mtx_init(&clblast_lock, mtx_plain);
}

void mca_clblast_lock(void)
{
    call_once(&clblast_lock_once, clblast_lock_init);
    mtx_lock(&clblast_lock);
}

void mca_clblast_unlock(void)
{
    mtx_unlock(&clblast_lock);
}

static CLBlastTranspose transpose_flag(bool transpose)
{
    return transpose ? CLBlastTransposeYes : CLBlastTransposeNo;
}

static int check_clblast(const mca_context_t *context, CLBlastStatusCode code, const char *what,
                         size_t m, size_t n, size_t k)
{
    if (code == CLBlastSuccess)
        return MCA_SUCCESS;
    return mca_context_error(context, code, "%s (m=%zu, n=%zu, k=%zu) failed: %s (%d)", what, m,
                             n, k, mca_status_string(code), (int)code);
}

int mca_gemm(const mca_context_t *context, bool transpose_a, bool transpose_b, size_t m,
             size_t n, size_t k, float alpha, mca_matrix_t a, mca_matrix_t b, float beta,
             mca_matrix_t c)
{
    if (m == 0 || n == 0)
        return MCA_SUCCESS;
    cl_command_queue queue = context->queue;
    mca_clblast_lock();
    CLBlastStatusCode code = CLBlastSgemm(
        CLBlastLayoutRowMajor, transpose_flag(transpose_a), transpose_flag(transpose_b), m, n, k,
        alpha, a.buffer, a.offset, a.ld, b.buffer, b.offset, b.ld, beta, c.buffer, c.offset, c.ld,
        &queue, NULL);
    mca_clblast_unlock();
    return check_clblast(context, code, "CLBlastSgemm", m, n, k);
}

int mca_gemm_batched(const mca_context_t *context, bool transpose_a, bool transpose_b,
                     size_t m, size_t n, size_t k, float alpha, mca_matrix_t a,
                     const size_t *a_offsets, mca_matrix_t b, const size_t *b_offsets,
                     float beta, mca_matrix_t c, const size_t *c_offsets, size_t count)
{
    if (m == 0 || n == 0 || count == 0)
        return MCA_SUCCESS;
    float *alphas = mca_malloc(2 * count * sizeof *alphas);
    if (alphas == NULL)
        return mca_context_error(context, MCA_ERROR_OUT_OF_HOST_MEMORY,
                                 "cannot allocate scalars for %zu batched products", count);
    float *betas = alphas + count;
    for (size_t i = 0; i < count; i++) {
        alphas[i] = alpha;
        betas[i] = beta;
    }
    cl_command_queue queue = context->queue;
    mca_clblast_lock();
    CLBlastStatusCode code = CLBlastSgemmBatched(
        CLBlastLayoutRowMajor, transpose_flag(transpose_a), transpose_flag(transpose_b), m, n, k,
        alphas, a.buffer, a_offsets, a.ld, b.buffer, b_offsets, b.ld, betas, c.buffer, c_offsets,
        c.ld, count, &queue, NULL);
    mca_clblast_unlock();
    free(alphas);
    return check_clblast(context, code, "CLBlastSgemmBatched", m, n, k);
}

int mca_linear(mca_context_t *context, cl_mem x, size_t rows, size_t in, cl_mem weight,
               cl_mem bias, size_t out, cl_mem y)
{
    mca_matrix_t a = {x, 0, in};
    mca_matrix_t b = {weight, 0, in};
    mca_matrix_t c = {y, 0, out};
    int status = mca_gemm(context, false, true, rows, out, in, 1.0f, a, b, 0.0f, c);
    if (status != MCA_SUCCESS || bias == NULL || rows == 0)
        return status;

    cl_kernel kernel = NULL;
    status = mca_context_kernel(context, "add_bias", &kernel);
    if (status != MCA_SUCCESS)
        return status;
    cl_uint row_count = (cl_uint)rows;
    cl_uint columns = (cl_uint)out;
    cl_uint ld = (cl_uint)out;
    cl_uint no_offset = 0;
    status = mca_set_kernel_args(context, kernel, 7, MCA_ARG(row_count), MCA_ARG(columns),
                                 MCA_ARG(ld), MCA_ARG(no_offset), MCA_ARG(no_offset),
                                 MCA_ARG(bias), MCA_ARG(y));
    if (status != MCA_SUCCESS)
        return status;
    size_t global[2] = {out, rows};
    return mca_launch(context, kernel, 2, global, NULL);
}
