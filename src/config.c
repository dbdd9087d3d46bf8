/* Reader for the config.json of a Hugging Face BERT model. */
#include "config.h"

#include "error.h"
#include "fault.h"
#include "json.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Integer fields of config.json. Upper limits are far above published BERT-family models
 * and keep the product of any two fields at most 2^44, so sizes derived from them fit in
 * int64_t. */
typedef struct integer_field {
    const char *key;
    size_t offset; /* of the int in mca_bert_config_t */
    bool required;
    int default_value;
    int minimum, maximum;
} integer_field_t;

static const integer_field_t integer_fields[] = {
    {"vocab_size", offsetof(mca_bert_config_t, vocab_size), true, 0, 1, 1 << 24},
    {"hidden_size", offsetof(mca_bert_config_t, hidden_size), true, 0, 1, 1 << 16},
    {"num_hidden_layers", offsetof(mca_bert_config_t, num_hidden_layers), true, 0, 1, 1 << 10},
    {"num_attention_heads", offsetof(mca_bert_config_t, num_attention_heads), true, 0, 1,
     1 << 16},
    {"intermediate_size", offsetof(mca_bert_config_t, intermediate_size), true, 0, 1, 1 << 20},
    {"max_position_embeddings", offsetof(mca_bert_config_t, max_position_embeddings), true, 0,
     1, 1 << 20},
    {"type_vocab_size", offsetof(mca_bert_config_t, type_vocab_size), false, 2, 1, 1 << 16},
    /* Checked against vocab_size once both are read. */
    {"pad_token_id", offsetof(mca_bert_config_t, pad_token_id), false, 0, 0, (1 << 24) - 1},
};

static const char *json_type_name(const cJSON *item)
{
    if (cJSON_IsNull(item))
        return "null";
    if (cJSON_IsBool(item))
        return "a boolean";
    if (cJSON_IsNumber(item))
        return "a number";
    if (cJSON_IsString(item))
        return "a string";
    if (cJSON_IsArray(item))
        return "an array";
    if (cJSON_IsObject(item))
        return "an object";
    return "an invalid JSON value";
}

/* Finds the member `key` of `object`, or NULL if absent. A key given twice is an error,
 * because JSON parsers disagree on which value wins. Python's json keeps the last one and
 * cJSON the first. */
static int find_member(const cJSON *object, const char *key, const char *name,
                       const cJSON **member)
{
    const cJSON *found = NULL;
    const cJSON *item = NULL;

    cJSON_ArrayForEach(item, object) {
        if (strcmp(item->string, key) != 0)
            continue;
        if (found != NULL)
            return mca_error(MCA_ERROR_INVALID_CONFIG,
                             "field \"%s\" appears more than once in config '%s'", key, name);
        found = item;
    }
    *member = found;
    return MCA_SUCCESS;
}

static int read_integer_field(const cJSON *root, const integer_field_t *field, const char *name,
                              mca_bert_config_t *config)
{
    const cJSON *item = NULL;
    int *target = (int *)((char *)config + field->offset);

    int status = find_member(root, field->key, name, &item);
    if (status != MCA_SUCCESS)
        return status;

    /* Hugging Face writes null for a model without a padding token. */
    bool absent = item == NULL || (!field->required && cJSON_IsNull(item));
    if (absent && field->required)
        return mca_error(MCA_ERROR_INVALID_CONFIG,
                         "config '%s' is missing the required field \"%s\"", name, field->key);
    if (absent) {
        *target = field->default_value;
        return MCA_SUCCESS;
    }

    if (!cJSON_IsNumber(item))
        return mca_error(MCA_ERROR_INVALID_CONFIG,
                         "field \"%s\" in config '%s' is %s, expected an integer in %d .. %d",
                         field->key, name, json_type_name(item), field->minimum,
                         field->maximum);
    double value = item->valuedouble;
    if (!(value >= field->minimum && value <= field->maximum) || value != floor(value))
        return mca_error(MCA_ERROR_INVALID_CONFIG,
                         "field \"%s\" in config '%s' is %.17g, expected an integer in %d .. %d",
                         field->key, name, value, field->minimum, field->maximum);
    *target = (int)value;
    return MCA_SUCCESS;
}

