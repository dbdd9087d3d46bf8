/* Context: OpenCL platform, device, queue and program, device limits and logging. */
#include "context.h"
#include "tuning.h"

#include <CL/cl_ext.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The kernel files of cl/, embedded by tools/embed_kernels.py. */
extern const char *const mca_kernel_source_lines[];
extern const size_t mca_kernel_source_line_count;

/* OpenCL C 1.2 is what PoCL 3.1 offers; nothing newer is needed. */
static const char build_options[] = "-cl-std=CL1.2";

void mca_log(const mca_context_t *context, mca_log_level_t level, const char *format, ...)
{
    if (context == NULL || context->log == NULL || level < context->log_level)
        return;
    char message[2048];
    va_list args;
    va_start(args, format);
    vsnprintf(message, sizeof message, format, args);
    va_end(args);
    context->log(level, message, context->log_user_data);
}

int mca_context_error(const mca_context_t *context, int status, const char *format, ...)
{
    char message[1024];
    va_list args;
    va_start(args, format);
    vsnprintf(message, sizeof message, format, args);
    va_end(args);
    mca_error(status, "%s", message);
    mca_log(context, MCA_LOG_ERROR, "%s", message);
    return status;
}

int mca_check_cl(const mca_context_t *context, cl_int code, const char *what)
{
    if (code == CL_SUCCESS)
        return CL_SUCCESS;
    return mca_context_error(context, code, "%s failed: %s (%d)", what, mca_status_string(code),
                             code);
}

/* Parses a non-negative index from the environment variable `name`; unset gives 0. */
static int index_from_environment(const char *name, int *index)
{
    const char *text = getenv(name);
    if (text == NULL || text[0] == '\0') {
        *index = 0;
        return MCA_SUCCESS;
    }
    char *end = NULL;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || *end != '\0' || value < 0 || value > 1024)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "%s='%s' is not a valid index; set it to a number such as 0", name,
                         text);
    *index = (int)value;
    return MCA_SUCCESS;
}

static int resolve_index(int requested, const char *variable, int *index)
{
    if (requested >= 0) {
        *index = requested;
        return MCA_SUCCESS;
    }
    return index_from_environment(variable, index);
}

static int pick_device(mca_context_t *context, int platform_index, int device_index)
{
    cl_uint platform_count = 0;
    cl_int code = clGetPlatformIDs(0, NULL, &platform_count);
    if (code == CL_PLATFORM_NOT_FOUND_KHR || platform_count == 0)
        return mca_context_error(context, MCA_ERROR_NO_DEVICE,
                                 "no OpenCL platform found; install an OpenCL driver such as "
                                 "pocl-opencl-icd");
    if (code != CL_SUCCESS)
        return mca_check_cl(context, code, "clGetPlatformIDs");
    if ((cl_uint)platform_index >= platform_count)
        return mca_context_error(context, MCA_ERROR_NO_DEVICE,
                                 "OpenCL platform index %d is out of range: %u platform(s) "
                                 "found; pick an index below %u (clinfo -l lists them) in the "
                                 "options or MCA_PLATFORM",
                                 platform_index, platform_count, platform_count);

    cl_platform_id *platforms = mca_malloc(platform_count * sizeof *platforms);
    if (platforms == NULL)
        return mca_context_error(context, MCA_ERROR_OUT_OF_HOST_MEMORY,
                                 "cannot allocate the platform list");
    code = clGetPlatformIDs(platform_count, platforms, NULL);
    if (code == CL_SUCCESS)
        context->platform = platforms[platform_index];
    free(platforms);
    if (code != CL_SUCCESS)
        return mca_check_cl(context, code, "clGetPlatformIDs");

    cl_uint device_count = 0;
    code = clGetDeviceIDs(context->platform, CL_DEVICE_TYPE_ALL, 0, NULL, &device_count);
    if (code == CL_DEVICE_NOT_FOUND || (code == CL_SUCCESS && device_count == 0))
        return mca_context_error(context, MCA_ERROR_NO_DEVICE,
                                 "OpenCL platform %d has no devices", platform_index);
    if (code != CL_SUCCESS)
        return mca_check_cl(context, code, "clGetDeviceIDs");
    if ((cl_uint)device_index >= device_count)
        return mca_context_error(context, MCA_ERROR_NO_DEVICE,
                                 "OpenCL device index %d is out of range: platform %d has %u "
                                 "device(s); pick an index below %u (clinfo -l lists them) in "
                                 "the options or MCA_DEVICE",
                                 device_index, platform_index, device_count, device_count);

    cl_device_id *devices = mca_malloc(device_count * sizeof *devices);
    if (devices == NULL)
        return mca_context_error(context, MCA_ERROR_OUT_OF_HOST_MEMORY,
                                 "cannot allocate the device list");
    code = clGetDeviceIDs(context->platform, CL_DEVICE_TYPE_ALL, device_count, devices, NULL);
    if (code == CL_SUCCESS)
        context->device = devices[device_index];
    free(devices);
    return mca_check_cl(context, code, "clGetDeviceIDs");
}

