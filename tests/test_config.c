/* Tests of the BERT config.json reader. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "mca.h"

/* config.json of sentence-transformers/all-MiniLM-L6-v2. */
static const char minilm_config[] =
    "{\n"
    "  \"_name_or_path\": \"nreimers/MiniLM-L6-H384-uncased\",\n"
    "  \"architectures\": [\n"
    "    \"BertModel\"\n"
    "  ],\n"
    "  \"attention_probs_dropout_prob\": 0.1,\n"
    "  \"gradient_checkpointing\": false,\n"
    "  \"hidden_act\": \"gelu\",\n"
    "  \"hidden_dropout_prob\": 0.1,\n"
    "  \"hidden_size\": 384,\n"
    "  \"initializer_range\": 0.02,\n"
    "  \"intermediate_size\": 1536,\n"
    "  \"layer_norm_eps\": 1e-12,\n"
    "  \"max_position_embeddings\": 512,\n"
    "  \"model_type\": \"bert\",\n"
    "  \"num_attention_heads\": 12,\n"
    "  \"num_hidden_layers\": 6,\n"
    "  \"pad_token_id\": 0,\n"
    "  \"position_embedding_type\": \"absolute\",\n"
    "  \"transformers_version\": \"4.8.2\",\n"
    "  \"type_vocab_size\": 2,\n"
    "  \"use_cache\": true,\n"
    "  \"vocab_size\": 30522\n"
    "}\n";

static const char *const required_fields[] = {
    "vocab_size",        "hidden_size",           "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "max_position_embeddings",
};

static int parse_text(const char *text, mca_bert_config_t *config)
{
    return mca_bert_config_parse(text, strlen(text), "config.json", config);
}

static void assert_error_mentions(const char *text)
{
    const char *message = mca_last_error();
    if (strstr(message, text) == NULL)
        fail_msg("error message \"%s\" does not mention \"%s\"", message, text);
}

/* Returns the MiniLM config with the line of `field` replaced by `"key": value`, keeping
 * the comma that ends the line. The caller frees the result. */
static char *replace_line(const char *field, const char *key, const char *value)
{
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":", field);
    const char *start = strstr(minilm_config, pattern);
    assert_non_null(start);
    const char *end = strchr(start, '\n');
    assert_non_null(end);
    const char *comma = end[-1] == ',' ? "," : "";

    size_t prefix = (size_t)(start - minilm_config);
    size_t size = strlen(minilm_config) + strlen(key) + strlen(value) + 8;
    char *text = malloc(size);
    assert_non_null(text);
    memcpy(text, minilm_config, prefix);
    snprintf(text + prefix, size - prefix, "\"%s\": %s%s%s", key, value, comma, end);
    return text;
}

/* Parses the MiniLM config with `field` set to the JSON text `value`. */
static int parse_with_value(const char *field, const char *value, mca_bert_config_t *config)
{
    char *text = replace_line(field, field, value);
    int status = parse_text(text, config);
    free(text);
    return status;
}

/* Parses the MiniLM config without `field`. */
static int parse_without(const char *field, mca_bert_config_t *config)
{
    char *text = replace_line(field, "removed_field", "0");
    int status = parse_text(text, config);
    free(text);
    return status;
}

/* ------------------------------------------------------------------------------------ */
/* Valid configs                                                                        */
/* ------------------------------------------------------------------------------------ */

static void test_minilm_config(void **state)
{
    (void)state;
    mca_bert_config_t config;
    assert_int_equal(parse_text(minilm_config, &config), MCA_SUCCESS);
    assert_int_equal(config.vocab_size, 30522);
    assert_int_equal(config.hidden_size, 384);
    assert_int_equal(config.num_hidden_layers, 6);
    assert_int_equal(config.num_attention_heads, 12);
    assert_int_equal(config.intermediate_size, 1536);
    assert_int_equal(config.max_position_embeddings, 512);
    assert_int_equal(config.type_vocab_size, 2);
    assert_int_equal(config.pad_token_id, 0);
    assert_true(config.layer_norm_eps == 1e-12f);
}