static int read_layer_norm_eps(const cJSON *root, const char *name, float *eps)
{
    const cJSON *item = NULL;

    int status = find_member(root, "layer_norm_eps", name, &item);
    if (status != MCA_SUCCESS)
        return status;
    if (item == NULL) {
        *eps = 1e-12f;
        return MCA_SUCCESS;
    }
    if (!cJSON_IsNumber(item))
        return mca_error(MCA_ERROR_INVALID_CONFIG,
                         "field \"layer_norm_eps\" in config '%s' is %s, expected a positive "
                         "number", name, json_type_name(item));

    /* The check is on the float32 value, since 1e-50 rounds to 0 and 1e39 to infinity. */
    float value = (float)item->valuedouble;
    if (!(value > 0.0f) || !isfinite(value))
        return mca_error(MCA_ERROR_INVALID_CONFIG,
                         "field \"layer_norm_eps\" in config '%s' is %.17g, expected a finite "
                         "positive number within float32 range", name, item->valuedouble);
    *eps = value;
    return MCA_SUCCESS;
}

/* Checks an optional string field that the encoder supports with one value only. */
static int check_string_field(const cJSON *root, const char *key, const char *supported,
                              const char *name)
{
    const cJSON *item = NULL;

    int status = find_member(root, key, name, &item);
    if (status != MCA_SUCCESS || item == NULL)
        return status;
    if (!cJSON_IsString(item))
        return mca_error(MCA_ERROR_INVALID_CONFIG,
                         "field \"%s\" in config '%s' is %s, expected a string", key, name,
                         json_type_name(item));
    if (strcmp(item->valuestring, supported) != 0)
        return mca_error(MCA_ERROR_NOT_IMPLEMENTED,
                         "field \"%s\" in config '%s' is \"%s\", which is not implemented; "
                         "only \"%s\" is supported", key, name, item->valuestring, supported);
    return MCA_SUCCESS;
}

/* Checks the relations between fields. */
static int check_consistency(const mca_bert_config_t *config, const char *name)
{
    if (config->hidden_size % config->num_attention_heads != 0)
        return mca_error(MCA_ERROR_INVALID_CONFIG,
                         "hidden_size %d in config '%s' is not divisible by "
                         "num_attention_heads %d", config->hidden_size, name,
                         config->num_attention_heads);

    int head_width = config->hidden_size / config->num_attention_heads;
    if (head_width > MCA_MAX_HEAD_WIDTH)
        return mca_error(MCA_ERROR_INVALID_CONFIG,
                         "head width hidden_size / num_attention_heads = %d / %d = %d in config "
                         "'%s' exceeds the maximum of %d", config->hidden_size,
                         config->num_attention_heads, head_width, name, MCA_MAX_HEAD_WIDTH);

    if (config->pad_token_id >= config->vocab_size)
        return mca_error(MCA_ERROR_INVALID_CONFIG,
                         "pad_token_id %d in config '%s' is not below vocab_size %d",
                         config->pad_token_id, name, config->vocab_size);
    return MCA_SUCCESS;
}

/* Parses `length` bytes of `text`, which has a NUL after them, as exactly one JSON value. */
static int parse_json(const char *text, size_t length, const char *name, cJSON **root)
{
    const char *end = NULL;

    /* cJSON stops at a NUL, so the check for trailing bytes below would miss what follows. */
    const char *nul = memchr(text, '\0', length);
    if (nul != NULL)
        return mca_error(MCA_ERROR_CORRUPT_FILE,
                         "config '%s' contains a NUL byte at offset %zu; config.json must be "
                         "JSON text", name, (size_t)(nul - text));

    cJSON *parsed = mca_json_parse(text, length, &end, false);
    if (parsed == NULL)
        return mca_error(MCA_ERROR_CORRUPT_FILE,
                         "config '%s' is not valid JSON (error near byte %zu of %zu)", name,
                         end != NULL ? (size_t)(end - text) : (size_t)0, length);

    size_t position = (size_t)(end - text);
    while (position < length && strchr(" \t\r\n", text[position]) != NULL)
        position++;
    if (position != length) {
        cJSON_Delete(parsed);
        return mca_error(MCA_ERROR_CORRUPT_FILE,
                         "config '%s' has data after its JSON value at byte %zu of %zu", name,
                         position, length);
    }
    *root = parsed;
    return MCA_SUCCESS;
}