static int query_device(mca_context_t *context)
{
    cl_device_id device = context->device;
    cl_int code = clGetDeviceInfo(device, CL_DEVICE_NAME, sizeof context->device_name - 1,
                                  context->device_name, NULL);
    if (code == CL_SUCCESS)
        code = clGetDeviceInfo(device, CL_DEVICE_MAX_WORK_GROUP_SIZE,
                               sizeof context->max_work_group_size,
                               &context->max_work_group_size, NULL);
    if (code == CL_SUCCESS)
        code = clGetDeviceInfo(device, CL_DEVICE_MAX_MEM_ALLOC_SIZE,
                               sizeof context->max_mem_alloc_size, &context->max_mem_alloc_size,
                               NULL);
    if (code == CL_SUCCESS)
        code = clGetDeviceInfo(device, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof context->global_mem_size,
                               &context->global_mem_size, NULL);
    if (code == CL_SUCCESS)
        code = clGetDeviceInfo(device, CL_DEVICE_LOCAL_MEM_SIZE, sizeof context->local_mem_size,
                               &context->local_mem_size, NULL);
    cl_device_type type = 0;
    if (code == CL_SUCCESS)
        code = clGetDeviceInfo(device, CL_DEVICE_TYPE, sizeof type, &type, NULL);
    context->is_cpu = (type & CL_DEVICE_TYPE_CPU) != 0;
    if (code != CL_SUCCESS)
        return mca_check_cl(context, code, "clGetDeviceInfo");

    /* 64 work-items keep a GPU's SIMD units full and cost PoCL nothing; smaller devices
     * get their maximum. */
    context->local_size = context->max_work_group_size < 64 ? context->max_work_group_size : 64;
    return MCA_SUCCESS;
}

static int build_program(mca_context_t *context)
{
    cl_int code = CL_SUCCESS;
    context->program = clCreateProgramWithSource(
        context->cl_context, (cl_uint)mca_kernel_source_line_count,
        (const char **)mca_kernel_source_lines, NULL, &code);
    if (code != CL_SUCCESS)
        return mca_check_cl(context, code, "clCreateProgramWithSource");

    code = clBuildProgram(context->program, 1, &context->device, build_options, NULL, NULL);
    if (code == CL_SUCCESS)
        return MCA_SUCCESS;

    /* Hand the compiler's log to the caller's log callback, which is the only place a
     * library may put it. */
    size_t log_size = 0;
    clGetProgramBuildInfo(context->program, context->device, CL_PROGRAM_BUILD_LOG, 0, NULL,
                          &log_size);
    char *build_log = log_size > 0 ? mca_malloc(log_size + 1) : NULL;
    if (build_log != NULL) {
        clGetProgramBuildInfo(context->program, context->device, CL_PROGRAM_BUILD_LOG, log_size,
                              build_log, NULL);
        build_log[log_size] = '\0';
        mca_log(context, MCA_LOG_ERROR, "OpenCL build log:\n%s", build_log);
        free(build_log);
    }
    return mca_context_error(context, MCA_ERROR_BUILD_FAILED,
                             "building the kernels for '%s' failed: %s (%d); the build log "
                             "went to the log callback",
                             context->device_name, mca_status_string(code), code);
}

void mca_context_options_init(mca_context_options_t *options)
{
    if (options == NULL)
        return;
    memset(options, 0, sizeof *options);
    options->platform_index = -1;
    options->device_index = -1;
    options->log_level = MCA_LOG_INFO;
}

