/* Reader for safetensors files: header validation and conversion to float32. */
#include "safetensors.h"

#include "error.h"
#include "fault.h"
#include "json.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Length of the little-endian u64 that opens every file. */
#define LENGTH_FIELD_BYTES 8u

/* Largest integer that a JSON number parsed as a double represents exactly. */
#define MAX_EXACT_INTEGER 9007199254740992.0 /* 2^53 */

/* Largest read(2) request, below the 2^31 - 4096 bytes Linux transfers per call. */
#define MAX_READ_CHUNK ((size_t)1 << 30)

typedef struct dtype_info {
    const char *name;
    unsigned bits; /* per element */
} dtype_info_t;

/* The dtypes of the safetensors format, including the FP8, FP6, FP4 and C64 types of recent
 * releases. NOTE: the sizes of F4 and F6_* assume elements packed without padding, which
 * has not been checked against a file written by the reference implementation. */
static const dtype_info_t dtype_table[] = {
    {"BOOL", 8},     {"U8", 8},          {"I8", 8},          {"F8_E5M2", 8},
    {"F8_E4M3", 8},  {"F8_E8M0", 8},     {"F8_E4M3FNUZ", 8}, {"F8_E5M2FNUZ", 8},
    {"F4", 4},       {"F6_E2M3", 6},     {"F6_E3M2", 6},     {"I16", 16},
    {"U16", 16},     {"F16", 16},        {"BF16", 16},       {"I32", 32},
    {"U32", 32},     {"F32", 32},        {"F64", 64},        {"I64", 64},
    {"U64", 64},     {"C64", 64},
};

typedef struct tensor_entry {
    char *name;
    const dtype_info_t *dtype;
    int rank;
    int64_t *shape; /* rank dimensions, NULL when rank is 0 */
    uint64_t element_count;
    uint64_t begin, end; /* byte offsets into the data section */
} tensor_entry_t;

struct mca_safetensors {
    char *name;                 /* path or caller's name, for messages */
    unsigned char *bytes;       /* the whole file */
    size_t size;
    const unsigned char *data;  /* data section, inside bytes */
    size_t data_size;
    tensor_entry_t *tensors;    /* sorted by name once the header is validated */
    size_t tensor_count;
};

/* ------------------------------------------------------------------------------------ */
/* Helpers                                                                              */
/* ------------------------------------------------------------------------------------ */

static uint64_t load_u64_le(const unsigned char *p)
{
    uint64_t value = 0;
    for (int i = 7; i >= 0; i--)
        value = (value << 8) | p[i];
    return value;
}

