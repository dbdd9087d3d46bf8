/*
 * Reader for the safetensors format of Hugging Face.
 *
 * A file is an 8-byte little-endian u64 header length N, N bytes of JSON, then the data
 * section. The JSON object maps each tensor name to {"dtype", "shape", "data_offsets"},
 * where the offsets [begin, end) count bytes from the start of the data section; an
 * optional "__metadata__" object maps strings to strings. Tensors are row-major and
 * little-endian.
 *
 * Opening validates the whole header: every entry's fields and types, and the byte size
 * product(shape) * dtype size against end - begin. The tensors must also tile the data
 * section back to back with no overlap, gap or trailing byte, as the reference
 * implementation (huggingface/safetensors) requires. Any violation is
 * MCA_ERROR_CORRUPT_FILE. Files whose dtypes cannot be converted still open, so that the
 * error names the tensor that is actually read.
 */
#ifndef MCA_SAFETENSORS_H
#define MCA_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

/* Largest rank that mca_safetensors_find and mca_safetensors_read_f32 report. Tensors of
 * higher rank may be in a file, which then still opens. */
#define MCA_SAFETENSORS_MAX_RANK 8

/* Largest JSON header accepted, the same limit as the reference implementation. */
#define MCA_SAFETENSORS_MAX_HEADER_BYTES 100000000u

typedef struct mca_safetensors mca_safetensors_t;

/* Reads the whole file at `path` into memory and validates its header. `path` is borrowed
 * and copied for error messages. Errors: MCA_ERROR_IO when the file cannot be opened or
 * read, MCA_ERROR_CORRUPT_FILE when its content is not a valid safetensors file. */
int mca_safetensors_open(const char *path, mca_safetensors_t **file);

/* As mca_safetensors_open, on a copy of `size` bytes at `bytes` (borrowed). `name` stands
 * for the file in error messages. */
int mca_safetensors_open_memory(const void *bytes, size_t size, const char *name,
                                mca_safetensors_t **file);

/* Releases the file and its copy of the data. Accepts NULL. */
void mca_safetensors_close(mca_safetensors_t *file);

/*
 * Looks up tensor `name`. On success *dtype is the dtype string of the file ("F32",
 * "F16", "BF16", ...), static and valid for the life of the process. *rank is 0 .. 8, and
 * shape[0 .. rank-1] receives the dimensions. Errors: MCA_ERROR_MISSING_TENSOR when the file
 * has no such tensor, MCA_ERROR_NOT_IMPLEMENTED when its rank exceeds
 * MCA_SAFETENSORS_MAX_RANK.
 */
int mca_safetensors_find(const mca_safetensors_t *file, const char *name, const char **dtype,
                         int *rank, int64_t shape[MCA_SAFETENSORS_MAX_RANK]);

/*
 * Converts tensor `name` to float32 into `out`, a caller-allocated array of
 * product(shape) floats. `shape` may be NULL when rank is 0. The tensor's rank and shape must equal
 * (rank, shape), else MCA_ERROR_SHAPE_MISMATCH. F32 is copied, F16 and BF16 are converted
 * exactly; any other dtype gives MCA_ERROR_UNSUPPORTED_DTYPE. `out` is written only on
 * success.
 */
int mca_safetensors_read_f32(const mca_safetensors_t *file, const char *name, int rank,
                             const int64_t *shape, float *out);

#endif /* MCA_SAFETENSORS_H */