static int context_allocate(const mca_context_options_t *options, mca_context_t **context)
{
    mca_context_options_t defaults;
    if (options == NULL) {
        mca_context_options_init(&defaults);
        options = &defaults;
    }
    if (options->log_level < MCA_LOG_DEBUG || options->log_level > MCA_LOG_ERROR)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "log level %d is invalid; use MCA_LOG_DEBUG .. MCA_LOG_ERROR",
                         (int)options->log_level);

    mca_context_t *created = mca_calloc(1, sizeof *created);
    if (created == NULL)
        return mca_error(MCA_ERROR_OUT_OF_HOST_MEMORY, "cannot allocate a context");
    created->log = options->log;
    created->log_user_data = options->log_user_data;
    created->log_level = options->log_level;
    *context = created;
    return MCA_SUCCESS;
}

/* Steps shared by both constructors once the device, OpenCL context and queue exist.
 * `options` may be NULL. */
static int context_finish(mca_context_t *context, const mca_context_options_t *options)
{
    int status = query_device(context);
    if (status == MCA_SUCCESS)
        status = build_program(context);
    if (status == MCA_SUCCESS)
        mca_log(context, MCA_LOG_INFO, "using OpenCL device '%s'", context->device_name);
    if (status == MCA_SUCCESS)
        status = mca_tuning_apply(context, options != NULL ? options->tuning_file : NULL);
    return status;
}

mca_status_t mca_context_create(const mca_context_options_t *options, mca_context_t **context)
{
    mca_error_clear();
    if (context == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT, "context output pointer is NULL");

    mca_context_t *created = NULL;
    int status = context_allocate(options, &created);
    if (status != MCA_SUCCESS)
        return status;

    int platform_index = 0;
    int device_index = 0;
    status = resolve_index(options != NULL ? options->platform_index : -1, "MCA_PLATFORM",
                           &platform_index);
    if (status == MCA_SUCCESS)
        status = resolve_index(options != NULL ? options->device_index : -1, "MCA_DEVICE",
                               &device_index);
    if (status == MCA_SUCCESS)
        status = pick_device(created, platform_index, device_index);
    if (status != MCA_SUCCESS)
        goto fail;

    cl_int code = CL_SUCCESS;
    cl_context_properties properties[] = {CL_CONTEXT_PLATFORM,
                                          (cl_context_properties)created->platform, 0};
    created->cl_context = clCreateContext(properties, 1, &created->device, NULL, NULL, &code);
    if ((status = mca_check_cl(created, code, "clCreateContext")) != CL_SUCCESS)
        goto fail;
    created->queue = clCreateCommandQueue(created->cl_context, created->device,
                                          CL_QUEUE_PROFILING_ENABLE, &code);
    if ((status = mca_check_cl(created, code, "clCreateCommandQueue")) != CL_SUCCESS)
        goto fail;
    if ((status = context_finish(created, options)) != MCA_SUCCESS)
        goto fail;
    *context = created;
    return MCA_SUCCESS;

fail:
    mca_context_destroy(created);
    return status;
}

mca_status_t mca_context_create_from_queue(cl_command_queue queue,
                                           const mca_context_options_t *options,
                                           mca_context_t **context)
{
    mca_error_clear();
    if (queue == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT, "command queue is NULL");
    if (context == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT, "context output pointer is NULL");

    cl_command_queue_properties properties = 0;
    cl_int code = clGetCommandQueueInfo(queue, CL_QUEUE_PROPERTIES, sizeof properties,
                                        &properties, NULL);
    if (code != CL_SUCCESS)
        return mca_error(code, "the command queue is not valid: %s (%d)",
                         mca_status_string(code), code);
    if (properties & CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "the command queue is out-of-order; the library needs an in-order "
                         "queue because CLBlast 1.5 takes no event wait lists");

    mca_context_t *created = NULL;
    int status = context_allocate(options, &created);
    if (status != MCA_SUCCESS)
        return status;

    code = clGetCommandQueueInfo(queue, CL_QUEUE_CONTEXT, sizeof created->cl_context,
                                 &created->cl_context, NULL);
    if (code == CL_SUCCESS)
        code = clGetCommandQueueInfo(queue, CL_QUEUE_DEVICE, sizeof created->device,
                                     &created->device, NULL);
    if (code == CL_SUCCESS)
        code = clGetDeviceInfo(created->device, CL_DEVICE_PLATFORM, sizeof created->platform,
                               &created->platform, NULL);
    if ((status = mca_check_cl(created, code, "clGetCommandQueueInfo")) != CL_SUCCESS) {
        created->cl_context = NULL;
        goto fail;
    }
    /* Retained here and released by mca_context_destroy like our own objects. */
    clRetainContext(created->cl_context);
    clRetainCommandQueue(queue);
    created->queue = queue;
    if ((status = context_finish(created, options)) != MCA_SUCCESS)
        goto fail;
    *context = created;
    return MCA_SUCCESS;

fail:
    mca_context_destroy(created);
    return status;
}

