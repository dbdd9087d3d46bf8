/*
 * libFuzzer target for the safetensors reader (src/safetensors.c).
 *
 * Opens the input with mca_safetensors_open_memory, then looks up every tensor with
 * mca_safetensors_find and converts it with mca_safetensors_read_f32. The reader has no
 * API that lists its tensors, so the names come from the keys of the input's JSON header,
 * parsed here again with cJSON, and from a fixed list of names of all-MiniLM-L6-v2.
 *
 * Besides the sanitizers, the harness checks the reader's contracts and aborts on a
 * violation. A failure must return a documented status with a non-empty error message
 * and write no output. Once a file opens, every header key must be found and every tensor
 * must fit in the file. F32, F16 and BF16 values must equal an independent conversion of
 * the tensor's bytes.
 */
#include "safetensors.h"

#include "error.h"
#include "mca.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Names that the encoder reads from all-MiniLM-L6-v2, with and without the "bert." prefix
 * of other BERT checkpoints, plus names that no valid file maps to a tensor. */
static const char *const model_tensor_names[] = {
    "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight",
    "embeddings.LayerNorm.bias",
    "embeddings.position_ids",
    "encoder.layer.0.attention.self.query.weight",
    "encoder.layer.0.attention.self.value.bias",
    "encoder.layer.0.attention.output.dense.weight",
    "encoder.layer.0.intermediate.dense.weight",
    "encoder.layer.5.output.LayerNorm.bias",
    "bert.embeddings.word_embeddings.weight",
    "pooler.dense.weight",
    "__metadata__",
    "",
};

/* Sentinel for output floats that the reader must leave alone. */
#define UNTOUCHED_BITS 0x7fa5a5a5u

static void report_violation(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    fprintf(stderr, "fuzz_safetensors: contract violation: ");
    vfprintf(stderr, format, args);
    fprintf(stderr, "\nlast error: %s\n", mca_last_error());
    va_end(args);
    abort();
}

static uint64_t load_u64_le(const uint8_t *p)
{
    uint64_t value = 0;
    for (int i = 7; i >= 0; i--)
        value = (value << 8) | p[i];
    return value;
}