static void test_optional_defaults(void **state)
{
    (void)state;
    const char *text = "{\"vocab_size\": 100, \"hidden_size\": 64, \"num_hidden_layers\": 2,"
                       " \"num_attention_heads\": 4, \"intermediate_size\": 256,"
                       " \"max_position_embeddings\": 128}";
    mca_bert_config_t config;
    assert_int_equal(parse_text(text, &config), MCA_SUCCESS);
    assert_int_equal(config.type_vocab_size, 2);
    assert_int_equal(config.pad_token_id, 0);
    assert_true(config.layer_norm_eps == 1e-12f);
    assert_int_equal(config.hidden_size, 64);
}

static void test_pad_token_null(void **state)
{
    (void)state;
    mca_bert_config_t config;
    assert_int_equal(parse_with_value("pad_token_id", "null", &config), MCA_SUCCESS);
    assert_int_equal(config.pad_token_id, 0);
}

/* Integral values written with a fraction or an exponent are still integers. */
static void test_integral_number_forms(void **state)
{
    (void)state;
    mca_bert_config_t config;
    assert_int_equal(parse_with_value("hidden_size", "384.0", &config), MCA_SUCCESS);
    assert_int_equal(config.hidden_size, 384);
    assert_int_equal(parse_with_value("intermediate_size", "1.536e3", &config), MCA_SUCCESS);
    assert_int_equal(config.intermediate_size, 1536);
}

static void test_read_from_file(void **state)
{
    (void)state;
    char directory[] = "/tmp/mca-test-config-XXXXXX";
    assert_non_null(mkdtemp(directory));
    char path[128];
    snprintf(path, sizeof path, "%s/config.json", directory);
    FILE *stream = fopen(path, "wb");
    assert_non_null(stream);
    assert_int_equal(fputs(minilm_config, stream) >= 0, 1);
    assert_int_equal(fclose(stream), 0);

    mca_bert_config_t config;
    assert_int_equal(mca_bert_config_read(path, &config), MCA_SUCCESS);
    assert_int_equal(config.hidden_size, 384);
    assert_int_equal(config.vocab_size, 30522);

    /* A directory cannot be read as a file. */
    assert_int_equal(mca_bert_config_read(directory, &config), MCA_ERROR_IO);

    assert_int_equal(unlink(path), 0);
    assert_int_equal(rmdir(directory), 0);
}

static void test_real_model_config(void **state)
{
    (void)state;
    const char *directory = getenv("MCA_MODEL_DIR");
    if (directory == NULL)
        skip();
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", directory);
    if (access(path, R_OK) != 0)
        skip();

    mca_bert_config_t config;
    int status = mca_bert_config_read(path, &config);
    if (status != MCA_SUCCESS)
        fail_msg("reading %s failed: %s", path, mca_last_error());
    assert_int_equal(config.hidden_size, 384);
    assert_int_equal(config.num_attention_heads, 12);
}

/* ------------------------------------------------------------------------------------ */
/* Invalid configs                                                                      */
/* ------------------------------------------------------------------------------------ */

static void test_missing_required_field(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof required_fields / sizeof required_fields[0]; i++) {
        mca_bert_config_t config;
        int status = parse_without(required_fields[i], &config);
        if (status != MCA_ERROR_INVALID_CONFIG)
            fail_msg("config without %s gave status %d", required_fields[i], status);
        assert_error_mentions(required_fields[i]);
    }
}

static void test_string_instead_of_integer(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof required_fields / sizeof required_fields[0]; i++) {
        mca_bert_config_t config;
        int status = parse_with_value(required_fields[i], "\"384\"", &config);
        if (status != MCA_ERROR_INVALID_CONFIG)
            fail_msg("string %s gave status %d", required_fields[i], status);
        assert_error_mentions(required_fields[i]);
        assert_error_mentions("string");
    }
}

static void test_zero_and_negative(void **state)
{
    (void)state;
    const char *const values[] = {"0", "-1", "-384"};
    for (size_t i = 0; i < sizeof required_fields / sizeof required_fields[0]; i++) {
        for (size_t j = 0; j < sizeof values / sizeof values[0]; j++) {
            mca_bert_config_t config;
            int status = parse_with_value(required_fields[i], values[j], &config);
            if (status != MCA_ERROR_INVALID_CONFIG)
                fail_msg("%s = %s gave status %d", required_fields[i], values[j], status);
            assert_error_mentions(values[j]);
        }
    }
}