void mca_context_destroy(mca_context_t *context)
{
    if (context == NULL)
        return;
    /* A failed call can leave commands queued; PoCL crashed at exit when the process
     * released their kernels and program while they still ran. */
    if (context->queue != NULL)
        clFinish(context->queue);
    for (int i = 0; i < context->kernel_count; i++)
        clReleaseKernel(context->kernels[i].kernel);
    if (context->program != NULL)
        clReleaseProgram(context->program);
    if (context->queue != NULL)
        clReleaseCommandQueue(context->queue);
    if (context->cl_context != NULL)
        clReleaseContext(context->cl_context);
    free(context);
}

const char *mca_context_device_name(const mca_context_t *context)
{
    return context != NULL ? context->device_name : "";
}

cl_command_queue mca_context_queue(const mca_context_t *context)
{
    return context != NULL ? context->queue : NULL;
}

int mca_context_kernel(mca_context_t *context, const char *name, cl_kernel *kernel)
{
    for (int i = 0; i < context->kernel_count; i++) {
        if (strcmp(context->kernels[i].name, name) == 0) {
            *kernel = context->kernels[i].kernel;
            return MCA_SUCCESS;
        }
    }
    if (context->kernel_count == MCA_MAX_CACHED_KERNELS)
        return mca_context_error(context, MCA_ERROR_DEVICE_LIMIT,
                                 "kernel cache full (%d kernels) when creating '%s'; raise "
                                 "MCA_MAX_CACHED_KERNELS",
                                 MCA_MAX_CACHED_KERNELS, name);
    cl_int code = CL_SUCCESS;
    cl_kernel created = clCreateKernel(context->program, name, &code);
    if (code != CL_SUCCESS)
        return mca_context_error(context, code, "clCreateKernel('%s') failed: %s (%d)", name,
                                 mca_status_string(code), code);
    context->kernels[context->kernel_count].name = name;
    context->kernels[context->kernel_count].kernel = created;
    context->kernel_count++;
    *kernel = created;
    return MCA_SUCCESS;
}

int mca_set_kernel_args(const mca_context_t *context, cl_kernel kernel, int count, ...)
{
    va_list args;
    va_start(args, count);
    cl_int code = CL_SUCCESS;
    for (int i = 0; i < count && code == CL_SUCCESS; i++) {
        size_t size = va_arg(args, size_t);
        const void *value = va_arg(args, const void *);
        code = clSetKernelArg(kernel, (cl_uint)i, size, value);
        if (code != CL_SUCCESS)
            mca_context_error(context, code, "clSetKernelArg(%d) failed: %s (%d)", i,
                              mca_status_string(code), code);
    }
    va_end(args);
    return code;
}

int mca_launch(const mca_context_t *context, cl_kernel kernel, cl_uint dims,
               const size_t *global_size, cl_event *event)
{
    size_t global[2] = {0, 0};
    size_t local[2] = {1, 1};
    int status = mca_kernel_group_size(context, kernel, &local[0]);
    if (status != MCA_SUCCESS)
        return status;
    for (cl_uint d = 0; d < dims; d++) {
        if (global_size[d] == 0)
            return MCA_SUCCESS;
        global[d] = (global_size[d] + local[d] - 1) / local[d] * local[d];
    }
    cl_int code = clEnqueueNDRangeKernel(context->queue, kernel, dims, NULL, global, local, 0,
                                         NULL, event);
    return mca_check_cl(context, code, "clEnqueueNDRangeKernel");
}

