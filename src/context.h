/* Internal view of a context: the OpenCL objects, device limits, logging and the helpers
 * every module uses to create buffers and launch kernels. */
#ifndef MCA_CONTEXT_H
#define MCA_CONTEXT_H

#include <stdbool.h>

#include "error.h"
#include "fault.h"
#include "mca.h"

#define MCA_MAX_CACHED_KERNELS 32

typedef struct mca_cached_kernel {
    const char *name; /* static string from the caller */
    cl_kernel kernel;
} mca_cached_kernel_t;

struct mca_context {
    cl_platform_id platform;
    cl_device_id device;
    cl_context cl_context;
    cl_command_queue queue;
    cl_program program;
    char device_name[256];

    mca_log_fn log;
    void *log_user_data;
    mca_log_level_t log_level;

    /* Device limits, queried at creation. */
    size_t max_work_group_size;
    cl_ulong max_mem_alloc_size;
    cl_ulong global_mem_size;
    cl_ulong local_mem_size;
    /* CPUs run one work-item per work-group and per pair in the sampling kernels, where
     * GPUs need wide work-groups. */
    bool is_cpu;

    /* Work-group size for one-dimensional launches, from the device limits. Tests change it
     * to check that results do not depend on it. */
    size_t local_size;

    mca_cached_kernel_t kernels[MCA_MAX_CACHED_KERNELS];
    int kernel_count;
};

/* Sends a printf-style message to the context's log callback if `level` passes its
 * threshold. `context` may be NULL, which drops the message. */
void mca_log(const mca_context_t *context, mca_log_level_t level, const char *format, ...)
    MCA_PRINTF(3, 4);

/* As mca_error, and also logs the message at MCA_LOG_ERROR. Returns `status`. */
int mca_context_error(const mca_context_t *context, int status, const char *format, ...)
    MCA_PRINTF(3, 4);

/* Checks an OpenCL return code: on failure records "`what` failed: CL_..." and returns the
 * code unchanged, else returns CL_SUCCESS. */
int mca_check_cl(const mca_context_t *context, cl_int code, const char *what);

/* Returns the kernel `name` from the context's program, creating it on first use. The
 * kernel belongs to the context. */
int mca_context_kernel(mca_context_t *context, const char *name, cl_kernel *kernel);

/* Sets `count` kernel arguments given as (size_t size, const void *value) pairs, starting at
 * index 0. MCA_ARG(x) expands to such a pair. */
int mca_set_kernel_args(const mca_context_t *context, cl_kernel kernel, int count, ...);
#define MCA_ARG(x) sizeof(x), (const void *)&(x)
/* A __local kernel argument of `bytes` bytes, for mca_set_kernel_args. */
#define MCA_LOCAL_ARG(bytes) (size_t)(bytes), (const void *)NULL

/* Enqueues `kernel` over `dims` (1 or 2) dimensions. Each global size is rounded up to a
 * multiple of the work-group size, so kernels must guard their index against the real
 * size, which they receive as an argument. A global size of 0 enqueues nothing. */
int mca_launch(const mca_context_t *context, cl_kernel kernel, cl_uint dims,
               const size_t *global_size, cl_event *event);

/* Enqueues `group_count` work-groups of `group_size` work-items in one dimension, for
 * kernels that give each work-group one item of work. Take group_size from
 * mca_kernel_group_size, which also sizes the kernel's __local arguments. */
int mca_launch_groups(const mca_context_t *context, cl_kernel kernel, size_t group_count,
                      size_t group_size);

/* Stores in *group_size the work-group size that mca_launch uses for `kernel`. */
int mca_kernel_group_size(const mca_context_t *context, cl_kernel kernel, size_t *group_size);

/* Creates a device buffer of `bytes` (> 0) after checking the request against the
 * device's maximum allocation, naming `what` and both sizes in the error. `host` may be
 * NULL; otherwise its bytes are copied in (CL_MEM_COPY_HOST_PTR). */
int mca_buffer_create(const mca_context_t *context, size_t bytes, const void *host,
                      const char *what, cl_mem *buffer);

/* Releases a buffer if not NULL and sets it to NULL. */
void mca_buffer_release(cl_mem *buffer);

/* Grows a reusable workspace buffer to at least `bytes`, keeping nothing of its content.
 * *capacity tracks the current size in bytes. */
int mca_buffer_reserve(const mca_context_t *context, cl_mem *buffer, size_t *capacity,
                       size_t bytes, const char *what);

/* Blocking copies between host memory and a buffer, at a byte offset of the buffer. */
int mca_buffer_write(const mca_context_t *context, cl_mem buffer, size_t offset, size_t bytes,
                     const void *host);
int mca_buffer_read(const mca_context_t *context, cl_mem buffer, size_t offset, size_t bytes,
                    void *host);

/* Fills `bytes` of a buffer with zero bytes. */
int mca_buffer_zero(const mca_context_t *context, cl_mem buffer, size_t offset, size_t bytes);

#endif /* MCA_CONTEXT_H */
