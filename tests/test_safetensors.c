/* Tests of the safetensors reader on files built in memory, and on the real model when
 * MCA_MODEL_DIR contains one. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mca.h"
#include "safetensors.h"

/* ------------------------------------------------------------------------------------ */
/* Helpers                                                                              */
/* ------------------------------------------------------------------------------------ */

/* Builds a safetensors file in memory: the 8-byte little-endian header length, `header`
 * and `data_size` bytes of `data`. The caller frees the result. */
static unsigned char *build_file(const char *header, const void *data, size_t data_size,
                                 size_t *size)
{
    size_t header_length = strlen(header);
    *size = 8 + header_length + data_size;
    unsigned char *bytes = malloc(*size);
    assert_non_null(bytes);
    for (int i = 0; i < 8; i++)
        bytes[i] = (unsigned char)((uint64_t)header_length >> (8 * i));
    memcpy(bytes + 8, header, header_length);
    if (data_size > 0)
        memcpy(bytes + 8 + header_length, data, data_size);
    return bytes;
}

/* Opens a file built from `header` and `data` and returns the handle, failing the test
 * when it does not open. */
static mca_safetensors_t *open_built(const char *header, const void *data, size_t data_size)
{
    size_t size;
    unsigned char *bytes = build_file(header, data, data_size, &size);
    mca_safetensors_t *file = NULL;
    int status = mca_safetensors_open_memory(bytes, size, "test.safetensors", &file);
    free(bytes);
    if (status != MCA_SUCCESS)
        fail_msg("open failed with %d: %s", status, mca_last_error());
    assert_non_null(file);
    return file;
}

/* Returns the status of opening a file built from `header` and `data`, and checks that a
 * failed open leaves the output handle untouched. */
static int open_status(const char *header, const void *data, size_t data_size)
{
    size_t size;
    unsigned char *bytes = build_file(header, data, data_size, &size);
    mca_safetensors_t *file = NULL;
    int status = mca_safetensors_open_memory(bytes, size, "test.safetensors", &file);
    free(bytes);
    if (status != MCA_SUCCESS)
        assert_null(file);
    mca_safetensors_close(file);
    return status;
}

