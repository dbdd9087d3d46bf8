/* Host side of the sampling kernels in cl/sampling.cl. */
#include "sampling.h"

#include <stdbool.h>
#include <string.h>

int mca_sampling_tables_create(mca_context_t *context, cl_mem weight, size_t weight_offset,
                               int hidden_size, int heads, mca_sampling_tables_t *tables)
{
    memset(tables, 0, sizeof *tables);
    tables->hidden_size = hidden_size;
    tables->heads = heads;
    size_t table_bytes = (size_t)hidden_size * (size_t)heads * sizeof(float);

    int status = mca_buffer_create(context, table_bytes, NULL, "column norms", &tables->norms);
    if (status == MCA_SUCCESS)
        status = mca_buffer_create(context, table_bytes, NULL, "sampling probabilities",
                                   &tables->probabilities);
    if (status == MCA_SUCCESS)
        status = mca_buffer_create(context, table_bytes, NULL, "sampling CDF", &tables->cdf);
    if (status == MCA_SUCCESS)
        status = mca_buffer_create(context, (size_t)heads * sizeof(float), NULL, "head norms",
                                   &tables->head_norms);
    tables->guide_size = 1;
    while (tables->guide_size < hidden_size)
        tables->guide_size *= 2;
    if (status == MCA_SUCCESS)
        status = mca_buffer_create(context,
                                   (size_t)tables->guide_size * (size_t)heads * sizeof(cl_uint),
                                   NULL, "CDF guide table", &tables->guide);
    if (status != MCA_SUCCESS)
        goto fail;

    cl_uint d = (cl_uint)hidden_size;
    cl_uint h = (cl_uint)heads;
    cl_uint offset = (cl_uint)weight_offset;
    cl_kernel norms_kernel = NULL;
    cl_kernel cdf_kernel = NULL;
    cl_kernel guide_kernel = NULL;
    if ((status = mca_context_kernel(context, "column_norms", &norms_kernel)) != MCA_SUCCESS ||
        (status = mca_context_kernel(context, "build_cdf", &cdf_kernel)) != MCA_SUCCESS ||
        (status = mca_context_kernel(context, "build_guide", &guide_kernel)) != MCA_SUCCESS)
        goto fail;

    status = mca_set_kernel_args(context, norms_kernel, 5, MCA_ARG(d), MCA_ARG(h),
                                 MCA_ARG(offset), MCA_ARG(weight), MCA_ARG(tables->norms));
    size_t norms_global[2] = {(size_t)hidden_size, (size_t)heads};
    if (status == MCA_SUCCESS)
        status = mca_launch(context, norms_kernel, 2, norms_global, NULL);
    if (status == MCA_SUCCESS)
        status = mca_set_kernel_args(context, cdf_kernel, 6, MCA_ARG(d), MCA_ARG(h),
                                     MCA_ARG(tables->norms), MCA_ARG(tables->probabilities),
                                     MCA_ARG(tables->cdf), MCA_ARG(tables->head_norms));
    size_t cdf_global = (size_t)heads;
    if (status == MCA_SUCCESS)
        status = mca_launch(context, cdf_kernel, 1, &cdf_global, NULL);
    cl_uint guide_size = (cl_uint)tables->guide_size;
    if (status == MCA_SUCCESS)
        status = mca_set_kernel_args(context, guide_kernel, 5, MCA_ARG(d), MCA_ARG(h),
                                     MCA_ARG(guide_size), MCA_ARG(tables->cdf),
                                     MCA_ARG(tables->guide));
    if (status == MCA_SUCCESS)
        status = mca_launch(context, guide_kernel, 1, &cdf_global, NULL);
    if (status == MCA_SUCCESS)
        status = mca_check_cl(context, clFinish(context->queue), "clFinish");
    if (status == MCA_SUCCESS)
        return MCA_SUCCESS;

fail:
    mca_sampling_tables_release(tables);
    return status;
}

void mca_sampling_tables_release(mca_sampling_tables_t *tables)
{
    mca_buffer_release(&tables->norms);
    mca_buffer_release(&tables->probabilities);
    mca_buffer_release(&tables->cdf);
    mca_buffer_release(&tables->head_norms);
    mca_buffer_release(&tables->guide);
}