static void test_other_invalid_values(void **state)
{
    (void)state;
    mca_bert_config_t config;
    assert_int_equal(parse_with_value("hidden_size", "384.5", &config),
                     MCA_ERROR_INVALID_CONFIG);
    assert_error_mentions("384.5");
    assert_int_equal(parse_with_value("hidden_size", "1e300", &config),
                     MCA_ERROR_INVALID_CONFIG);
    assert_int_equal(parse_with_value("num_hidden_layers", "true", &config),
                     MCA_ERROR_INVALID_CONFIG);
    assert_int_equal(parse_with_value("vocab_size", "null", &config), MCA_ERROR_INVALID_CONFIG);
    assert_int_equal(parse_with_value("type_vocab_size", "0", &config),
                     MCA_ERROR_INVALID_CONFIG);
    assert_int_equal(parse_with_value("pad_token_id", "-1", &config), MCA_ERROR_INVALID_CONFIG);
    assert_int_equal(parse_with_value("pad_token_id", "30522", &config),
                     MCA_ERROR_INVALID_CONFIG);
    assert_error_mentions("30522");
}

static void test_layer_norm_eps_invalid(void **state)
{
    (void)state;
    const char *const values[] = {"0", "-1e-12", "1e-50", "1e39", "\"1e-12\""};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        mca_bert_config_t config;
        int status = parse_with_value("layer_norm_eps", values[i], &config);
        if (status != MCA_ERROR_INVALID_CONFIG)
            fail_msg("layer_norm_eps = %s gave status %d", values[i], status);
        assert_error_mentions("layer_norm_eps");
    }
}

static void test_heads_not_dividing(void **state)
{
    (void)state;
    mca_bert_config_t config;
    assert_int_equal(parse_with_value("num_attention_heads", "7", &config),
                     MCA_ERROR_INVALID_CONFIG);
    assert_error_mentions("384");
    assert_error_mentions("7");
}

static void test_head_width_too_large(void **state)
{
    (void)state;
    mca_bert_config_t config;
    assert_int_equal(parse_with_value("num_attention_heads", "1", &config),
                     MCA_ERROR_INVALID_CONFIG);
    assert_error_mentions("384");
}

static void test_hidden_act_relu(void **state)
{
    (void)state;
    mca_bert_config_t config;
    assert_int_equal(parse_with_value("hidden_act", "\"relu\"", &config),
                     MCA_ERROR_NOT_IMPLEMENTED);
    assert_error_mentions("relu");
    assert_int_equal(parse_with_value("hidden_act", "\"gelu_new\"", &config),
                     MCA_ERROR_NOT_IMPLEMENTED);
    assert_int_equal(parse_with_value("hidden_act", "1", &config), MCA_ERROR_INVALID_CONFIG);
}

static void test_position_embedding_relative(void **state)
{
    (void)state;
    mca_bert_config_t config;
    assert_int_equal(parse_with_value("position_embedding_type", "\"relative_key\"", &config),
                     MCA_ERROR_NOT_IMPLEMENTED);
    assert_error_mentions("relative_key");
}

static void test_duplicate_field(void **state)
{
    (void)state;
    mca_bert_config_t config;
    assert_int_equal(parse_with_value("hidden_size", "384, \"hidden_size\": 768", &config),
                     MCA_ERROR_INVALID_CONFIG);
    assert_error_mentions("hidden_size");
}

static void test_invalid_json(void **state)
{
    (void)state;
    mca_bert_config_t config;
    assert_int_equal(parse_text("{\"hidden_size\": 384,", &config), MCA_ERROR_CORRUPT_FILE);
    assert_int_equal(parse_text("", &config), MCA_ERROR_CORRUPT_FILE);
    assert_int_equal(parse_text("hidden_size = 384", &config), MCA_ERROR_CORRUPT_FILE);
    assert_int_equal(parse_text("[1, 2]", &config), MCA_ERROR_INVALID_CONFIG);
}

