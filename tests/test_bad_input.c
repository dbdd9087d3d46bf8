/*
 * Bad model files for the encoder, without the real model. Each test writes a tiny BERT to a
 * temporary directory and breaks it one way: non-finite weights, a safetensors header that
 * lies, a missing tensor, or a wrong or missing config field. Each load must fail with the
 * status and a message that names the bad value, and leave the output pointer alone.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <stdbool.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "test_util.h"

/* Shape of the tiny model: width 8, 2 heads, 1 layer. */
enum {
    TINY_VOCAB = 16,
    TINY_WIDTH = 8,
    TINY_HEADS = 2,
    TINY_INTERMEDIATE = 16,
    TINY_POSITIONS = 16,
    TINY_TYPES = 2,
};

static const char tiny_vocab[] =
    "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\nquick\nbrown\nfox\njumps\nover\nlazy\ndog\n";

typedef struct tensor_spec {
    const char *name;
    int rank;
    int64_t shape[2];
} tensor_spec_t;

static const tensor_spec_t tiny_tensors[] = {
    {"embeddings.word_embeddings.weight", 2, {TINY_VOCAB, TINY_WIDTH}},
    {"embeddings.position_embeddings.weight", 2, {TINY_POSITIONS, TINY_WIDTH}},
    {"embeddings.token_type_embeddings.weight", 2, {TINY_TYPES, TINY_WIDTH}},
    {"embeddings.LayerNorm.weight", 1, {TINY_WIDTH}},
    {"embeddings.LayerNorm.bias", 1, {TINY_WIDTH}},
    {"encoder.layer.0.attention.self.query.weight", 2, {TINY_WIDTH, TINY_WIDTH}},
    {"encoder.layer.0.attention.self.query.bias", 1, {TINY_WIDTH}},
    {"encoder.layer.0.attention.self.key.weight", 2, {TINY_WIDTH, TINY_WIDTH}},
    {"encoder.layer.0.attention.self.key.bias", 1, {TINY_WIDTH}},
    {"encoder.layer.0.attention.self.value.weight", 2, {TINY_WIDTH, TINY_WIDTH}},
    {"encoder.layer.0.attention.self.value.bias", 1, {TINY_WIDTH}},
    {"encoder.layer.0.attention.output.dense.weight", 2, {TINY_WIDTH, TINY_WIDTH}},
    {"encoder.layer.0.attention.output.dense.bias", 1, {TINY_WIDTH}},
    {"encoder.layer.0.attention.output.LayerNorm.weight", 1, {TINY_WIDTH}},
    {"encoder.layer.0.attention.output.LayerNorm.bias", 1, {TINY_WIDTH}},
    {"encoder.layer.0.intermediate.dense.weight", 2, {TINY_INTERMEDIATE, TINY_WIDTH}},
    {"encoder.layer.0.intermediate.dense.bias", 1, {TINY_INTERMEDIATE}},
    {"encoder.layer.0.output.dense.weight", 2, {TINY_WIDTH, TINY_INTERMEDIATE}},
    {"encoder.layer.0.output.dense.bias", 1, {TINY_WIDTH}},
    {"encoder.layer.0.output.LayerNorm.weight", 1, {TINY_WIDTH}},
    {"encoder.layer.0.output.LayerNorm.bias", 1, {TINY_WIDTH}},
};

#define TINY_TENSOR_COUNT (sizeof tiny_tensors / sizeof tiny_tensors[0])

/* One way to break the tiny model. A zero value breaks nothing. */
typedef struct defect {
    const char *tensor;        /* tensor that the fields below change */
    bool omit;                 /* leave the tensor out of the file */
    size_t bad_index;          /* flat index that gets bad_value when has_bad_value */
    bool has_bad_value;
    float bad_value;
    const char *dtype;         /* dtype written in the header instead of "F32" */
    int64_t shape_first;       /* first dimension written in the header when > 0 */
    bool swap_shape;           /* write the two dimensions in reverse order */
    int64_t offset_extra;      /* added to the end offset written in the header */
    const char *config_field;  /* config.json field to replace or remove */
    const char *config_value;  /* JSON text of its new value; NULL removes the field */
} defect_t;

typedef struct tiny_model {
    char dir[64];
} tiny_model_t;

static char *join_path(const char *dir, const char *name)
{
    size_t length = strlen(dir) + strlen(name) + 2;
    char *path = malloc(length);
    assert_non_null(path);
    snprintf(path, length, "%s/%s", dir, name);
    return path;
}

