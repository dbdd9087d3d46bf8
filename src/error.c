/* Status names and the thread-local last-error message. */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>

#define CL_TARGET_OPENCL_VERSION 120
#include <clblast_c.h>

static _Thread_local char last_error[1024];

int mca_error(int status, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(last_error, sizeof last_error, format, args);
    va_end(args);
    return status;
}

void mca_error_clear(void)
{
    last_error[0] = '\0';
}

const char *mca_last_error(void)
{
    return last_error;
}

static const char *library_status_string(int status)
{
    switch (status) {
    case MCA_SUCCESS: return "success";
    case MCA_ERROR_INVALID_ARGUMENT: return "invalid argument";
    case MCA_ERROR_OUT_OF_HOST_MEMORY: return "out of host memory";
    case MCA_ERROR_NO_DEVICE: return "no OpenCL device";
    case MCA_ERROR_BUILD_FAILED: return "OpenCL program build failed";
    case MCA_ERROR_IO: return "file input/output failed";
    case MCA_ERROR_CORRUPT_FILE: return "corrupt or truncated file";
    case MCA_ERROR_MISSING_TENSOR: return "missing tensor";
    case MCA_ERROR_UNSUPPORTED_DTYPE: return "unsupported tensor dtype";
    case MCA_ERROR_SHAPE_MISMATCH: return "tensor shape mismatch";
    case MCA_ERROR_INVALID_CONFIG: return "invalid model configuration";
    case MCA_ERROR_INPUT_TOO_LONG: return "input too long";
    case MCA_ERROR_NOT_IMPLEMENTED: return "not implemented";
    case MCA_ERROR_DEVICE_LIMIT: return "request exceeds a device limit";
    case MCA_ERROR_INVALID_TEXT: return "invalid UTF-8 text";
    default: return NULL;
    }
}

static const char *opencl_status_string(int status)
{
    switch (status) {
    case CL_DEVICE_NOT_FOUND: return "CL_DEVICE_NOT_FOUND";
    case CL_DEVICE_NOT_AVAILABLE: return "CL_DEVICE_NOT_AVAILABLE";
    case CL_COMPILER_NOT_AVAILABLE: return "CL_COMPILER_NOT_AVAILABLE";
    case CL_MEM_OBJECT_ALLOCATION_FAILURE: return "CL_MEM_OBJECT_ALLOCATION_FAILURE";
    case CL_OUT_OF_RESOURCES: return "CL_OUT_OF_RESOURCES";
    case CL_OUT_OF_HOST_MEMORY: return "CL_OUT_OF_HOST_MEMORY";
    case CL_PROFILING_INFO_NOT_AVAILABLE: return "CL_PROFILING_INFO_NOT_AVAILABLE";
    case CL_MEM_COPY_OVERLAP: return "CL_MEM_COPY_OVERLAP";
    case CL_IMAGE_FORMAT_MISMATCH: return "CL_IMAGE_FORMAT_MISMATCH";
    case CL_IMAGE_FORMAT_NOT_SUPPORTED: return "CL_IMAGE_FORMAT_NOT_SUPPORTED";
    case CL_BUILD_PROGRAM_FAILURE: return "CL_BUILD_PROGRAM_FAILURE";
    case CL_MAP_FAILURE: return "CL_MAP_FAILURE";
    case CL_MISALIGNED_SUB_BUFFER_OFFSET: return "CL_MISALIGNED_SUB_BUFFER_OFFSET";
    case CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST:
        return "CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST";
    case CL_COMPILE_PROGRAM_FAILURE: return "CL_COMPILE_PROGRAM_FAILURE";
    case CL_LINKER_NOT_AVAILABLE: return "CL_LINKER_NOT_AVAILABLE";
    case CL_LINK_PROGRAM_FAILURE: return "CL_LINK_PROGRAM_FAILURE";
    case CL_DEVICE_PARTITION_FAILED: return "CL_DEVICE_PARTITION_FAILED";
    case CL_KERNEL_ARG_INFO_NOT_AVAILABLE: return "CL_KERNEL_ARG_INFO_NOT_AVAILABLE";
    case CL_INVALID_VALUE: return "CL_INVALID_VALUE";
    case CL_INVALID_DEVICE_TYPE: return "CL_INVALID_DEVICE_TYPE";
    case CL_INVALID_PLATFORM: return "CL_INVALID_PLATFORM";
    case CL_INVALID_DEVICE: return "CL_INVALID_DEVICE";
    case CL_INVALID_CONTEXT: return "CL_INVALID_CONTEXT";
    case CL_INVALID_QUEUE_PROPERTIES: return "CL_INVALID_QUEUE_PROPERTIES";
    case CL_INVALID_COMMAND_QUEUE: return "CL_INVALID_COMMAND_QUEUE";
    case CL_INVALID_HOST_PTR: return "CL_INVALID_HOST_PTR";
    case CL_INVALID_MEM_OBJECT: return "CL_INVALID_MEM_OBJECT";
    case CL_INVALID_IMAGE_FORMAT_DESCRIPTOR: return "CL_INVALID_IMAGE_FORMAT_DESCRIPTOR";
    case CL_INVALID_IMAGE_SIZE: return "CL_INVALID_IMAGE_SIZE";
    case CL_INVALID_SAMPLER: return "CL_INVALID_SAMPLER";
    case CL_INVALID_BINARY: return "CL_INVALID_BINARY";
    case CL_INVALID_BUILD_OPTIONS: return "CL_INVALID_BUILD_OPTIONS";
    case CL_INVALID_PROGRAM: return "CL_INVALID_PROGRAM";
    case CL_INVALID_PROGRAM_EXECUTABLE: return "CL_INVALID_PROGRAM_EXECUTABLE";
    case CL_INVALID_KERNEL_NAME: return "CL_INVALID_KERNEL_NAME";
    case CL_INVALID_KERNEL_DEFINITION: return "CL_INVALID_KERNEL_DEFINITION";
    case CL_INVALID_KERNEL: return "CL_INVALID_KERNEL";
    case CL_INVALID_ARG_INDEX: return "CL_INVALID_ARG_INDEX";
    case CL_INVALID_ARG_VALUE: return "CL_INVALID_ARG_VALUE";
    case CL_INVALID_ARG_SIZE: return "CL_INVALID_ARG_SIZE";
    case CL_INVALID_KERNEL_ARGS: return "CL_INVALID_KERNEL_ARGS";
    case CL_INVALID_WORK_DIMENSION: return "CL_INVALID_WORK_DIMENSION";
    case CL_INVALID_WORK_GROUP_SIZE: return "CL_INVALID_WORK_GROUP_SIZE";
    case CL_INVALID_WORK_ITEM_SIZE: return "CL_INVALID_WORK_ITEM_SIZE";
    case CL_INVALID_GLOBAL_OFFSET: return "CL_INVALID_GLOBAL_OFFSET";
    case CL_INVALID_EVENT_WAIT_LIST: return "CL_INVALID_EVENT_WAIT_LIST";
    case CL_INVALID_EVENT: return "CL_INVALID_EVENT";
    case CL_INVALID_OPERATION: return "CL_INVALID_OPERATION";
    case CL_INVALID_GL_OBJECT: return "CL_INVALID_GL_OBJECT";
    case CL_INVALID_BUFFER_SIZE: return "CL_INVALID_BUFFER_SIZE";
    case CL_INVALID_MIP_LEVEL: return "CL_INVALID_MIP_LEVEL";
    case CL_INVALID_GLOBAL_WORK_SIZE: return "CL_INVALID_GLOBAL_WORK_SIZE";
    case CL_INVALID_PROPERTY: return "CL_INVALID_PROPERTY";
    case CL_INVALID_IMAGE_DESCRIPTOR: return "CL_INVALID_IMAGE_DESCRIPTOR";
    case CL_INVALID_COMPILER_OPTIONS: return "CL_INVALID_COMPILER_OPTIONS";
    case CL_INVALID_LINKER_OPTIONS: return "CL_INVALID_LINKER_OPTIONS";
    case CL_INVALID_DEVICE_PARTITION_COUNT: return "CL_INVALID_DEVICE_PARTITION_COUNT";
    default: return NULL;
    }
}