static void test_trailing_garbage(void **state)
{
    (void)state;
    size_t length = strlen(minilm_config);
    char *text = malloc(length + 3);
    assert_non_null(text);
    memcpy(text, minilm_config, length);
    memcpy(text + length, "}x", 3);
    mca_bert_config_t config;
    assert_int_equal(parse_text(text, &config), MCA_ERROR_CORRUPT_FILE);
    free(text);
}

static void test_nul_inside(void **state)
{
    (void)state;
    size_t length = strlen(minilm_config);
    char *text = malloc(length + 8);
    assert_non_null(text);
    memcpy(text, minilm_config, length);
    memcpy(text + length, "\0{\"x\":1}", 8);

    mca_bert_config_t config;
    assert_int_equal(mca_bert_config_parse(text, length + 8, "config.json", &config),
                     MCA_ERROR_CORRUPT_FILE);
    assert_error_mentions("NUL");

    /* A NUL in the middle of the object. */
    text[10] = '\0';
    assert_int_equal(mca_bert_config_parse(text, length, "config.json", &config),
                     MCA_ERROR_CORRUPT_FILE);
    free(text);
}

/* The length bounds the text, which needs no terminator. */
static void test_unterminated_text(void **state)
{
    (void)state;
    size_t length = strlen(minilm_config);
    char *text = malloc(length);
    assert_non_null(text);
    memcpy(text, minilm_config, length);
    mca_bert_config_t config;
    assert_int_equal(mca_bert_config_parse(text, length, "config.json", &config), MCA_SUCCESS);
    assert_int_equal(mca_bert_config_parse(text, length - 3, "config.json", &config),
                     MCA_ERROR_CORRUPT_FILE);
    free(text);
}

static void test_output_untouched_on_error(void **state)
{
    (void)state;
    mca_bert_config_t config;
    memset(&config, 0x5a, sizeof config);
    mca_bert_config_t before = config;
    assert_int_equal(parse_with_value("num_attention_heads", "7", &config),
                     MCA_ERROR_INVALID_CONFIG);
    assert_memory_equal(&config, &before, sizeof config);
}

static void test_null_arguments(void **state)
{
    (void)state;
    mca_bert_config_t config;
    assert_int_equal(mca_bert_config_parse(NULL, 2, "c", &config), MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_bert_config_parse("{}", 2, NULL, &config), MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_bert_config_parse("{}", 2, "c", NULL), MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_bert_config_read(NULL, &config), MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_bert_config_read("config.json", NULL), MCA_ERROR_INVALID_ARGUMENT);
}

static void test_missing_path(void **state)
{
    (void)state;
    mca_bert_config_t config;
    assert_int_equal(mca_bert_config_read("/nonexistent/mca/config.json", &config),
                     MCA_ERROR_IO);
    assert_error_mentions("/nonexistent/mca/config.json");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minilm_config),
        cmocka_unit_test(test_optional_defaults),
        cmocka_unit_test(test_pad_token_null),
        cmocka_unit_test(test_integral_number_forms),
        cmocka_unit_test(test_read_from_file),
        cmocka_unit_test(test_real_model_config),
        cmocka_unit_test(test_missing_required_field),
        cmocka_unit_test(test_string_instead_of_integer),
        cmocka_unit_test(test_zero_and_negative),
        cmocka_unit_test(test_other_invalid_values),
        cmocka_unit_test(test_layer_norm_eps_invalid),
        cmocka_unit_test(test_heads_not_dividing),
        cmocka_unit_test(test_head_width_too_large),
        cmocka_unit_test(test_hidden_act_relu),
        cmocka_unit_test(test_position_embedding_relative),
        cmocka_unit_test(test_duplicate_field),
        cmocka_unit_test(test_invalid_json),
        cmocka_unit_test(test_trailing_garbage),
        cmocka_unit_test(test_nul_inside),
        cmocka_unit_test(test_unterminated_text),
        cmocka_unit_test(test_output_untouched_on_error),
        cmocka_unit_test(test_null_arguments),
        cmocka_unit_test(test_missing_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