static void write_file(const tiny_model_t *model, const char *name, const void *bytes,
                       size_t size)
{
    char *path = join_path(model->dir, name);
    FILE *file = fopen(path, "wb");
    assert_non_null(file);
    assert_int_equal(fwrite(bytes, 1, size, file), size);
    assert_int_equal(fclose(file), 0);
    free(path);
}

static void write_config(const tiny_model_t *model, const defect_t *defect)
{
    cJSON *config = cJSON_CreateObject();
    assert_non_null(config);
    cJSON_AddNumberToObject(config, "vocab_size", TINY_VOCAB);
    cJSON_AddNumberToObject(config, "hidden_size", TINY_WIDTH);
    cJSON_AddNumberToObject(config, "num_hidden_layers", 1);
    cJSON_AddNumberToObject(config, "num_attention_heads", TINY_HEADS);
    cJSON_AddNumberToObject(config, "intermediate_size", TINY_INTERMEDIATE);
    cJSON_AddNumberToObject(config, "max_position_embeddings", TINY_POSITIONS);
    cJSON_AddNumberToObject(config, "type_vocab_size", TINY_TYPES);
    cJSON_AddNumberToObject(config, "layer_norm_eps", 1e-12);
    cJSON_AddStringToObject(config, "hidden_act", "gelu");
    if (defect->config_field != NULL) {
        cJSON_DeleteItemFromObjectCaseSensitive(config, defect->config_field);
        if (defect->config_value != NULL) {
            cJSON *value = cJSON_Parse(defect->config_value);
            assert_non_null(value);
            cJSON_AddItemToObject(config, defect->config_field, value);
        }
    }
    char *text = cJSON_Print(config);
    assert_non_null(text);
    write_file(model, "config.json", text, strlen(text));
    cJSON_free(text);
    cJSON_Delete(config);
}

static size_t element_count(const tensor_spec_t *spec)
{
    size_t count = 1;
    for (int i = 0; i < spec->rank; i++)
        count *= (size_t)spec->shape[i];
    return count;
}

/* Writes model.safetensors with small random weights, LayerNorm scales of 1 and `defect`. */
static void write_weights(const tiny_model_t *model, const defect_t *defect)
{
    size_t total = 0;
    for (size_t t = 0; t < TINY_TENSOR_COUNT; t++)
        total += element_count(&tiny_tensors[t]);
    float *data = malloc(total * sizeof *data);
    assert_non_null(data);

    cJSON *header = cJSON_CreateObject();
    assert_non_null(header);
    test_rng_t rng = {2024};
    size_t used = 0; /* floats written so far */
    for (size_t t = 0; t < TINY_TENSOR_COUNT; t++) {
        const tensor_spec_t *spec = &tiny_tensors[t];
        bool defective = defect->tensor != NULL && strcmp(defect->tensor, spec->name) == 0;
        if (defective && defect->omit)
            continue;
        size_t count = element_count(spec);
        float *values = data + used;
        bool is_scale = strstr(spec->name, "LayerNorm.weight") != NULL;
        for (size_t i = 0; i < count; i++)
            values[i] = is_scale ? 1.0f : 0.1f * test_rng_uniform(&rng);
        if (defective && defect->has_bad_value)
            values[defect->bad_index] = defect->bad_value;

        cJSON *entry = cJSON_AddObjectToObject(header, spec->name);
        assert_non_null(entry);
        cJSON_AddStringToObject(entry, "dtype",
                                defective && defect->dtype != NULL ? defect->dtype : "F32");
        cJSON *shape = cJSON_AddArrayToObject(entry, "shape");
        for (int i = 0; i < spec->rank; i++) {
            int64_t dimension = spec->shape[i];
            if (defective && defect->swap_shape)
                dimension = spec->shape[spec->rank - 1 - i];
            if (i == 0 && defective && defect->shape_first > 0)
                dimension = defect->shape_first;
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)dimension));
        }
        int64_t begin = (int64_t)(used * sizeof(float));
        int64_t end = begin + (int64_t)(count * sizeof(float));
        if (defective)
            end += defect->offset_extra;
        cJSON *offsets = cJSON_AddArrayToObject(entry, "data_offsets");
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)begin));
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)end));
        used += count;
    }

    char *text = cJSON_PrintUnformatted(header);
    assert_non_null(text);
    uint64_t header_length = strlen(text);
    size_t size = 8 + header_length + used * sizeof(float);
    unsigned char *file = malloc(size);
    assert_non_null(file);
    for (int i = 0; i < 8; i++)
        file[i] = (unsigned char)(header_length >> (8 * i));
    memcpy(file + 8, text, header_length);
    memcpy(file + 8 + header_length, data, used * sizeof(float)); /* little-endian host */
    write_file(model, "model.safetensors", file, size);

    free(file);
    cJSON_free(text);
    cJSON_Delete(header);
    free(data);
}