static uint32_t load_u32_le(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static uint16_t load_u16_le(const unsigned char *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static float float_from_bits(uint32_t bits)
{
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

/* Converts IEEE 754 binary16 to binary32. Every binary16 value is exact in binary32. */
static float half_to_float(uint16_t half)
{
    uint32_t sign = (uint32_t)(half & 0x8000u) << 16;
    uint32_t exponent = (half >> 10) & 0x1fu;
    uint32_t mantissa = half & 0x3ffu;

    if (exponent == 0x1f) /* infinity, or NaN with its payload and quiet bit kept */
        return float_from_bits(sign | 0x7f800000u | (mantissa << 13));
    if (exponent != 0) /* normal: rebias the exponent from 15 to 127 */
        return float_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
    if (mantissa == 0)
        return float_from_bits(sign);

    /* Subnormal: mantissa * 2^-24, which is a normal binary32 number. */
    float magnitude = ldexpf((float)mantissa, -24);
    return sign != 0 ? -magnitude : magnitude;
}

/* bfloat16 is the upper half of a binary32. */
static float bfloat16_to_float(uint16_t value)
{
    return float_from_bits((uint32_t)value << 16);
}

static const dtype_info_t *find_dtype(const char *name)
{
    for (size_t i = 0; i < sizeof dtype_table / sizeof dtype_table[0]; i++) {
        if (strcmp(dtype_table[i].name, name) == 0)
            return &dtype_table[i];
    }
    return NULL;
}

/* Writes "[d0, d1, ...]" into buffer, ending in "...]" when it does not fit. */
static const char *format_shape(char *buffer, size_t size, int rank, const int64_t *shape)
{
    size_t used = (size_t)snprintf(buffer, size, "[");
    for (int i = 0; i < rank && used < size; i++)
        used += (size_t)snprintf(buffer + used, size - used, "%s%" PRId64, i > 0 ? ", " : "",
                                 shape[i]);
    if (used < size)
        used += (size_t)snprintf(buffer + used, size - used, "]");
    if (used >= size && size >= 5)
        memcpy(buffer + size - 5, "...]", 5);
    return buffer;
}

/* Returns the member `key` of `object`, or NULL if absent. A key given twice is reported
 * through *duplicate, because JSON parsers disagree on which of the two values wins. */
static const cJSON *find_member(const cJSON *object, const char *key, bool *duplicate)
{
    const cJSON *found = NULL;
    const cJSON *item;

    *duplicate = false;
    cJSON_ArrayForEach(item, object) {
        if (item->string == NULL || strcmp(item->string, key) != 0)
            continue;
        if (found != NULL)
            *duplicate = true;
        else
            found = item;
    }
    return found;
}

/* Converts a JSON number that is a non-negative integer of at most 2^53, and returns false
 * for anything else. */
static bool json_to_u64(const cJSON *item, uint64_t *value)
{
    if (!cJSON_IsNumber(item))
        return false;
    double number = item->valuedouble;
    if (!(number >= 0.0 && number <= MAX_EXACT_INTEGER) || number != floor(number))
        return false;
    *value = (uint64_t)number;
    return true;
}

static void free_tensors(tensor_entry_t *tensors, size_t count)
{
    if (tensors == NULL)
        return;
    for (size_t i = 0; i < count; i++) {
        free(tensors[i].name);
        free(tensors[i].shape);
    }
    free(tensors);
}

/* ------------------------------------------------------------------------------------ */
/* Header parsing                                                                       */
/* ------------------------------------------------------------------------------------ */

/* Parses the "shape" array of tensor `entry->name` and computes its element count. */
static int parse_shape(const char *file_name, const cJSON *shape_item, tensor_entry_t *entry)
{
    int rank = cJSON_GetArraySize(shape_item);
    bool overflow = false;
    bool has_zero = false;
    uint64_t count = 1;

    if (rank > 0) {
        entry->shape = mca_malloc((size_t)rank * sizeof *entry->shape);
        if (entry->shape == NULL)
            return mca_error(MCA_ERROR_OUT_OF_HOST_MEMORY,
                             "out of host memory for the shape of tensor '%s' (rank %d) in "
                             "safetensors file '%s'", entry->name, rank, file_name);
    }
    entry->rank = rank;

    int index = 0;
    const cJSON *dimension_item;
    cJSON_ArrayForEach(dimension_item, shape_item) {
        uint64_t dimension;
        if (!json_to_u64(dimension_item, &dimension))
            return mca_error(MCA_ERROR_CORRUPT_FILE,
                             "tensor '%s' in safetensors file '%s' has shape entry %d that is "
                             "not an integer in 0 .. 2^53", entry->name, file_name, index);
        entry->shape[index++] = (int64_t)dimension;

        if (dimension == 0)
            has_zero = true;
        else if (count > UINT64_MAX / dimension)
            overflow = true;
        else
            count *= dimension;
    }

    /* A zero dimension makes the tensor empty however large the other dimensions are. */
    if (has_zero) {
        count = 0;
        overflow = false;
    }
    if (overflow || count > UINT64_MAX / entry->dtype->bits) {
        char shape_text[256];
        return mca_error(MCA_ERROR_CORRUPT_FILE,
                         "tensor '%s' in safetensors file '%s' has shape %s, whose size in "
                         "bytes overflows 64 bits", entry->name, file_name,
                         format_shape(shape_text, sizeof shape_text, rank, entry->shape));
    }
    entry->element_count = count;
    return MCA_SUCCESS;
}

/* Parses "data_offsets" and checks them against the shape, the dtype and the data size. */
static int parse_offsets(const mca_safetensors_t *file, const cJSON *offsets_item,
                         tensor_entry_t *entry)
{
    if (!cJSON_IsArray(offsets_item) || cJSON_GetArraySize(offsets_item) != 2 ||
        !json_to_u64(cJSON_GetArrayItem(offsets_item, 0), &entry->begin) ||
        !json_to_u64(cJSON_GetArrayItem(offsets_item, 1), &entry->end))
        return mca_error(MCA_ERROR_CORRUPT_FILE,
                         "tensor '%s' in safetensors file '%s' has \"data_offsets\" that is not "
                         "an array of two integers in 0 .. 2^53", entry->name, file->name);

    if (entry->end < entry->begin)
        return mca_error(MCA_ERROR_CORRUPT_FILE,
                         "tensor '%s' in safetensors file '%s' has data_offsets [%" PRIu64
                         ", %" PRIu64 "], whose end is before its begin", entry->name,
                         file->name, entry->begin, entry->end);
    if (entry->end > file->data_size)
        return mca_error(MCA_ERROR_CORRUPT_FILE,
                         "tensor '%s' in safetensors file '%s' has data_offsets [%" PRIu64
                         ", %" PRIu64 "] beyond the %zu-byte data section; the file is "
                         "truncated or its header is wrong", entry->name, file->name,
                         entry->begin, entry->end, file->data_size);

    char shape_text[256];
    uint64_t bits = entry->element_count * entry->dtype->bits;
    uint64_t span = entry->end - entry->begin;
    if (bits % 8 != 0)
        return mca_error(MCA_ERROR_CORRUPT_FILE,
                         "tensor '%s' in safetensors file '%s' has shape %s and dtype %s, "
                         "whose %" PRIu64 " bits are not a whole number of bytes", entry->name,
                         file->name,
                         format_shape(shape_text, sizeof shape_text, entry->rank, entry->shape),
                         entry->dtype->name, bits);
    if (bits / 8 != span)
        return mca_error(MCA_ERROR_CORRUPT_FILE,
                         "tensor '%s' in safetensors file '%s' has shape %s and dtype %s, "
                         "which need %" PRIu64 " bytes, but data_offsets [%" PRIu64 ", %" PRIu64
                         "] span %" PRIu64 " bytes", entry->name, file->name,
                         format_shape(shape_text, sizeof shape_text, entry->rank, entry->shape),
                         entry->dtype->name, bits / 8, entry->begin, entry->end, span);
    return MCA_SUCCESS;
}

/* Parses one header member {"dtype", "shape", "data_offsets"} into `entry`. */
static int parse_entry(const mca_safetensors_t *file, const cJSON *item, tensor_entry_t *entry)
{
    bool duplicate;

    entry->name = mca_strdup(item->string);
    if (entry->name == NULL)
        return mca_error(MCA_ERROR_OUT_OF_HOST_MEMORY,
                         "out of host memory for a tensor name in safetensors file '%s'",
                         file->name);
    if (!cJSON_IsObject(item))
        return mca_error(MCA_ERROR_CORRUPT_FILE,
                         "entry '%s' in the header of safetensors file '%s' is not a JSON "
                         "object", entry->name, file->name);

    const cJSON *dtype_item = find_member(item, "dtype", &duplicate);
    if (!cJSON_IsString(dtype_item) || duplicate)
        return mca_error(MCA_ERROR_CORRUPT_FILE,
                         "tensor '%s' in safetensors file '%s' needs exactly one \"dtype\" "
                         "string", entry->name, file->name);
    entry->dtype = find_dtype(dtype_item->valuestring);
    if (entry->dtype == NULL)
        return mca_error(MCA_ERROR_CORRUPT_FILE,
                         "tensor '%s' in safetensors file '%s' has unknown dtype '%s'",
                         entry->name, file->name, dtype_item->valuestring);

    const cJSON *shape_item = find_member(item, "shape", &duplicate);
    if (!cJSON_IsArray(shape_item) || duplicate)
        return mca_error(MCA_ERROR_CORRUPT_FILE,
                         "tensor '%s' in safetensors file '%s' needs exactly one \"shape\" "
                         "array", entry->name, file->name);
    int status = parse_shape(file->name, shape_item, entry);
    if (status != MCA_SUCCESS)
        return status;

    const cJSON *offsets_item = find_member(item, "data_offsets", &duplicate);
    if (offsets_item == NULL || duplicate)
        return mca_error(MCA_ERROR_CORRUPT_FILE,
                         "tensor '%s' in safetensors file '%s' needs exactly one "
                         "\"data_offsets\" array", entry->name, file->name);
    return parse_offsets(file, offsets_item, entry);
}

/* The reference reader accepts null for "__metadata__" as well as an object of strings. */
static int check_metadata(const mca_safetensors_t *file, const cJSON *metadata)
{
    const cJSON *item;

    if (cJSON_IsNull(metadata))
        return MCA_SUCCESS;
    if (!cJSON_IsObject(metadata))
        return mca_error(MCA_ERROR_CORRUPT_FILE,
                         "\"__metadata__\" in safetensors file '%s' is not a JSON object",
                         file->name);
    cJSON_ArrayForEach(item, metadata) {
        if (!cJSON_IsString(item))
            return mca_error(MCA_ERROR_CORRUPT_FILE,
                             "\"__metadata__\" key '%s' in safetensors file '%s' has a value "
                             "that is not a string", item->string, file->name);
    }
    return MCA_SUCCESS;
}

static int compare_offsets(const void *left, const void *right)
{
    const tensor_entry_t *a = left, *b = right;
    if (a->begin != b->begin)
        return a->begin < b->begin ? -1 : 1;
    if (a->end != b->end)
        return a->end < b->end ? -1 : 1;
    return 0;
}

static int compare_names(const void *left, const void *right)
{
    const tensor_entry_t *a = left, *b = right;
    return strcmp(a->name, b->name);
}

/* Checks that the tensors tile the data section in offset order, then sorts them by name
 * for lookup and rejects names given twice. */
static int check_layout(mca_safetensors_t *file)
{
    uint64_t position = 0;

    if (file->tensor_count > 0)
        qsort(file->tensors, file->tensor_count, sizeof *file->tensors, compare_offsets);
    for (size_t i = 0; i < file->tensor_count; i++) {
        const tensor_entry_t *entry = &file->tensors[i];
        if (entry->begin == position) {
            position = entry->end;
            continue;
        }
        if (i == 0)
            return mca_error(MCA_ERROR_CORRUPT_FILE,
                             "tensor '%s' in safetensors file '%s' begins at byte %" PRIu64
                             " of the data section, but the first tensor must begin at byte "
                             "0", entry->name, file->name, entry->begin);
        return mca_error(MCA_ERROR_CORRUPT_FILE,
                         "tensor '%s' in safetensors file '%s' begins at byte %" PRIu64
                         " of the data section, but the preceding tensor '%s' ends at byte %"
                         PRIu64 "; tensors must be stored back to back without overlap or gap",
                         entry->name, file->name, entry->begin, file->tensors[i - 1].name,
                         position);
    }
    if (position != file->data_size)
        return mca_error(MCA_ERROR_CORRUPT_FILE,
                         "safetensors file '%s' has %" PRIu64 " bytes after its last tensor; "
                         "the data section must end where the last tensor ends", file->name,
                         (uint64_t)file->data_size - position);

    if (file->tensor_count > 0)
        qsort(file->tensors, file->tensor_count, sizeof *file->tensors, compare_names);
    for (size_t i = 1; i < file->tensor_count; i++) {
        if (strcmp(file->tensors[i - 1].name, file->tensors[i].name) == 0)
            return mca_error(MCA_ERROR_CORRUPT_FILE,
                             "tensor '%s' appears more than once in safetensors file '%s'",
                             file->tensors[i].name, file->name);
    }
    return MCA_SUCCESS;
}

/* Parses the JSON text of the header, `length` bytes followed by a NUL. */
static cJSON *parse_header_json(const mca_safetensors_t *file, const char *text, size_t length,
                                int *status)
{
    const char *end = NULL;

    /* cJSON stops at a NUL inside the header, so the check for trailing bytes would pass. */
    const char *nul = memchr(text, '\0', length);
    if (nul != NULL) {
        *status = mca_error(MCA_ERROR_CORRUPT_FILE,
                            "header of safetensors file '%s' contains a NUL byte at offset %zu; "
                            "the header must be JSON text", file->name, (size_t)(nul - text));
        return NULL;
    }

    cJSON *root = mca_json_parse(text, length, &end, false);
    if (root == NULL) {
        *status = mca_error(MCA_ERROR_CORRUPT_FILE,
                            "header of safetensors file '%s' is not valid JSON (error near "
                            "byte %zu of %zu)", file->name,
                            end != NULL ? (size_t)(end - text) : (size_t)0, length);
        return NULL;
    }

    /* The reference writer pads the header with spaces to a multiple of 8 bytes. */
    size_t position = (size_t)(end - text);
    while (position < length && strchr(" \t\r\n", text[position]) != NULL)
        position++;
    if (position != length) {
        cJSON_Delete(root);
        *status = mca_error(MCA_ERROR_CORRUPT_FILE,
                            "header of safetensors file '%s' has data after its JSON value at "
                            "byte %zu of %zu", file->name, position, length);
        return NULL;
    }
    *status = MCA_SUCCESS;
    return root;
}

/* Validates the header of file->bytes and fills the tensor table. */
static int parse_header(mca_safetensors_t *file)
{
    int status;
    char *text = NULL;
    cJSON *root = NULL;
    const cJSON *item;

    if (file->size < LENGTH_FIELD_BYTES)
        return mca_error(MCA_ERROR_CORRUPT_FILE,
                         "safetensors file '%s' is %zu bytes long, shorter than the 8-byte "
                         "header length", file->name, file->size);

    uint64_t header_length = load_u64_le(file->bytes);
    if (header_length > MCA_SAFETENSORS_MAX_HEADER_BYTES)
        return mca_error(MCA_ERROR_CORRUPT_FILE,
                         "safetensors file '%s' declares a %" PRIu64 "-byte header, above the "
                         "maximum of %u bytes", file->name, header_length,
                         MCA_SAFETENSORS_MAX_HEADER_BYTES);
    if (header_length > file->size - LENGTH_FIELD_BYTES)
        return mca_error(MCA_ERROR_CORRUPT_FILE,
                         "safetensors file '%s' declares a %" PRIu64 "-byte header, but only "
                         "%zu bytes follow the header length; the file is truncated or not a "
                         "safetensors file", file->name, header_length,
                         file->size - LENGTH_FIELD_BYTES);
    file->data = file->bytes + LENGTH_FIELD_BYTES + header_length;
    file->data_size = file->size - LENGTH_FIELD_BYTES - (size_t)header_length;

    /* Copy the header, because cJSON needs NUL-terminated text. */
    text = mca_malloc((size_t)header_length + 1);
    if (text == NULL) {
        status = mca_error(MCA_ERROR_OUT_OF_HOST_MEMORY,
                           "out of host memory for the %" PRIu64 "-byte header of safetensors "
                           "file '%s'", header_length, file->name);
        goto cleanup;
    }
    memcpy(text, file->bytes + LENGTH_FIELD_BYTES, (size_t)header_length);
    text[header_length] = '\0';

    root = parse_header_json(file, text, (size_t)header_length, &status);
    if (root == NULL)
        goto cleanup;
    if (!cJSON_IsObject(root)) {
        status = mca_error(MCA_ERROR_CORRUPT_FILE,
                           "header of safetensors file '%s' is not a JSON object", file->name);
        goto cleanup;
    }

    /* Count the tensors, and check the metadata, which may appear once. */
    size_t capacity = 0;
    size_t metadata_count = 0;
    cJSON_ArrayForEach(item, root) {
        if (strcmp(item->string, "__metadata__") != 0) {
            capacity++;
            continue;
        }
        if (++metadata_count > 1) {
            status = mca_error(MCA_ERROR_CORRUPT_FILE,
                               "\"__metadata__\" appears more than once in safetensors file "
                               "'%s'", file->name);
            goto cleanup;
        }
        status = check_metadata(file, item);
        if (status != MCA_SUCCESS)
            goto cleanup;
    }

    if (capacity > 0) {
        file->tensors = mca_calloc(capacity, sizeof *file->tensors);
        if (file->tensors == NULL) {
            status = mca_error(MCA_ERROR_OUT_OF_HOST_MEMORY,
                               "out of host memory for %zu tensor entries of safetensors file "
                               "'%s'", capacity, file->name);
            goto cleanup;
        }
    }
    cJSON_ArrayForEach(item, root) {
        if (strcmp(item->string, "__metadata__") == 0)
            continue;
        /* Counted before parsing, so that a failed entry is freed with the others. */
        tensor_entry_t *entry = &file->tensors[file->tensor_count++];
        status = parse_entry(file, item, entry);
        if (status != MCA_SUCCESS)
            goto cleanup;
    }

    status = check_layout(file);

cleanup:
    cJSON_Delete(root);
    free(text);
    return status;
}

/* ------------------------------------------------------------------------------------ */
/* Opening and closing                                                                  */
/* ------------------------------------------------------------------------------------ */

/* Opens a file over `bytes`, which it owns from here on and frees on failure. */
static int open_owned_bytes(unsigned char *bytes, size_t size, const char *name,
                            mca_safetensors_t **file)
{
    int status;
    mca_safetensors_t *result = mca_calloc(1, sizeof *result);

    if (result == NULL) {
        free(bytes);
        return mca_error(MCA_ERROR_OUT_OF_HOST_MEMORY,
                         "out of host memory for safetensors file '%s'", name);
    }
    result->bytes = bytes;
    result->size = size;
    result->name = mca_strdup(name);
    if (result->name == NULL) {
        status = mca_error(MCA_ERROR_OUT_OF_HOST_MEMORY,
                           "out of host memory for the name of safetensors file '%s'", name);
        goto cleanup;
    }

    status = parse_header(result);
    if (status != MCA_SUCCESS)
        goto cleanup;

    *file = result;
    return MCA_SUCCESS;

cleanup:
    mca_safetensors_close(result);
    return status;
}

static int io_error(const char *action, const char *path, int error_number)
{
    char reason[256];
    if (strerror_r(error_number, reason, sizeof reason) != 0)
        snprintf(reason, sizeof reason, "error %d", error_number);
    return mca_error(MCA_ERROR_IO, "failed to %s safetensors file '%s': %s", action, path,
                     reason);
}

/* Reads the whole regular file at `path` into a new buffer. */
static int read_whole_file(const char *path, unsigned char **bytes, size_t *size)
{
    int status = MCA_SUCCESS;
    unsigned char *buffer = NULL;
    struct stat info;

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return io_error("open", path, errno);

    if (fstat(fd, &info) != 0) {
        status = io_error("inspect", path, errno);
        goto cleanup;
    }
    if (!S_ISREG(info.st_mode)) {
        status = mca_error(MCA_ERROR_IO,
                           "safetensors file '%s' is not a regular file", path);
        goto cleanup;
    }
    if ((uintmax_t)info.st_size > SIZE_MAX - 1) {
        status = mca_error(MCA_ERROR_IO,
                           "safetensors file '%s' is %jd bytes long, more than this process "
                           "can address", path, (intmax_t)info.st_size);
        goto cleanup;
    }

    size_t expected = (size_t)info.st_size;
    buffer = mca_malloc(expected > 0 ? expected : 1);
    if (buffer == NULL) {
        status = mca_error(MCA_ERROR_OUT_OF_HOST_MEMORY,
                           "out of host memory for the %zu bytes of safetensors file '%s'",
                           expected, path);
        goto cleanup;
    }

    /* A file that shrinks while it is read keeps the bytes read so far, which then fail
     * validation as a truncated file. */
    size_t done = 0;
    while (done < expected) {
        size_t request = expected - done < MAX_READ_CHUNK ? expected - done : MAX_READ_CHUNK;
        ssize_t count = read(fd, buffer + done, request);
        if (count < 0 && errno == EINTR)
            continue;
        if (count < 0) {
            status = io_error("read", path, errno);
            goto cleanup;
        }
        if (count == 0)
            break;
        done += (size_t)count;
    }

    *bytes = buffer;
    *size = done;
    buffer = NULL;

cleanup:
    free(buffer);
    close(fd);
    return status;
}

int mca_safetensors_open(const char *path, mca_safetensors_t **file)
{
    unsigned char *bytes = NULL;
    size_t size = 0;

    if (path == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT, "safetensors path is NULL");
    if (file == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "output handle for safetensors file '%s' is NULL", path);

    int status = read_whole_file(path, &bytes, &size);
    if (status != MCA_SUCCESS)
        return status;
    return open_owned_bytes(bytes, size, path, file);
}

int mca_safetensors_open_memory(const void *bytes, size_t size, const char *name,
                                mca_safetensors_t **file)
{
    if (bytes == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT, "safetensors bytes are NULL");
    if (name == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT, "safetensors name is NULL");
    if (file == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "output handle for safetensors file '%s' is NULL", name);

    unsigned char *copy = mca_malloc(size > 0 ? size : 1);
    if (copy == NULL)
        return mca_error(MCA_ERROR_OUT_OF_HOST_MEMORY,
                         "out of host memory for a %zu-byte copy of safetensors file '%s'",
                         size, name);
    memcpy(copy, bytes, size);
    return open_owned_bytes(copy, size, name, file);
}

void mca_safetensors_close(mca_safetensors_t *file)
{
    if (file == NULL)
        return;
    free_tensors(file->tensors, file->tensor_count);
    free(file->bytes);
    free(file->name);
    free(file);
}

/* ------------------------------------------------------------------------------------ */
/* Lookup and conversion                                                                */
/* ------------------------------------------------------------------------------------ */

static const tensor_entry_t *find_entry(const mca_safetensors_t *file, const char *name)
{
    if (file->tensor_count == 0)
        return NULL;
    tensor_entry_t key = {.name = (char *)name};
    return bsearch(&key, file->tensors, file->tensor_count, sizeof *file->tensors,
                   compare_names);
}

static int missing_tensor(const mca_safetensors_t *file, const char *name)
{
    return mca_error(MCA_ERROR_MISSING_TENSOR,
                     "tensor '%s' is not in safetensors file '%s'", name, file->name);
}

int mca_safetensors_find(const mca_safetensors_t *file, const char *name, const char **dtype,
                         int *rank, int64_t shape[MCA_SAFETENSORS_MAX_RANK])
{
    if (file == NULL || name == NULL || dtype == NULL || rank == NULL || shape == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "mca_safetensors_find needs a file, a tensor name and non-NULL "
                         "outputs");

    const tensor_entry_t *entry = find_entry(file, name);
    if (entry == NULL)
        return missing_tensor(file, name);
    if (entry->rank > MCA_SAFETENSORS_MAX_RANK)
        return mca_error(MCA_ERROR_NOT_IMPLEMENTED,
                         "tensor '%s' in safetensors file '%s' has rank %d; at most %d "
                         "dimensions are supported", name, file->name, entry->rank,
                         MCA_SAFETENSORS_MAX_RANK);

    *dtype = entry->dtype->name;
    *rank = entry->rank;
    for (int i = 0; i < entry->rank; i++)
        shape[i] = entry->shape[i];
    return MCA_SUCCESS;
}

static bool shape_equals(const tensor_entry_t *entry, int rank, const int64_t *shape)
{
    if (entry->rank != rank)
        return false;
    for (int i = 0; i < rank; i++) {
        if (entry->shape[i] != shape[i])
            return false;
    }
    return true;
}

int mca_safetensors_read_f32(const mca_safetensors_t *file, const char *name, int rank,
                             const int64_t *shape, float *out)
{
    if (file == NULL || name == NULL || out == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "mca_safetensors_read_f32 needs a file, a tensor name and an output "
                         "array");
    if (rank < 0 || rank > MCA_SAFETENSORS_MAX_RANK)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "expected rank %d for tensor '%s' is outside 0 .. %d", rank, name,
                         MCA_SAFETENSORS_MAX_RANK);
    if (rank > 0 && shape == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "expected shape for tensor '%s' is NULL but its rank is %d", name,
                         rank);

    const tensor_entry_t *entry = find_entry(file, name);
    if (entry == NULL)
        return missing_tensor(file, name);

    if (!shape_equals(entry, rank, shape)) {
        char actual[256], expected[256];
        return mca_error(MCA_ERROR_SHAPE_MISMATCH,
                         "tensor '%s' in safetensors file '%s' has shape %s, expected %s", name,
                         file->name, format_shape(actual, sizeof actual, entry->rank, entry->shape),
                         format_shape(expected, sizeof expected, rank, shape));
    }

    /* The element count fits in size_t because the tensor's bytes are in memory. */
    const unsigned char *source = file->data + entry->begin;
    size_t count = (size_t)entry->element_count;
    const char *dtype = entry->dtype->name;
    if (strcmp(dtype, "F32") == 0) {
        for (size_t i = 0; i < count; i++)
            out[i] = float_from_bits(load_u32_le(source + 4 * i));
    } else if (strcmp(dtype, "F16") == 0) {
        for (size_t i = 0; i < count; i++)
            out[i] = half_to_float(load_u16_le(source + 2 * i));
    } else if (strcmp(dtype, "BF16") == 0) {
        for (size_t i = 0; i < count; i++)
            out[i] = bfloat16_to_float(load_u16_le(source + 2 * i));
    } else {
        return mca_error(MCA_ERROR_UNSUPPORTED_DTYPE,
                         "tensor '%s' in safetensors file '%s' has dtype %s; only F32, F16 and "
                         "BF16 can be read as float32", name, file->name, dtype);
    }
    return MCA_SUCCESS;
}
