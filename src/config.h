/* Reader for the config.json of a Hugging Face BERT model. */
#ifndef MCA_CONFIG_H
#define MCA_CONFIG_H

#include <stddef.h>

/* Largest config.json accepted. The config of all-MiniLM-L6-v2 is under 1 KB, and the
 * margin leaves room for large label maps. */
#define MCA_CONFIG_MAX_BYTES (16u * 1024u * 1024u)

/* Fields of config.json that the encoder uses, with the names Hugging Face gives them. */
typedef struct mca_bert_config {
    int vocab_size, hidden_size, num_hidden_layers, num_attention_heads, intermediate_size;
    int max_position_embeddings, type_vocab_size, pad_token_id;
    float layer_norm_eps;
} mca_bert_config_t;

/*
 * Reads and validates the config.json at `path`. Required positive integers: vocab_size,
 * hidden_size, num_hidden_layers, num_attention_heads, intermediate_size and
 * max_position_embeddings. Optional, with defaults: type_vocab_size (2), pad_token_id (0,
 * also for null) and layer_norm_eps (1e-12). hidden_size must be divisible by
 * num_attention_heads with a head width of at most MCA_MAX_HEAD_WIDTH.
 *
 * Errors: MCA_ERROR_IO when the file cannot be read, MCA_ERROR_CORRUPT_FILE when it is not
 * JSON, MCA_ERROR_INVALID_CONFIG for a missing, mistyped or out-of-range field, and
 * MCA_ERROR_NOT_IMPLEMENTED when hidden_act is not "gelu" or position_embedding_type is
 * not "absolute". *config is written only on success.
 */
int mca_bert_config_read(const char *path, mca_bert_config_t *config);

/* As mca_bert_config_read, on `length` bytes of JSON at `json` (borrowed), which need no
 * NUL terminator. `name` stands for the file in error messages. */
int mca_bert_config_parse(const char *json, size_t length, const char *name,
                          mca_bert_config_t *config);

#endif /* MCA_CONFIG_H */