static void tiny_model_write(tiny_model_t *model, const defect_t *defect)
{
    snprintf(model->dir, sizeof model->dir, "/tmp/mca-test-bad-input-XXXXXX");
    assert_non_null(mkdtemp(model->dir));
    write_config(model, defect);
    write_file(model, "vocab.txt", tiny_vocab, sizeof tiny_vocab - 1);
    write_weights(model, defect);
}

static void tiny_model_remove(const tiny_model_t *model)
{
    static const char *const names[] = {"config.json", "vocab.txt", "model.safetensors"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char *path = join_path(model->dir, names[i]);
        unlink(path);
        free(path);
    }
    rmdir(model->dir);
}

/* Loads the tiny model with `defect` and returns the status. On failure the encoder output
 * must keep its old value; on success the loaded encoder is destroyed. */
static int load_with(const defect_t *defect)
{
    tiny_model_t model;
    tiny_model_write(&model, defect);
    mca_encoder_t *const sentinel = (mca_encoder_t *)&model;
    mca_encoder_t *encoder = sentinel;
    int status = mca_encoder_load(context, model.dir, &encoder);
    tiny_model_remove(&model);
    if (status == MCA_SUCCESS)
        mca_encoder_destroy(encoder);
    else
        assert_ptr_equal(encoder, sentinel);
    return status;
}

static void assert_error_mentions(const char *text)
{
    if (strstr(mca_last_error(), text) == NULL)
        fail_msg("error \"%s\" does not mention \"%s\"", mca_last_error(), text);
}

/* ------------------------------------------------------------------------------------ */
/* Tests                                                                                 */
/* ------------------------------------------------------------------------------------ */

/* The unbroken tiny model loads and embeds, and a text longer than its 16 positions is
 * truncated to 16 tokens. This is the control for every test below. */
static void tiny_model_loads(void **state)
{
    (void)state;
    tiny_model_t model;
    const defect_t none = {0};
    tiny_model_write(&model, &none);
    mca_encoder_t *encoder = NULL;
    int status = mca_encoder_load(context, model.dir, &encoder);
    tiny_model_remove(&model);
    if (status != MCA_SUCCESS)
        fail_msg("loading the tiny model failed: %s", mca_last_error());
    assert_int_equal(mca_encoder_hidden_size(encoder), TINY_WIDTH);
    assert_int_equal(mca_encoder_max_length(encoder), TINY_POSITIONS);

    const char *texts[2] = {"the quick brown fox",
                            "the quick brown fox jumps over the lazy dog the quick brown fox "
                            "jumps over the lazy dog"};
    float embeddings[2 * TINY_WIDTH];
    int token_counts[2] = {0, 0};
    mca_forward_options_t options;
    mca_forward_options_init(&options);
    assert_int_equal(mca_encoder_embed(encoder, &options, 2, texts, embeddings, token_counts,
                                       NULL),
                     MCA_SUCCESS);
    assert_int_equal(token_counts[0], 6);
    assert_int_equal(token_counts[1], TINY_POSITIONS);
    for (int i = 0; i < 2 * TINY_WIDTH; i++)
        assert_true(isfinite(embeddings[i]));
    mca_encoder_destroy(encoder);
}