static uint32_t float_bits(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

static void store_u16_le(unsigned char *p, uint16_t value)
{
    p[0] = (unsigned char)value;
    p[1] = (unsigned char)(value >> 8);
}

static void store_f32_le(unsigned char *p, float value)
{
    uint32_t bits = float_bits(value);
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(bits >> (8 * i));
}

static void assert_error_mentions(const char *text)
{
    const char *message = mca_last_error();
    if (strstr(message, text) == NULL)
        fail_msg("error message \"%s\" does not mention \"%s\"", message, text);
}

/* A file with one F32 tensor "w" of shape [2, 3]. */
static const char small_header[] =
    "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}";

static void small_data(unsigned char data[24])
{
    const float values[6] = {1.0f, -2.5f, 0.125f, 3.0e-8f, 65504.0f, -0.0f};
    for (int i = 0; i < 6; i++)
        store_f32_le(data + 4 * i, values[i]);
}

/* ------------------------------------------------------------------------------------ */
/* Conversion                                                                           */
/* ------------------------------------------------------------------------------------ */

static void test_f32_read(void **state)
{
    (void)state;
    unsigned char data[24];
    small_data(data);
    mca_safetensors_t *file = open_built(small_header, data, sizeof data);

    const int64_t shape[2] = {2, 3};
    float out[6];
    assert_int_equal(mca_safetensors_read_f32(file, "w", 2, shape, out), MCA_SUCCESS);
    assert_true(out[0] == 1.0f);
    assert_true(out[1] == -2.5f);
    assert_true(out[2] == 0.125f);
    assert_true(out[3] == 3.0e-8f);
    assert_true(out[4] == 65504.0f);
    assert_int_equal(float_bits(out[5]), 0x80000000u);
    mca_safetensors_close(file);
}

/* Each binary16 pattern with the binary32 bits it must convert to, computed by hand. */
static const struct {
    uint16_t half;
    uint32_t single;
} f16_cases[] = {
    {0x0000, 0x00000000u}, /* +0 */
    {0x8000, 0x80000000u}, /* -0 */
    {0x3c00, 0x3f800000u}, /* 1 */
    {0xc000, 0xc0000000u}, /* -2 */
    {0x3555, 0x3eaaa000u}, /* 1365/4096 = 0.333251953125 */
    {0x7bff, 0x477fe000u}, /* 65504, the largest finite */
    {0x0400, 0x38800000u}, /* 2^-14, the smallest normal */
    {0x0001, 0x33800000u}, /* 2^-24, the smallest subnormal */
    {0x03ff, 0x387fc000u}, /* 1023 * 2^-24, the largest subnormal */
    {0x8200, 0xb8000000u}, /* -2^-15, a negative subnormal */
    {0x7c00, 0x7f800000u}, /* +infinity */
    {0xfc00, 0xff800000u}, /* -infinity */
    {0x7e00, 0x7fc00000u}, /* quiet NaN */
    {0x7c01, 0x7f802000u}, /* signaling NaN, payload kept */
    {0xfe00, 0xffc00000u}, /* negative quiet NaN */
};

static void test_f16_read(void **state)
{
    (void)state;
    enum { count = sizeof f16_cases / sizeof f16_cases[0] };
    unsigned char data[2 * count];
    for (int i = 0; i < count; i++)
        store_u16_le(data + 2 * i, f16_cases[i].half);
    char header[128];
    snprintf(header, sizeof header,
             "{\"h\":{\"dtype\":\"F16\",\"shape\":[%d],\"data_offsets\":[0,%d]}}", count,
             2 * count);
    mca_safetensors_t *file = open_built(header, data, sizeof data);

    const int64_t shape[1] = {count};
    float out[count];
    assert_int_equal(mca_safetensors_read_f32(file, "h", 1, shape, out), MCA_SUCCESS);
    for (int i = 0; i < count; i++) {
        if (float_bits(out[i]) != f16_cases[i].single)
            fail_msg("F16 0x%04x gave bits 0x%08x, expected 0x%08x", f16_cases[i].half,
                     float_bits(out[i]), f16_cases[i].single);
    }
    assert_true(out[2] == 1.0f);
    assert_true(out[7] == 5.9604644775390625e-08f);
    assert_true(isinf(out[10]));
    assert_true(isnan(out[13]));
    assert_true(signbit(out[1]));
    mca_safetensors_close(file);
}

static void test_bf16_read(void **state)
{
    (void)state;
    const uint16_t halves[] = {0x3f80, 0xc049, 0x0001, 0x8000, 0x7f80, 0xff80, 0x7fc0};
    const uint32_t expected[] = {0x3f800000u, 0xc0490000u, 0x00010000u, 0x80000000u,
                                 0x7f800000u, 0xff800000u, 0x7fc00000u};
    unsigned char data[14];
    for (int i = 0; i < 7; i++)
        store_u16_le(data + 2 * i, halves[i]);
    mca_safetensors_t *file =
        open_built("{\"b\":{\"dtype\":\"BF16\",\"shape\":[7],\"data_offsets\":[0,14]}}", data,
                   sizeof data);

    const int64_t shape[1] = {7};
    float out[7];
    assert_int_equal(mca_safetensors_read_f32(file, "b", 1, shape, out), MCA_SUCCESS);
    for (int i = 0; i < 7; i++)
        assert_int_equal(float_bits(out[i]), expected[i]);
    assert_true(out[1] == -3.140625f);
    mca_safetensors_close(file);
}

/* A 1-byte tensor first puts the F32 data at an odd address. */
static void test_f32_unaligned(void **state)
{
    (void)state;
    unsigned char data[9] = {7};
    store_f32_le(data + 1, -1.5f);
    store_f32_le(data + 5, 1024.0f);
    mca_safetensors_t *file = open_built(
        "{\"pad\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
        "\"v\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[1,9]}}",
        data, sizeof data);

    const int64_t shape[1] = {2};
    float out[2];
    assert_int_equal(mca_safetensors_read_f32(file, "v", 1, shape, out), MCA_SUCCESS);
    assert_true(out[0] == -1.5f);
    assert_true(out[1] == 1024.0f);
    mca_safetensors_close(file);
}

static void test_scalar_read(void **state)
{
    (void)state;
    unsigned char data[4];
    store_f32_le(data, 42.0f);
    mca_safetensors_t *file =
        open_built("{\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}", data, 4);

    float out = 0.0f;
    assert_int_equal(mca_safetensors_read_f32(file, "s", 0, NULL, &out), MCA_SUCCESS);
    assert_true(out == 42.0f);
    mca_safetensors_close(file);
}

static void test_empty_tensor_read(void **state)
{
    (void)state;
    mca_safetensors_t *file =
        open_built("{\"e\":{\"dtype\":\"F16\",\"shape\":[0,3],\"data_offsets\":[0,0]}}", NULL,
                   0);

    const int64_t shape[2] = {0, 3};
    float out = 99.0f;
    assert_int_equal(mca_safetensors_read_f32(file, "e", 2, shape, &out), MCA_SUCCESS);
    assert_true(out == 99.0f);
    mca_safetensors_close(file);
}

/* ------------------------------------------------------------------------------------ */
/* Lookup errors                                                                        */
/* ------------------------------------------------------------------------------------ */

static void test_find_reports_shape(void **state)
{
    (void)state;
    unsigned char data[24];
    small_data(data);
    mca_safetensors_t *file = open_built(small_header, data, sizeof data);

    const char *dtype = NULL;
    int rank = -1;
    int64_t shape[8] = {0};
    assert_int_equal(mca_safetensors_find(file, "w", &dtype, &rank, shape), MCA_SUCCESS);
    assert_string_equal(dtype, "F32");
    assert_int_equal(rank, 2);
    assert_int_equal(shape[0], 2);
    assert_int_equal(shape[1], 3);
    mca_safetensors_close(file);
}

static void test_shape_mismatch(void **state)
{
    (void)state;
    unsigned char data[24];
    small_data(data);
    mca_safetensors_t *file = open_built(small_header, data, sizeof data);

    const int64_t shape[2] = {3, 2};
    float out[6] = {9, 9, 9, 9, 9, 9};
    assert_int_equal(mca_safetensors_read_f32(file, "w", 2, shape, out),
                     MCA_ERROR_SHAPE_MISMATCH);
    assert_error_mentions("'w'");
    assert_error_mentions("[2, 3]");
    assert_error_mentions("[3, 2]");
    assert_true(out[0] == 9.0f);
    mca_safetensors_close(file);
}

static void test_rank_mismatch(void **state)
{
    (void)state;
    unsigned char data[24];
    small_data(data);
    mca_safetensors_t *file = open_built(small_header, data, sizeof data);

    const int64_t shape[1] = {6};
    float out[6];
    assert_int_equal(mca_safetensors_read_f32(file, "w", 1, shape, out),
                     MCA_ERROR_SHAPE_MISMATCH);
    assert_error_mentions("'w'");
    assert_error_mentions("[6]");
    mca_safetensors_close(file);
}

static void test_missing_tensor(void **state)
{
    (void)state;
    unsigned char data[24];
    small_data(data);
    mca_safetensors_t *file = open_built(small_header, data, sizeof data);

    const char *name = "encoder.layer.0.attention.self.query.weight";
    const int64_t shape[2] = {2, 3};
    float out[6];
    assert_int_equal(mca_safetensors_read_f32(file, name, 2, shape, out),
                     MCA_ERROR_MISSING_TENSOR);
    assert_error_mentions(name);

    const char *dtype;
    int rank;
    int64_t found_shape[8];
    assert_int_equal(mca_safetensors_find(file, name, &dtype, &rank, found_shape),
                     MCA_ERROR_MISSING_TENSOR);
    assert_error_mentions(name);
    mca_safetensors_close(file);
}

static void test_unsupported_dtype(void **state)
{
    (void)state;
    unsigned char data[16] = {1, 0, 0, 0, 0, 0, 0, 0, 2};
    mca_safetensors_t *file =
        open_built("{\"ids\":{\"dtype\":\"I64\",\"shape\":[1,2],\"data_offsets\":[0,16]}}",
                   data, sizeof data);

    const char *dtype = NULL;
    int rank;
    int64_t found_shape[8];
    assert_int_equal(mca_safetensors_find(file, "ids", &dtype, &rank, found_shape), MCA_SUCCESS);
    assert_string_equal(dtype, "I64");

    const int64_t shape[2] = {1, 2};
    float out[2] = {5.0f, 5.0f};
    assert_int_equal(mca_safetensors_read_f32(file, "ids", 2, shape, out),
                     MCA_ERROR_UNSUPPORTED_DTYPE);
    assert_error_mentions("I64");
    assert_true(out[0] == 5.0f);
    mca_safetensors_close(file);
}

static void test_rank_above_maximum(void **state)
{
    (void)state;
    unsigned char data[4] = {0};
    mca_safetensors_t *file = open_built(
        "{\"r9\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
        data, sizeof data);

    const char *dtype;
    int rank;
    int64_t shape[8];
    assert_int_equal(mca_safetensors_find(file, "r9", &dtype, &rank, shape),
                     MCA_ERROR_NOT_IMPLEMENTED);

    const int64_t ones[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    float out;
    assert_int_equal(mca_safetensors_read_f32(file, "r9", 8, ones, &out),
                     MCA_ERROR_SHAPE_MISMATCH);
    mca_safetensors_close(file);
}

/* ------------------------------------------------------------------------------------ */
/* Valid headers                                                                        */
/* ------------------------------------------------------------------------------------ */

/* The reference writer pads the header with spaces and may add "__metadata__". */
static void test_padded_header_metadata(void **state)
{
    (void)state;
    unsigned char data[24];
    small_data(data);
    assert_int_equal(
        open_status("{\"__metadata__\":{\"format\":\"pt\"},"
                    "\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}    \n",
                    data, sizeof data),
        MCA_SUCCESS);
    assert_int_equal(open_status("{\"__metadata__\":null}", NULL, 0), MCA_SUCCESS);
}

static void test_empty_header(void **state)
{
    (void)state;
    assert_int_equal(open_status("{}      ", NULL, 0), MCA_SUCCESS);
}

static void test_every_dtype_size(void **state)
{
    (void)state;
    const struct {
        const char *dtype;
        int bytes;
    } cases[] = {
        {"BOOL", 1},    {"U8", 1},          {"I8", 1},          {"F8_E5M2", 1},
        {"F8_E4M3", 1}, {"F8_E8M0", 1},     {"F8_E4M3FNUZ", 1}, {"F8_E5M2FNUZ", 1},
        {"I16", 2},     {"U16", 2},         {"F16", 2},         {"BF16", 2},
        {"I32", 4},     {"U32", 4},         {"F32", 4},         {"F64", 8},
        {"I64", 8},     {"U64", 8},         {"C64", 8},
    };
    unsigned char data[16] = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char header[128];
        snprintf(header, sizeof header,
                 "{\"t\":{\"dtype\":\"%s\",\"shape\":[2],\"data_offsets\":[0,%d]}}",
                 cases[i].dtype, 2 * cases[i].bytes);
        int status = open_status(header, data, (size_t)(2 * cases[i].bytes));
        if (status != MCA_SUCCESS)
            fail_msg("dtype %s: %s", cases[i].dtype, mca_last_error());
    }
}

/* F4 packs two elements per byte, and F6 four elements per three bytes. */
static void test_subbyte_dtype_size(void **state)
{
    (void)state;
    unsigned char data[3] = {0};
    assert_int_equal(
        open_status("{\"t\":{\"dtype\":\"F4\",\"shape\":[4],\"data_offsets\":[0,2]}}", data, 2),
        MCA_SUCCESS);
    assert_int_equal(
        open_status("{\"t\":{\"dtype\":\"F6_E2M3\",\"shape\":[4],\"data_offsets\":[0,3]}}",
                    data, 3),
        MCA_SUCCESS);
    assert_int_equal(
        open_status("{\"t\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", data, 2),
        MCA_ERROR_CORRUPT_FILE);
}

/* ------------------------------------------------------------------------------------ */
/* Corrupt files                                                                        */
/* ------------------------------------------------------------------------------------ */

static void test_every_prefix_corrupt(void **state)
{
    (void)state;
    unsigned char data[24];
    small_data(data);
    size_t size;
    unsigned char *bytes = build_file(small_header, data, sizeof data, &size);

    for (size_t length = 0; length < size; length++) {
        mca_safetensors_t *file = NULL;
        int status = mca_safetensors_open_memory(bytes, length, "prefix", &file);
        if (status != MCA_ERROR_CORRUPT_FILE)
            fail_msg("prefix of %zu of %zu bytes gave status %d", length, size, status);
        assert_null(file);
    }
    free(bytes);
}

static void test_header_longer_than_file(void **state)
{
    (void)state;
    unsigned char bytes[16] = {200, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
    mca_safetensors_t *file = NULL;
    assert_int_equal(mca_safetensors_open_memory(bytes, sizeof bytes, "long", &file),
                     MCA_ERROR_CORRUPT_FILE);
    assert_null(file);
    assert_error_mentions("200");
}

static void test_header_above_maximum(void **state)
{
    (void)state;
    unsigned char bytes[16] = {0x01, 0xe1, 0xf5, 0x05, 0, 0, 0, 0, '{', '}'}; /* 100000001 */
    mca_safetensors_t *file = NULL;
    assert_int_equal(mca_safetensors_open_memory(bytes, sizeof bytes, "huge", &file),
                     MCA_ERROR_CORRUPT_FILE);

    memset(bytes, 0xff, 8); /* 2^64 - 1 */
    assert_int_equal(mca_safetensors_open_memory(bytes, sizeof bytes, "huge", &file),
                     MCA_ERROR_CORRUPT_FILE);
    assert_null(file);
}

static void test_offsets_beyond_data(void **state)
{
    (void)state;
    unsigned char data[24] = {0};
    assert_int_equal(
        open_status("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", data,
                    20),
        MCA_ERROR_CORRUPT_FILE);
    assert_error_mentions("'w'");
    assert_int_equal(
        open_status("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],"
                    "\"data_offsets\":[9007199254740988,9007199254740992]}}",
                    data, 4),
        MCA_ERROR_CORRUPT_FILE);
}

static void test_offsets_overlap(void **state)
{
    (void)state;
    unsigned char data[8] = {0};
    assert_int_equal(
        open_status("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}}",
                    data, 6),
        MCA_ERROR_CORRUPT_FILE);
    assert_error_mentions("'b'");
    assert_int_equal(
        open_status("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                    data, 4),
        MCA_ERROR_CORRUPT_FILE);
}

static void test_offsets_end_before_begin(void **state)
{
    (void)state;
    unsigned char data[8] = {0};
    assert_int_equal(
        open_status("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,0]}}", data,
                    8),
        MCA_ERROR_CORRUPT_FILE);
    assert_error_mentions("'a'");
}

static void test_offsets_gap(void **state)
{
    (void)state;
    unsigned char data[12] = {0};
    assert_int_equal(
        open_status("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                    data, 12),
        MCA_ERROR_CORRUPT_FILE);
    assert_int_equal(
        open_status("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", data,
                    8),
        MCA_ERROR_CORRUPT_FILE);
}

static void test_trailing_data(void **state)
{
    (void)state;
    unsigned char data[8] = {0};
    assert_int_equal(
        open_status("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", data, 8),
        MCA_ERROR_CORRUPT_FILE);
}

static void test_size_not_matching_shape(void **state)
{
    (void)state;
    unsigned char data[24] = {0};
    assert_int_equal(
        open_status("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", data,
                    20),
        MCA_ERROR_CORRUPT_FILE);
    assert_error_mentions("'w'");
    assert_int_equal(
        open_status("{\"w\":{\"dtype\":\"F16\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", data,
                    24),
        MCA_ERROR_CORRUPT_FILE);
}

static void test_size_overflow(void **state)
{
    (void)state;
    assert_int_equal(
        open_status("{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
                    "\"data_offsets\":[0,0]}}",
                    NULL, 0),
        MCA_ERROR_CORRUPT_FILE);
    assert_int_equal(
        open_status("{\"w\":{\"dtype\":\"F64\",\"shape\":[9007199254740992,4096],"
                    "\"data_offsets\":[0,0]}}",
                    NULL, 0),
        MCA_ERROR_CORRUPT_FILE);
}

static void test_header_not_object(void **state)
{
    (void)state;
    assert_int_equal(open_status("[1, 2]", NULL, 0), MCA_ERROR_CORRUPT_FILE);
    assert_int_equal(open_status("\"w\"", NULL, 0), MCA_ERROR_CORRUPT_FILE);
    assert_int_equal(open_status("{\"w\":[1]}", NULL, 0), MCA_ERROR_CORRUPT_FILE);
}

static void test_header_invalid_json(void **state)
{
    (void)state;
    assert_int_equal(open_status("{\"w\":{\"dtype\":\"F32\",", NULL, 0),
                     MCA_ERROR_CORRUPT_FILE);
    assert_int_equal(open_status("", NULL, 0), MCA_ERROR_CORRUPT_FILE);
    assert_int_equal(open_status("{} x", NULL, 0), MCA_ERROR_CORRUPT_FILE);
}

static void test_header_with_nul(void **state)
{
    (void)state;
    unsigned char bytes[12] = {4, 0, 0, 0, 0, 0, 0, 0, '{', '}', '\0', ' '};
    mca_safetensors_t *file = NULL;
    assert_int_equal(mca_safetensors_open_memory(bytes, sizeof bytes, "nul", &file),
                     MCA_ERROR_CORRUPT_FILE);
    assert_null(file);
}

static void test_shape_invalid_entries(void **state)
{
    (void)state;
    unsigned char data[8] = {0};
    assert_int_equal(
        open_status("{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", data, 8),
        MCA_ERROR_CORRUPT_FILE);
    assert_error_mentions("'w'");
    assert_int_equal(
        open_status("{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,8]}}", data,
                    8),
        MCA_ERROR_CORRUPT_FILE);
    assert_int_equal(
        open_status("{\"w\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", data,
                    8),
        MCA_ERROR_CORRUPT_FILE);
    assert_int_equal(
        open_status("{\"w\":{\"dtype\":\"F32\",\"shape\":[9007199254740994],"
                    "\"data_offsets\":[0,8]}}",
                    data, 8),
        MCA_ERROR_CORRUPT_FILE);
    assert_int_equal(
        open_status("{\"w\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", data, 8),
        MCA_ERROR_CORRUPT_FILE);
}

static void test_dtype_invalid(void **state)
{
    (void)state;
    unsigned char data[8] = {0};
    assert_int_equal(
        open_status("{\"w\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", data, 8),
        MCA_ERROR_CORRUPT_FILE);
    assert_error_mentions("F33");
    assert_int_equal(
        open_status("{\"w\":{\"dtype\":32,\"shape\":[2],\"data_offsets\":[0,8]}}", data, 8),
        MCA_ERROR_CORRUPT_FILE);
}

static void test_entry_fields_missing(void **state)
{
    (void)state;
    unsigned char data[8] = {0};
    assert_int_equal(open_status("{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", data, 8),
                     MCA_ERROR_CORRUPT_FILE);
    assert_int_equal(open_status("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", data, 8),
                     MCA_ERROR_CORRUPT_FILE);
    assert_int_equal(open_status("{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}", data, 8),
                     MCA_ERROR_CORRUPT_FILE);
    assert_int_equal(
        open_status("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8]}}", data, 8),
        MCA_ERROR_CORRUPT_FILE);
    assert_int_equal(
        open_status("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4,8]}}", data,
                    8),
        MCA_ERROR_CORRUPT_FILE);
    assert_int_equal(
        open_status("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8.5]}}", data,
                    8),
        MCA_ERROR_CORRUPT_FILE);
}

static void test_duplicate_keys(void **state)
{
    (void)state;
    unsigned char data[8] = {0};
    assert_int_equal(
        open_status("{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
                    "\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                    data, 8),
        MCA_ERROR_CORRUPT_FILE);
    assert_int_equal(
        open_status("{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[2],"
                    "\"data_offsets\":[0,8]}}",
                    data, 8),
        MCA_ERROR_CORRUPT_FILE);
    assert_int_equal(open_status("{\"__metadata__\":{},\"__metadata__\":{}}", NULL, 0),
                     MCA_ERROR_CORRUPT_FILE);
}

static void test_metadata_invalid(void **state)
{
    (void)state;
    assert_int_equal(open_status("{\"__metadata__\":{\"format\":1}}", NULL, 0),
                     MCA_ERROR_CORRUPT_FILE);
    assert_int_equal(open_status("{\"__metadata__\":[]}", NULL, 0), MCA_ERROR_CORRUPT_FILE);
}

/* ------------------------------------------------------------------------------------ */
/* Arguments and files                                                                  */
/* ------------------------------------------------------------------------------------ */

static void test_null_arguments(void **state)
{
    (void)state;
    unsigned char data[24];
    small_data(data);
    size_t size;
    unsigned char *bytes = build_file(small_header, data, sizeof data, &size);
    mca_safetensors_t *file = NULL;

    assert_int_equal(mca_safetensors_open(NULL, &file), MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_safetensors_open("x.safetensors", NULL), MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_safetensors_open_memory(NULL, size, "x", &file),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_safetensors_open_memory(bytes, size, NULL, &file),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_safetensors_open_memory(bytes, size, "x", NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_null(file);

    assert_int_equal(mca_safetensors_open_memory(bytes, size, "x", &file), MCA_SUCCESS);
    free(bytes);
    const char *dtype;
    int rank;
    int64_t shape[8] = {2, 3};
    float out[6];
    assert_int_equal(mca_safetensors_find(NULL, "w", &dtype, &rank, shape),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_safetensors_find(file, NULL, &dtype, &rank, shape),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_safetensors_find(file, "w", NULL, &rank, shape),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_safetensors_find(file, "w", &dtype, NULL, shape),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_safetensors_find(file, "w", &dtype, &rank, NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_safetensors_read_f32(NULL, "w", 2, shape, out),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_safetensors_read_f32(file, NULL, 2, shape, out),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_safetensors_read_f32(file, "w", 2, NULL, out),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_safetensors_read_f32(file, "w", 2, shape, NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_safetensors_read_f32(file, "w", -1, shape, out),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_safetensors_read_f32(file, "w", 9, shape, out),
                     MCA_ERROR_INVALID_ARGUMENT);
    mca_safetensors_close(file);
    mca_safetensors_close(NULL);
}

static void test_open_missing_path(void **state)
{
    (void)state;
    mca_safetensors_t *file = NULL;
    assert_int_equal(mca_safetensors_open("/nonexistent/mca/model.safetensors", &file),
                     MCA_ERROR_IO);
    assert_null(file);
    assert_error_mentions("/nonexistent/mca/model.safetensors");
    assert_error_mentions("No such file");
}

/* Writes a file into a new temporary directory and opens it from disk. */
static void test_open_from_path(void **state)
{
    (void)state;
    char directory[] = "/tmp/mca-test-safetensors-XXXXXX";
    assert_non_null(mkdtemp(directory));
    char path[128];
    snprintf(path, sizeof path, "%s/model.safetensors", directory);

    unsigned char data[24];
    small_data(data);
    size_t size;
    unsigned char *bytes = build_file(small_header, data, sizeof data, &size);
    FILE *stream = fopen(path, "wb");
    assert_non_null(stream);
    assert_int_equal(fwrite(bytes, 1, size, stream), size);
    assert_int_equal(fclose(stream), 0);

    mca_safetensors_t *file = NULL;
    assert_int_equal(mca_safetensors_open(path, &file), MCA_SUCCESS);
    const int64_t shape[2] = {2, 3};
    float out[6];
    assert_int_equal(mca_safetensors_read_f32(file, "w", 2, shape, out), MCA_SUCCESS);
    assert_true(out[1] == -2.5f);
    mca_safetensors_close(file);

    /* The same file cut short by one byte. */
    assert_int_equal(truncate(path, (off_t)size - 1), 0);
    file = NULL;
    assert_int_equal(mca_safetensors_open(path, &file), MCA_ERROR_CORRUPT_FILE);
    assert_null(file);

    /* A directory is not a file. */
    assert_int_equal(mca_safetensors_open(directory, &file), MCA_ERROR_IO);
    assert_null(file);

    free(bytes);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(rmdir(directory), 0);
}

/* Checks values of all-MiniLM-L6-v2 against bits read from its model.safetensors with
 * Python's struct module. */
static void test_real_model(void **state)
{
    (void)state;
    const char *directory = getenv("MCA_MODEL_DIR");
    if (directory == NULL)
        skip();
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", directory);
    struct stat info;
    if (stat(path, &info) != 0)
        skip();

    mca_safetensors_t *file = NULL;
    int status = mca_safetensors_open(path, &file);
    if (status != MCA_SUCCESS)
        fail_msg("opening %s failed: %s", path, mca_last_error());

    const char *dtype = NULL;
    int rank = 0;
    int64_t shape[8];
    assert_int_equal(
        mca_safetensors_find(file, "embeddings.word_embeddings.weight", &dtype, &rank, shape),
        MCA_SUCCESS);
    assert_string_equal(dtype, "F32");
    assert_int_equal(rank, 2);
    assert_int_equal(shape[0], 30522);
    assert_int_equal(shape[1], 384);

    float *embeddings = malloc((size_t)30522 * 384 * sizeof *embeddings);
    assert_non_null(embeddings);
    assert_int_equal(mca_safetensors_read_f32(file, "embeddings.word_embeddings.weight", 2,
                                              shape, embeddings),
                     MCA_SUCCESS);
    assert_int_equal(float_bits(embeddings[101 * 384 + 0]), 0xbc90568eu); /* [CLS] */
    assert_int_equal(float_bits(embeddings[101 * 384 + 1]), 0xbbf90e08u);
    free(embeddings);

    const int64_t bias_shape[1] = {384};
    float bias[384];
    assert_int_equal(mca_safetensors_read_f32(file, "encoder.layer.0.attention.self.query.bias",
                                              1, bias_shape, bias),
                     MCA_SUCCESS);
    assert_int_equal(float_bits(bias[0]), 0xbe31e063u);
    assert_int_equal(float_bits(bias[2]), 0x3de0d7f2u);
    assert_int_equal(float_bits(bias[383]), 0xbc905964u);
    mca_safetensors_close(file);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f32_read),
        cmocka_unit_test(test_f16_read),
        cmocka_unit_test(test_bf16_read),
        cmocka_unit_test(test_f32_unaligned),
        cmocka_unit_test(test_scalar_read),
        cmocka_unit_test(test_empty_tensor_read),
        cmocka_unit_test(test_find_reports_shape),
        cmocka_unit_test(test_shape_mismatch),
        cmocka_unit_test(test_rank_mismatch),
        cmocka_unit_test(test_missing_tensor),
        cmocka_unit_test(test_unsupported_dtype),
        cmocka_unit_test(test_rank_above_maximum),
        cmocka_unit_test(test_padded_header_metadata),
        cmocka_unit_test(test_empty_header),
        cmocka_unit_test(test_every_dtype_size),
        cmocka_unit_test(test_subbyte_dtype_size),
        cmocka_unit_test(test_every_prefix_corrupt),
        cmocka_unit_test(test_header_longer_than_file),
        cmocka_unit_test(test_header_above_maximum),
        cmocka_unit_test(test_offsets_beyond_data),
        cmocka_unit_test(test_offsets_overlap),
        cmocka_unit_test(test_offsets_end_before_begin),
        cmocka_unit_test(test_offsets_gap),
        cmocka_unit_test(test_trailing_data),
        cmocka_unit_test(test_size_not_matching_shape),
        cmocka_unit_test(test_size_overflow),
        cmocka_unit_test(test_header_not_object),
        cmocka_unit_test(test_header_invalid_json),
        cmocka_unit_test(test_header_with_nul),
        cmocka_unit_test(test_shape_invalid_entries),
        cmocka_unit_test(test_dtype_invalid),
        cmocka_unit_test(test_entry_fields_missing),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_metadata_invalid),
        cmocka_unit_test(test_null_arguments),
        cmocka_unit_test(test_open_missing_path),
        cmocka_unit_test(test_open_from_path),
        cmocka_unit_test(test_real_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