/* CLBlast 1.5 has no status-to-string function, so its own range is named here. Its codes
 * above -1000 equal OpenCL's and are named by opencl_status_string. */
static const char *clblast_status_string(int status)
{
    switch (status) {
    case CLBlastNotImplemented: return "CLBlast: routine not implemented";
    case CLBlastInvalidMatrixA: return "CLBlast: matrix A is not a valid buffer";
    case CLBlastInvalidMatrixB: return "CLBlast: matrix B is not a valid buffer";
    case CLBlastInvalidMatrixC: return "CLBlast: matrix C is not a valid buffer";
    case CLBlastInvalidVectorX: return "CLBlast: vector X is not a valid buffer";
    case CLBlastInvalidVectorY: return "CLBlast: vector Y is not a valid buffer";
    case CLBlastInvalidDimension: return "CLBlast: M, N and K must be positive";
    case CLBlastInvalidLeadDimA: return "CLBlast: leading dimension of A too small";
    case CLBlastInvalidLeadDimB: return "CLBlast: leading dimension of B too small";
    case CLBlastInvalidLeadDimC: return "CLBlast: leading dimension of C too small";
    case CLBlastInvalidIncrementX: return "CLBlast: increment of X is zero";
    case CLBlastInvalidIncrementY: return "CLBlast: increment of Y is zero";
    case CLBlastInsufficientMemoryA: return "CLBlast: buffer of A too small";
    case CLBlastInsufficientMemoryB: return "CLBlast: buffer of B too small";
    case CLBlastInsufficientMemoryC: return "CLBlast: buffer of C too small";
    case CLBlastInsufficientMemoryX: return "CLBlast: buffer of X too small";
    case CLBlastInsufficientMemoryY: return "CLBlast: buffer of Y too small";
    case CLBlastInsufficientMemoryTemp: return "CLBlast: temporary GEMM buffer too small";
    case CLBlastInvalidBatchCount: return "CLBlast: batch count must be positive";
    case CLBlastInvalidOverrideKernel: return "CLBlast: invalid kernel for parameter override";
    case CLBlastMissingOverrideParameter: return "CLBlast: missing override parameter";
    case CLBlastInvalidLocalMemUsage: return "CLBlast: not enough local memory on the device";
    case CLBlastNoHalfPrecision: return "CLBlast: device has no half precision";
    case CLBlastNoDoublePrecision: return "CLBlast: device has no double precision";
    case CLBlastInvalidVectorScalar: return "CLBlast: scalar is not a valid buffer";
    case CLBlastInsufficientMemoryScalar: return "CLBlast: buffer of the scalar too small";
    case CLBlastDatabaseError: return "CLBlast: device not found in the parameter database";
    case CLBlastUnknownError: return "CLBlast: unknown error";
    case CLBlastUnexpectedError: return "CLBlast: unexpected error";
    default: return NULL;
    }
}

const char *mca_status_string(int status)
{
    const char *name = library_status_string(status);
    if (name == NULL)
        name = opencl_status_string(status);
    if (name == NULL)
        name = clblast_status_string(status);
    return name != NULL ? name : "unknown status";
}