int mca_bert_config_parse(const char *json, size_t length, const char *name,
                          mca_bert_config_t *config)
{
    int status;
    char *text = NULL;
    cJSON *root = NULL;
    mca_bert_config_t result;

    if (json == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT, "config JSON text is NULL");
    if (name == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT, "config name is NULL");
    if (config == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT, "output config for '%s' is NULL", name);
    if (length > MCA_CONFIG_MAX_BYTES)
        return mca_error(MCA_ERROR_CORRUPT_FILE,
                         "config '%s' is %zu bytes, more than the maximum of %u bytes for a "
                         "config.json", name, length, MCA_CONFIG_MAX_BYTES);

    /* Copy the text, because cJSON needs a NUL terminator. */
    text = mca_malloc(length + 1);
    if (text == NULL)
        return mca_error(MCA_ERROR_OUT_OF_HOST_MEMORY,
                         "out of host memory for the %zu bytes of config '%s'", length, name);
    memcpy(text, json, length);
    text[length] = '\0';

    status = parse_json(text, length, name, &root);
    if (status != MCA_SUCCESS)
        goto cleanup;
    if (!cJSON_IsObject(root)) {
        status = mca_error(MCA_ERROR_INVALID_CONFIG, "config '%s' is %s, expected an object",
                           name, json_type_name(root));
        goto cleanup;
    }

    for (size_t i = 0; i < sizeof integer_fields / sizeof integer_fields[0]; i++) {
        status = read_integer_field(root, &integer_fields[i], name, &result);
        if (status != MCA_SUCCESS)
            goto cleanup;
    }
    status = read_layer_norm_eps(root, name, &result.layer_norm_eps);
    if (status != MCA_SUCCESS)
        goto cleanup;

    /* Hugging Face's "gelu" is the exact erf form, while "gelu_new" and "gelu_pytorch_tanh"
     * are the tanh approximation. */
    status = check_string_field(root, "hidden_act", "gelu", name);
    if (status != MCA_SUCCESS)
        goto cleanup;
    status = check_string_field(root, "position_embedding_type", "absolute", name);
    if (status != MCA_SUCCESS)
        goto cleanup;

    status = check_consistency(&result, name);
    if (status != MCA_SUCCESS)
        goto cleanup;
    *config = result;

cleanup:
    cJSON_Delete(root);
    free(text);
    return status;
}

static int io_error(const char *action, const char *path, int error_number)
{
    char reason[256];
    if (strerror_r(error_number, reason, sizeof reason) != 0)
        snprintf(reason, sizeof reason, "error %d", error_number);
    return mca_error(MCA_ERROR_IO, "failed to %s config '%s': %s", action, path, reason);
}

int mca_bert_config_read(const char *path, mca_bert_config_t *config)
{
    int status;
    char *text = NULL;

    if (path == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT, "config path is NULL");
    if (config == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT, "output config for '%s' is NULL", path);

    FILE *stream = fopen(path, "rb");
    if (stream == NULL)
        return io_error("open", path, errno);

    /* Grow the buffer up to one byte past the limit, so that a longer file is detected. */
    size_t capacity = 0;
    size_t length = 0;
    for (;;) {
        if (length == capacity) {
            if (capacity > MCA_CONFIG_MAX_BYTES)
                break;
            size_t grown = capacity == 0 ? 65536 : 2 * capacity;
            if (grown > (size_t)MCA_CONFIG_MAX_BYTES + 1)
                grown = (size_t)MCA_CONFIG_MAX_BYTES + 1;
            char *larger = mca_realloc(text, grown);
            if (larger == NULL) {
                status = mca_error(MCA_ERROR_OUT_OF_HOST_MEMORY,
                                   "out of host memory for reading config '%s'", path);
                goto cleanup;
            }
            text = larger;
            capacity = grown;
        }

        size_t count = fread(text + length, 1, capacity - length, stream);
        length += count;
        if (count > 0)
            continue;
        if (ferror(stream)) {
            status = io_error("read", path, errno);
            goto cleanup;
        }
        break;
    }
    status = mca_bert_config_parse(text, length, path, config);

cleanup:
    free(text);
    fclose(stream);
    return status;
}