static void non_finite_weights_rejected(void **state)
{
    (void)state;
    const struct {
        const char *tensor;
        size_t index;
        float value;
        const char *index_text;
    } cases[] = {
        {"embeddings.word_embeddings.weight", 5, NAN, "flat index 5"},
        {"encoder.layer.0.attention.self.value.weight", 63, INFINITY, "flat index 63"},
        {"encoder.layer.0.attention.self.key.bias", 0, -INFINITY, "flat index 0"},
        {"encoder.layer.0.output.LayerNorm.bias", 7, NAN, "flat index 7"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        defect_t defect = {.tensor = cases[i].tensor,
                           .bad_index = cases[i].index,
                           .has_bad_value = true,
                           .bad_value = cases[i].value};
        assert_int_equal(load_with(&defect), MCA_ERROR_CORRUPT_FILE);
        assert_error_mentions(cases[i].tensor);
        assert_error_mentions(cases[i].index_text);
    }
}

/* The header's dtype, shape or offsets disagree with the data or with config.json. */
static void lying_header_rejected(void **state)
{
    (void)state;
    const char *query = "encoder.layer.0.attention.self.query.weight";

    /* F16 for 4-byte values: the byte range is twice the size of the shape. */
    defect_t dtype = {.tensor = query, .dtype = "F16"};
    assert_int_equal(load_with(&dtype), MCA_ERROR_CORRUPT_FILE);
    assert_error_mentions(query);

    /* An integer dtype of the same size is consistent in the file but cannot be read. */
    defect_t integer = {.tensor = query, .dtype = "I32"};
    assert_int_equal(load_with(&integer), MCA_ERROR_UNSUPPORTED_DTYPE);
    assert_error_mentions("I32");

    /* A shape of 4 rows with the bytes of 8. */
    defect_t shape = {.tensor = query, .shape_first = 4};
    assert_int_equal(load_with(&shape), MCA_ERROR_CORRUPT_FILE);
    assert_error_mentions(query);

    /* The end offset of the last tensor points past the end of the file. */
    defect_t beyond = {.tensor = "encoder.layer.0.output.LayerNorm.bias", .offset_extra = 4};
    assert_int_equal(load_with(&beyond), MCA_ERROR_CORRUPT_FILE);
    assert_error_mentions("encoder.layer.0.output.LayerNorm.bias");

    /* Consistent in the file, but (8, 16) where config.json expects (16, 8). */
    const char *intermediate = "encoder.layer.0.intermediate.dense.weight";
    defect_t swapped = {.tensor = intermediate, .swap_shape = true};
    assert_int_equal(load_with(&swapped), MCA_ERROR_SHAPE_MISMATCH);
    assert_error_mentions(intermediate);
    assert_error_mentions("[16, 8]");
}

static void missing_tensor_rejected(void **state)
{
    (void)state;
    /* The last tensor the encoder reads, so that everything before it has been loaded and
     * must be released. */
    defect_t last = {.tensor = "encoder.layer.0.output.LayerNorm.bias", .omit = true};
    assert_int_equal(load_with(&last), MCA_ERROR_MISSING_TENSOR);
    assert_error_mentions("encoder.layer.0.output.LayerNorm.bias");

    defect_t value = {.tensor = "encoder.layer.0.attention.self.value.bias", .omit = true};
    assert_int_equal(load_with(&value), MCA_ERROR_MISSING_TENSOR);
    assert_error_mentions("encoder.layer.0.attention.self.value.bias");
}

static void invalid_config_rejected(void **state)
{
    (void)state;
    const struct {
        const char *field;
        const char *value;
        int status;
        const char *mention;
    } cases[] = {
        {"hidden_size", NULL, MCA_ERROR_INVALID_CONFIG, "hidden_size"},
        {"num_hidden_layers", "\"one\"", MCA_ERROR_INVALID_CONFIG, "num_hidden_layers"},
        {"num_attention_heads", "3", MCA_ERROR_INVALID_CONFIG, "num_attention_heads 3"},
        {"intermediate_size", "-16", MCA_ERROR_INVALID_CONFIG, "-16"},
        {"layer_norm_eps", "0", MCA_ERROR_INVALID_CONFIG, "layer_norm_eps"},
        {"hidden_act", "\"relu\"", MCA_ERROR_NOT_IMPLEMENTED, "relu"},
        /* Valid alone, but vocab.txt has 13 tokens. */
        {"vocab_size", "8", MCA_ERROR_SHAPE_MISMATCH, "vocab_size 8"},
        {"max_position_embeddings", "1", MCA_ERROR_INVALID_CONFIG, "max_position_embeddings"},
        /* Valid alone, but the weights are 8 wide. */
        {"hidden_size", "16", MCA_ERROR_SHAPE_MISMATCH, "embeddings.word_embeddings.weight"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        defect_t defect = {.config_field = cases[i].field, .config_value = cases[i].value};
        int status = load_with(&defect);
        if (status != cases[i].status)
            fail_msg("config %s = %s gave status %d (%s), expected %d", cases[i].field,
                     cases[i].value != NULL ? cases[i].value : "(removed)", status,
                     mca_last_error(), cases[i].status);
        assert_error_mentions(cases[i].mention);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(tiny_model_loads),
        cmocka_unit_test(non_finite_weights_rejected),
        cmocka_unit_test(lying_header_rejected),
        cmocka_unit_test(missing_tensor_rejected),
        cmocka_unit_test(invalid_config_rejected),
    };
    return cmocka_run_group_tests(tests, test_group_setup, test_group_teardown);
}