int mca_kernel_group_size(const mca_context_t *context, cl_kernel kernel, size_t *group_size)
{
    size_t kernel_limit = 0;
    cl_int code = clGetKernelWorkGroupInfo(kernel, context->device, CL_KERNEL_WORK_GROUP_SIZE,
                                           sizeof kernel_limit, &kernel_limit, NULL);
    if (code != CL_SUCCESS)
        return mca_check_cl(context, code, "clGetKernelWorkGroupInfo");
    *group_size = context->local_size < kernel_limit ? context->local_size : kernel_limit;
    return MCA_SUCCESS;
}

int mca_launch_groups(const mca_context_t *context, cl_kernel kernel, size_t group_count,
                      size_t group_size)
{
    if (group_count == 0)
        return MCA_SUCCESS;
    size_t global = group_count * group_size;
    cl_int code = clEnqueueNDRangeKernel(context->queue, kernel, 1, NULL, &global, &group_size,
                                         0, NULL, NULL);
    return mca_check_cl(context, code, "clEnqueueNDRangeKernel");
}

int mca_buffer_create(const mca_context_t *context, size_t bytes, const void *host,
                      const char *what, cl_mem *buffer)
{
    if (bytes == 0)
        return mca_context_error(context, MCA_ERROR_INVALID_ARGUMENT,
                                 "cannot create an empty buffer for %s", what);
    if (bytes > context->max_mem_alloc_size)
        return mca_context_error(context, MCA_ERROR_DEVICE_LIMIT,
                                 "%s needs %zu bytes in one buffer, but the device allows at "
                                 "most %llu (CL_DEVICE_MAX_MEM_ALLOC_SIZE); use a smaller "
                                 "batch or fewer tokens",
                                 what, bytes, (unsigned long long)context->max_mem_alloc_size);
    cl_int code = CL_SUCCESS;
    cl_mem_flags flags = CL_MEM_READ_WRITE | (host != NULL ? CL_MEM_COPY_HOST_PTR : 0);
    cl_mem created = NULL;
    if (mca_fault_inject(MCA_FAULT_BUFFER_CREATION))
        code = CL_MEM_OBJECT_ALLOCATION_FAILURE; /* injected by a test */
    else
        created = clCreateBuffer(context->cl_context, flags, bytes, (void *)host, &code);
    if (code != CL_SUCCESS)
        return mca_context_error(context, code, "creating a %zu-byte buffer for %s failed: %s "
                                 "(%d)", bytes, what, mca_status_string(code), code);
    *buffer = created;
    return MCA_SUCCESS;
}

void mca_buffer_release(cl_mem *buffer)
{
    if (*buffer != NULL) {
        clReleaseMemObject(*buffer);
        *buffer = NULL;
    }
}

int mca_buffer_reserve(const mca_context_t *context, cl_mem *buffer, size_t *capacity,
                       size_t bytes, const char *what)
{
    if (*buffer != NULL && *capacity >= bytes)
        return MCA_SUCCESS;
    mca_buffer_release(buffer);
    *capacity = 0;
    int status = mca_buffer_create(context, bytes, NULL, what, buffer);
    if (status == MCA_SUCCESS)
        *capacity = bytes;
    return status;
}

int mca_buffer_write(const mca_context_t *context, cl_mem buffer, size_t offset, size_t bytes,
                     const void *host)
{
    if (bytes == 0)
        return MCA_SUCCESS;
    cl_int code = clEnqueueWriteBuffer(context->queue, buffer, CL_TRUE, offset, bytes, host, 0,
                                       NULL, NULL);
    return mca_check_cl(context, code, "clEnqueueWriteBuffer");
}

int mca_buffer_read(const mca_context_t *context, cl_mem buffer, size_t offset, size_t bytes,
                    void *host)
{
    if (bytes == 0)
        return MCA_SUCCESS;
    cl_int code = clEnqueueReadBuffer(context->queue, buffer, CL_TRUE, offset, bytes, host, 0,
                                      NULL, NULL);
    return mca_check_cl(context, code, "clEnqueueReadBuffer");
}

int mca_buffer_zero(const mca_context_t *context, cl_mem buffer, size_t offset, size_t bytes)
{
    if (bytes == 0)
        return MCA_SUCCESS;
    const cl_uchar zero = 0;
    cl_int code = clEnqueueFillBuffer(context->queue, buffer, &zero, sizeof zero, offset, bytes,
                                      0, NULL, NULL);
    return mca_check_cl(context, code, "clEnqueueFillBuffer");
}