static uint32_t float_bits(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

/* Converts binary16 through double arithmetic, a different method from the reader's bit
 * manipulation, so that both agreeing is a real check. */
static double half_to_double(uint16_t half)
{
    int sign = (half & 0x8000u) != 0 ? -1 : 1;
    int exponent = (half >> 10) & 0x1f;
    int mantissa = half & 0x3ff;

    if (exponent == 0x1f)
        return mantissa == 0 ? sign * INFINITY : NAN;
    if (exponent == 0)
        return sign * ldexp(mantissa, -24);
    return sign * ldexp(1024 + mantissa, exponent - 25);
}

/* Bytes per element of the dtypes that read_f32 converts, 0 for the others. */
static size_t convertible_dtype_bytes(const char *dtype)
{
    if (strcmp(dtype, "F32") == 0)
        return 4;
    if (strcmp(dtype, "F16") == 0 || strcmp(dtype, "BF16") == 0)
        return 2;
    return 0;
}

/* Compares the converted tensor with its bytes at `source`. */
static void check_values(const char *name, const char *dtype, const uint8_t *source,
                         const float *out, uint64_t count)
{
    for (uint64_t i = 0; i < count; i++) {
        uint32_t actual = float_bits(out[i]);
        if (strcmp(dtype, "F32") == 0) {
            const uint8_t *p = source + 4 * i;
            uint32_t expected = (uint32_t)p[0] | ((uint32_t)p[1] << 8) |
                                ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
            if (actual != expected)
                report_violation("F32 tensor '%s' element %llu is 0x%08x, expected 0x%08x",
                                 name, (unsigned long long)i, actual, expected);
            continue;
        }

        uint16_t half = (uint16_t)(source[2 * i] | (source[2 * i + 1] << 8));
        if (strcmp(dtype, "BF16") == 0) {
            if (actual != (uint32_t)half << 16)
                report_violation("BF16 tensor '%s' element %llu is 0x%08x, expected 0x%08x",
                                 name, (unsigned long long)i, actual, (uint32_t)half << 16);
            continue;
        }

        double expected = half_to_double(half);
        bool equal = isnan(expected) ? isnan(out[i]) : (double)out[i] == expected;
        if (!equal)
            report_violation("F16 tensor '%s' element %llu (0x%04x) is %.9g, expected %.9g",
                             name, (unsigned long long)i, half, (double)out[i], expected);
    }
}

/* Reads tensor `name` with a rank and a shape that differ from its own, which must fail
 * with MCA_ERROR_SHAPE_MISMATCH before anything is written. */
static void check_shape_mismatch(const mca_safetensors_t *file, const char *name, int rank,
                                 const int64_t *shape)
{
    int64_t wrong[MCA_SAFETENSORS_MAX_RANK];
    float out = 0;
    uint32_t untouched = UNTOUCHED_BITS;
    memcpy(&out, &untouched, sizeof out);

    for (int i = 0; i < rank; i++)
        wrong[i] = shape[i];
    int wrong_rank = rank;
    if (rank < MCA_SAFETENSORS_MAX_RANK)
        wrong[wrong_rank++] = 1;
    else
        wrong[0] = shape[0] == INT64_MAX ? 0 : shape[0] + 1;

    int status = mca_safetensors_read_f32(file, name, wrong_rank, wrong, &out);
    if (status != MCA_ERROR_SHAPE_MISMATCH)
        report_violation("reading tensor '%s' with the wrong shape returned %d, expected "
                         "MCA_ERROR_SHAPE_MISMATCH", name, status);
    if (float_bits(out) != UNTOUCHED_BITS)
        report_violation("reading tensor '%s' with the wrong shape wrote the output", name);
}

/* Looks up tensor `name` and converts it. `header_entry` is the name's object in the
 * header when the header has that key, else NULL. */
static void check_tensor(const mca_safetensors_t *file, const char *name,
                         const cJSON *header_entry, const uint8_t *data_section,
                         size_t input_size)
{
    const char *dtype = NULL;
    int rank = -1;
    int64_t shape[MCA_SAFETENSORS_MAX_RANK];

    int status = mca_safetensors_find(file, name, &dtype, &rank, shape);
    if (status == MCA_ERROR_NOT_IMPLEMENTED && header_entry != NULL)
        return; /* rank above MCA_SAFETENSORS_MAX_RANK */
    if (status == MCA_ERROR_MISSING_TENSOR && header_entry == NULL)
        return;
    if (status != MCA_SUCCESS)
        report_violation("looking up tensor '%s' returned %d, but the header %s it", name,
                         status, header_entry != NULL ? "contains" : "does not contain");
    if (header_entry == NULL)
        report_violation("tensor '%s' was found, but the header does not contain it", name);
    if (rank < 0 || rank > MCA_SAFETENSORS_MAX_RANK)
        report_violation("tensor '%s' has rank %d", name, rank);

    /* The tensor's bytes are inside the input, so its element count is at most twice the
     * input size (F4, the narrowest dtype, has 4 bits). */
    uint64_t count = 1;
    bool has_zero = false;
    for (int i = 0; i < rank; i++) {
        if (shape[i] < 0)
            report_violation("tensor '%s' has negative dimension %lld", name,
                             (long long)shape[i]);
        if (shape[i] == 0)
            has_zero = true;
        else if (count <= UINT64_MAX / (uint64_t)shape[i])
            count *= (uint64_t)shape[i];
        else
            count = UINT64_MAX;
    }
    if (has_zero)
        count = 0;
    if (count > 2 * (uint64_t)input_size)
        report_violation("tensor '%s' has %llu elements, more than a %zu-byte file holds",
                         name, (unsigned long long)count, input_size);

    size_t element_bytes = convertible_dtype_bytes(dtype);
    if (element_bytes != 0 && count * element_bytes > input_size)
        report_violation("%s tensor '%s' has %llu elements, more than a %zu-byte file holds",
                         dtype, name, (unsigned long long)count, input_size);

    /* An exact-size buffer, so that AddressSanitizer catches a write past its end. */
    float *out = malloc(count > 0 ? (size_t)count * sizeof *out : 1);
    if (out == NULL)
        report_violation("out of memory for %llu floats", (unsigned long long)count);
    status = mca_safetensors_read_f32(file, name, rank, shape, out);
    if (element_bytes == 0 && status != MCA_ERROR_UNSUPPORTED_DTYPE)
        report_violation("reading %s tensor '%s' returned %d, expected "
                         "MCA_ERROR_UNSUPPORTED_DTYPE", dtype, name, status);
    if (element_bytes != 0 && status != MCA_SUCCESS)
        report_violation("reading %s tensor '%s' returned %d", dtype, name, status);

    /* Only a valid header opens, so its offsets, parsed here, locate the tensor's bytes. */
    if (status == MCA_SUCCESS) {
        const cJSON *offsets = cJSON_GetObjectItemCaseSensitive(header_entry, "data_offsets");
        double begin = cJSON_GetNumberValue(cJSON_GetArrayItem(offsets, 0));
        if (!(begin >= 0 && begin <= (double)input_size))
            report_violation("tensor '%s' was read, but its header begin offset is %g", name,
                             begin);
        check_values(name, dtype, data_section + (size_t)begin, out, count);
    }
    free(out);

    check_shape_mismatch(file, name, rank, shape);
}

/* Parses the header of an input that the reader accepted. */
static cJSON *parse_header(const uint8_t *data, const uint8_t **data_section)
{
    uint64_t header_length = load_u64_le(data);
    cJSON *header = cJSON_ParseWithLength((const char *)data + 8, (size_t)header_length);
    if (!cJSON_IsObject(header))
        report_violation("the file opened, but cJSON does not parse its %llu-byte header "
                         "as an object", (unsigned long long)header_length);
    *data_section = data + 8 + header_length;
    return header;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t empty[1];
    mca_safetensors_t *file = NULL;

    mca_error_clear();
    int status = mca_safetensors_open_memory(size > 0 ? data : empty, size, "fuzz input",
                                             &file);
    if (status != MCA_SUCCESS) {
        if (status != MCA_ERROR_CORRUPT_FILE)
            report_violation("opening returned %d, expected MCA_ERROR_CORRUPT_FILE", status);
        if (file != NULL)
            report_violation("opening failed but wrote the output handle");
        if (mca_last_error()[0] == '\0')
            report_violation("opening failed without an error message");
        return 0;
    }

    const uint8_t *data_section = NULL;
    cJSON *header = parse_header(data, &data_section);

    const cJSON *entry;
    cJSON_ArrayForEach(entry, header) {
        if (strcmp(entry->string, "__metadata__") != 0)
            check_tensor(file, entry->string, entry, data_section, size);
    }
    for (size_t i = 0; i < sizeof model_tensor_names / sizeof model_tensor_names[0]; i++) {
        const char *name = model_tensor_names[i];
        const cJSON *header_entry = strcmp(name, "__metadata__") == 0
                                        ? NULL
                                        : cJSON_GetObjectItemCaseSensitive(header, name);
        check_tensor(file, name, header_entry, data_section, size);
    }

    cJSON_Delete(header);
    mca_safetensors_close(file);
    return 0;
}
