/*
 * libFuzzer target for the config.json reader (src/config.c).
 *
 * Parses the input with mca_bert_config_parse. Besides the sanitizers, the harness checks
 * the contract in src/config.h and aborts on a violation. A failure must return one of the
 * documented statuses with a message and leave the output alone. A success must return
 * fields within their documented ranges and relations.
 */
#include "config.h"

#include "error.h"
#include "mca.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void report_violation(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    fprintf(stderr, "fuzz_config: contract violation: ");
    vfprintf(stderr, format, args);
    fprintf(stderr, "\nlast error: %s\n", mca_last_error());
    va_end(args);
    abort();
}

static void check_positive(const char *field, int value)
{
    if (value < 1)
        report_violation("parsed config has %s = %d, expected a positive value", field, value);
}

static void check_parsed(const mca_bert_config_t *config)
{
    check_positive("vocab_size", config->vocab_size);
    check_positive("hidden_size", config->hidden_size);
    check_positive("num_hidden_layers", config->num_hidden_layers);
    check_positive("num_attention_heads", config->num_attention_heads);
    check_positive("intermediate_size", config->intermediate_size);
    check_positive("max_position_embeddings", config->max_position_embeddings);
    check_positive("type_vocab_size", config->type_vocab_size);

    if (config->hidden_size % config->num_attention_heads != 0)
        report_violation("parsed config has hidden_size %d not divisible by "
                         "num_attention_heads %d", config->hidden_size,
                         config->num_attention_heads);
    if (config->hidden_size / config->num_attention_heads > MCA_MAX_HEAD_WIDTH)
        report_violation("parsed config has head width %d, above %d",
                         config->hidden_size / config->num_attention_heads,
                         MCA_MAX_HEAD_WIDTH);
    if (config->pad_token_id < 0 || config->pad_token_id >= config->vocab_size)
        report_violation("parsed config has pad_token_id %d outside 0 .. vocab_size %d",
                         config->pad_token_id, config->vocab_size);
    if (!(config->layer_norm_eps > 0.0f) || !isfinite(config->layer_norm_eps))
        report_violation("parsed config has layer_norm_eps %g, expected a finite positive "
                         "value", (double)config->layer_norm_eps);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char empty[1];
    mca_bert_config_t config, untouched;
    memset(&config, 0xa5, sizeof config);
    memcpy(&untouched, &config, sizeof config);

    mca_error_clear();
    const char *json = size > 0 ? (const char *)data : empty;
    int status = mca_bert_config_parse(json, size, "fuzz input", &config);
    if (status == MCA_SUCCESS) {
        check_parsed(&config);
        return 0;
    }

    if (status != MCA_ERROR_CORRUPT_FILE && status != MCA_ERROR_INVALID_CONFIG &&
        status != MCA_ERROR_NOT_IMPLEMENTED)
        report_violation("parsing returned %d, which the header does not document", status);
    if (memcmp(&config, &untouched, sizeof config) != 0)
        report_violation("parsing failed with %d but wrote the output config", status);
    if (mca_last_error()[0] == '\0')
        report_violation("parsing failed with %d without an error message", status);
    return 0;
}