int mca_sampling_draw(mca_context_t *context, const mca_sampling_tables_t *tables,
                      const mca_draw_request_t *request)
{
    if (request->pair_count == 0)
        return MCA_SUCCESS;
    cl_kernel kernel = NULL;
    int status = mca_context_kernel(context, "sample_columns", &kernel);
    if (status != MCA_SUCCESS)
        return status;

    /* Each work-group counts one pair's draws in local memory, one counter per column. */
    size_t group_size = 1;
    if (!context->is_cpu)
        status = mca_kernel_group_size(context, kernel, &group_size);
    if (status != MCA_SUCCESS)
        return status;
    size_t counts_bytes = (size_t)tables->hidden_size * sizeof(cl_uint);
    size_t starts_bytes = (group_size + 1) * sizeof(cl_uint);
    if (counts_bytes + starts_bytes > context->local_mem_size)
        return mca_context_error(context, MCA_ERROR_DEVICE_LIMIT,
                                 "sampling needs %zu bytes of local memory for hidden size %d, "
                                 "but the device has %llu; use exact mode on this device",
                                 counts_bytes + starts_bytes, tables->hidden_size,
                                 (unsigned long long)context->local_mem_size);

    cl_uint hidden_size = (cl_uint)tables->hidden_size;
    cl_uint seed_low = (cl_uint)(request->seed & 0xffffffffu);
    cl_uint seed_high = (cl_uint)(request->seed >> 32);
    cl_uint guide_size = (cl_uint)tables->guide_size;
    status = mca_set_kernel_args(
        context, kernel, 19, MCA_ARG(request->pair_count), MCA_ARG(request->tokens),
        MCA_ARG(hidden_size), MCA_ARG(seed_low), MCA_ARG(seed_high), MCA_ARG(request->layer),
        MCA_ARG(request->first_sequence), MCA_ARG(request->pairs), MCA_ARG(request->hidden),
        MCA_ARG(tables->cdf), MCA_ARG(tables->probabilities), MCA_ARG(tables->head_norms),
        MCA_ARG(tables->guide), MCA_ARG(guide_size), MCA_ARG(request->columns),
        MCA_ARG(request->weights), MCA_ARG(request->distinct), MCA_LOCAL_ARG(counts_bytes),
        MCA_LOCAL_ARG(starts_bytes));
    if (status != MCA_SUCCESS)
        return status;
    return mca_launch_groups(context, kernel, request->pair_count, group_size);
}

int mca_sampling_accumulate(mca_context_t *context, const mca_sampling_tables_t *tables,
                            const mca_draw_request_t *request, cl_mem weight_transposed,
                            cl_mem bias, size_t ld, size_t value_offset, cl_mem values)
{
    if (request->pair_count == 0)
        return MCA_SUCCESS;
    cl_kernel kernel = NULL;
    /* CPUs vectorize the by-pair kernel's loop over a head's outputs; GPUs spread those
     * outputs over work-items. */
    bool by_pair = context->is_cpu;
    int status = mca_context_kernel(context,
                                    by_pair ? "accumulate_samples_by_pair" : "accumulate_samples",
                                    &kernel);
    if (status != MCA_SUCCESS)
        return status;

    cl_uint hidden_size = (cl_uint)tables->hidden_size;
    cl_uint head_width = (cl_uint)(tables->hidden_size / tables->heads);
    cl_uint row_stride = (cl_uint)ld;
    cl_uint offset = (cl_uint)value_offset;
    status = mca_set_kernel_args(context, kernel, 12, MCA_ARG(request->pair_count),
                                 MCA_ARG(hidden_size), MCA_ARG(head_width), MCA_ARG(row_stride),
                                 MCA_ARG(offset), MCA_ARG(request->pairs),
                                 MCA_ARG(request->distinct), MCA_ARG(request->columns),
                                 MCA_ARG(request->weights), MCA_ARG(weight_transposed),
                                 MCA_ARG(bias), MCA_ARG(values));
    if (status != MCA_SUCCESS)
        return status;
    size_t global[2] = {head_width, request->pair_count};
    if (by_pair)
        return mca_launch(context, kernel, 1, &global[1], NULL);
    return mca_launch(context, kernel, 2, global, NULL);
}

int mca_sampling_published(mca_context_t *context, const mca_sampling_tables_t *tables,
                           const mca_draw_request_t *request, cl_mem weight,
                           size_t weight_offset, cl_mem bias, size_t ld, size_t value_offset,
                           cl_mem values)
{
    if (request->pair_count == 0)
        return MCA_SUCCESS;
    cl_kernel kernel = NULL;
    int status = mca_context_kernel(context, "published_sample_accumulate", &kernel);
    if (status != MCA_SUCCESS)
        return status;

    cl_uint hidden_size = (cl_uint)tables->hidden_size;
    cl_uint head_width = (cl_uint)(tables->hidden_size / tables->heads);
    cl_uint seed_low = (cl_uint)(request->seed & 0xffffffffu);
    cl_uint seed_high = (cl_uint)(request->seed >> 32);
    cl_uint row_stride = (cl_uint)ld;
    cl_uint offset = (cl_uint)value_offset;
    cl_uint first_weight = (cl_uint)weight_offset;
    status = mca_set_kernel_args(
        context, kernel, 19, MCA_ARG(request->pair_count), MCA_ARG(request->tokens),
        MCA_ARG(hidden_size), MCA_ARG(head_width), MCA_ARG(seed_low), MCA_ARG(seed_high),
        MCA_ARG(request->layer), MCA_ARG(request->first_sequence), MCA_ARG(row_stride),
        MCA_ARG(offset), MCA_ARG(first_weight), MCA_ARG(request->pairs),
        MCA_ARG(request->hidden), MCA_ARG(tables->cdf), MCA_ARG(tables->probabilities),
        MCA_ARG(tables->head_norms), MCA_ARG(weight), MCA_ARG(bias), MCA_ARG(values));
    if (status != MCA_SUCCESS)
        return status;
    size_t global = request->pair_count;
    return mca_launch(context, kernel, 1, &global, NULL);
}
