/*
 * BERT-family sentence encoder: WordPiece tokens, embeddings, N encoder layers and mean
 * pooling, with self-attention running exact or Monte-Carlo through mca_attention_t.
 *
 * Per layer, on (batch * tokens) rows of width D, with intermediate width I:
 *   context = attention(hidden)                              mca_attention_forward_buffers
 *   hidden  = LayerNorm(hidden + context W_o^T + b_o)        mca_linear, encoder.cl
 *   hidden  = LayerNorm(hidden + GELU(hidden W_i^T + b_i) W_out^T + b_out)
 * Padded rows run through the row-wise steps too. The attention layer masks them as keys
 * and mean pooling skips them, so they never change a valid output.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"
#include "context.h"
#include "gemm.h"
#include "safetensors.h"
#include "tokenizer.h"

/* Size of the buffers for tensor names built here; the longest is about 60 bytes. */
#define ENCODER_MAX_NAME 128

/* Size of a tensor name with the optional "bert." prefix. */
#define ENCODER_MAX_RESOLVED_NAME (ENCODER_MAX_NAME + sizeof "bert.")

/* One layer's weights other than Q, K and V, which the attention layer owns. Dense weights
 * keep the (out, in) layout of the model file. */
typedef struct encoder_layer {
    mca_attention_t *attention;
    cl_mem attention_output_weight; /* (D, D) */
    cl_mem attention_output_bias;   /* (D) */
    cl_mem attention_norm_weight;   /* (D) */
    cl_mem attention_norm_bias;     /* (D) */
    cl_mem intermediate_weight;     /* (I, D) */
    cl_mem intermediate_bias;       /* (I) */
    cl_mem output_weight;           /* (D, I) */
    cl_mem output_bias;             /* (D) */
    cl_mem output_norm_weight;      /* (D) */
    cl_mem output_norm_bias;        /* (D) */
} encoder_layer_t;

/* A device buffer reused across calls and grown on demand. */
typedef struct encoder_workspace {
    cl_mem buffer;
    size_t capacity; /* bytes */
} encoder_workspace_t;

struct mca_encoder {
    mca_context_t *context; /* borrowed */
    mca_bert_config_t config;
    mca_tokenizer_t *tokenizer;

    cl_mem word_embeddings;       /* (vocab_size, D) */
    cl_mem position_embeddings;   /* (max_position_embeddings, D) */
    cl_mem token_type_embeddings; /* (type_vocab_size, D); only row 0 is used */
    cl_mem embedding_norm_weight; /* (D) */
    cl_mem embedding_norm_bias;   /* (D) */

    encoder_layer_t *layers; /* config.num_hidden_layers entries, zeroed until loaded */

    encoder_workspace_t ids;           /* (batch, tokens) int32 token ids */
    encoder_workspace_t valid_lengths; /* (batch) int32 */
    encoder_workspace_t hidden;        /* (batch, tokens, D) */
    encoder_workspace_t attention;     /* (batch, tokens, D) attention context */
    encoder_workspace_t projected;     /* (batch, tokens, D) dense output before the residual */
    encoder_workspace_t intermediate;  /* (batch, tokens, I) */
    encoder_workspace_t pooled;        /* (batch, D) */
};

/* ------------------------------------------------------------------------------------ */
/* Loading                                                                               */
/* ------------------------------------------------------------------------------------ */

/* Returns model_dir + "/" + file_name in a new string, or NULL when out of memory. */
static char *join_path(const char *model_dir, const char *file_name)
{
    size_t length = strlen(model_dir) + 1 + strlen(file_name) + 1;
    char *path = mca_malloc(length);
    if (path != NULL)
        snprintf(path, length, "%s/%s", model_dir, file_name);
    return path;
}

/* Finds tensor `name`, or else "bert." + name, the prefix of checkpoints saved from
 * BertForPreTraining and similar heads, and copies the name found into `resolved`. */
static int resolve_tensor_name(const mca_context_t *context, const mca_safetensors_t *file,
                               const char *path, const char *name,
                               char resolved[ENCODER_MAX_RESOLVED_NAME])
{
    const char *dtype;
    int rank;
    int64_t shape[MCA_SAFETENSORS_MAX_RANK];

    snprintf(resolved, ENCODER_MAX_RESOLVED_NAME, "%s", name);
    int status = mca_safetensors_find(file, resolved, &dtype, &rank, shape);
    if (status != MCA_ERROR_MISSING_TENSOR)
        return status;

    snprintf(resolved, ENCODER_MAX_RESOLVED_NAME, "bert.%s", name);
    status = mca_safetensors_find(file, resolved, &dtype, &rank, shape);
    if (status == MCA_ERROR_MISSING_TENSOR)
        return mca_context_error(context, MCA_ERROR_MISSING_TENSOR,
                                 "tensor \"%s\" (or \"bert.%s\") not found in %s; the encoder "
                                 "expects a BERT checkpoint with Hugging Face tensor names",
                                 name, name, path);
    return status;
}

/* Reads tensor `name` of the given shape as float32 into a new host array (freed by the
 * caller) and rejects non-finite values. */
static int read_tensor(const mca_context_t *context, const mca_safetensors_t *file,
                       const char *path, const char *name, int rank, const int64_t *shape,
                       float **values)
{
    char resolved[ENCODER_MAX_RESOLVED_NAME];
    int status = resolve_tensor_name(context, file, path, name, resolved);
    if (status != MCA_SUCCESS)
        return status;

    size_t count = 1;
    for (int i = 0; i < rank; ++i)
        count *= (size_t)shape[i];
    float *data = mca_malloc(count * sizeof *data);
    if (data == NULL)
        return mca_context_error(context, MCA_ERROR_OUT_OF_HOST_MEMORY,
                                 "allocating %zu floats for tensor \"%s\" failed", count,
                                 resolved);

    status = mca_safetensors_read_f32(file, resolved, rank, shape, data);
    if (status != MCA_SUCCESS) {
        /* The reader's message names the tensor and both shapes; log it as well. */
        mca_log(context, MCA_LOG_ERROR, "%s", mca_last_error());
        goto cleanup;
    }
    for (size_t i = 0; i < count; ++i) {
        if (!isfinite(data[i])) {
            status = mca_context_error(context, MCA_ERROR_CORRUPT_FILE,
                                       "tensor \"%s\" in %s has a non-finite value (%g) at "
                                       "flat index %zu; the encoder needs finite weights, so "
                                       "replace the model file",
                                       resolved, path, data[i], i);
            goto cleanup;
        }
    }

    *values = data;
    data = NULL;

cleanup:
    free(data);
    return status;
}

/* Reads tensor `name` of the given shape into a new device buffer. */
static int load_tensor_buffer(const mca_context_t *context, const mca_safetensors_t *file,
                              const char *path, const char *name, int rank,
                              const int64_t *shape, cl_mem *buffer)
{
    float *values = NULL;
    int status = read_tensor(context, file, path, name, rank, shape, &values);
    if (status != MCA_SUCCESS)
        return status;

    size_t count = 1;
    for (int i = 0; i < rank; ++i)
        count *= (size_t)shape[i];
    status = mca_buffer_create(context, count * sizeof(float), values, name, buffer);
    free(values);
    return status;
}

static int load_embeddings(mca_encoder_t *encoder, const mca_safetensors_t *file,
                           const char *path)
{
    const mca_context_t *context = encoder->context;
    const mca_bert_config_t *config = &encoder->config;
    const int64_t hidden = config->hidden_size;
    const int64_t word_shape[2] = {config->vocab_size, hidden};
    const int64_t position_shape[2] = {config->max_position_embeddings, hidden};
    const int64_t type_shape[2] = {config->type_vocab_size, hidden};
    const int64_t vector_shape[1] = {hidden};

    int status = load_tensor_buffer(context, file, path, "embeddings.word_embeddings.weight", 2,
                                    word_shape, &encoder->word_embeddings);
    if (status == MCA_SUCCESS)
        status = load_tensor_buffer(context, file, path,
                                    "embeddings.position_embeddings.weight", 2, position_shape,
                                    &encoder->position_embeddings);
    if (status == MCA_SUCCESS)
        status = load_tensor_buffer(context, file, path,
                                    "embeddings.token_type_embeddings.weight", 2, type_shape,
                                    &encoder->token_type_embeddings);
    if (status == MCA_SUCCESS)
        status = load_tensor_buffer(context, file, path, "embeddings.LayerNorm.weight", 1,
                                    vector_shape, &encoder->embedding_norm_weight);
    if (status == MCA_SUCCESS)
        status = load_tensor_buffer(context, file, path, "embeddings.LayerNorm.bias", 1,
                                    vector_shape, &encoder->embedding_norm_bias);
    return status;
}

/* Reads the query, key and value projections of layer `index` and creates its attention
 * layer from them. */
static int load_attention(mca_encoder_t *encoder, const mca_safetensors_t *file,
                          const char *path, int index, mca_attention_t **attention)
{
    const mca_context_t *context = encoder->context;
    const int64_t hidden = encoder->config.hidden_size;
    const int64_t matrix_shape[2] = {hidden, hidden};
    const int64_t vector_shape[1] = {hidden};
    static const char *const projections[3] = {"query", "key", "value"};
    float *weights[3] = {NULL, NULL, NULL};
    float *biases[3] = {NULL, NULL, NULL};
    char name[ENCODER_MAX_NAME];
    int status = MCA_SUCCESS;

    for (int p = 0; p < 3 && status == MCA_SUCCESS; ++p) {
        snprintf(name, sizeof name, "encoder.layer.%d.attention.self.%s.weight", index,
                 projections[p]);
        status = read_tensor(context, file, path, name, 2, matrix_shape, &weights[p]);
        if (status != MCA_SUCCESS)
            break;
        snprintf(name, sizeof name, "encoder.layer.%d.attention.self.%s.bias", index,
                 projections[p]);
        status = read_tensor(context, file, path, name, 1, vector_shape, &biases[p]);
    }
    if (status != MCA_SUCCESS)
        goto cleanup;

    mca_attention_weights_t attention_weights = {
        .hidden_size = encoder->config.hidden_size,
        .heads = encoder->config.num_attention_heads,
        .query_weight = weights[0],
        .query_bias = biases[0],
        .key_weight = weights[1],
        .key_bias = biases[1],
        .value_weight = weights[2],
        .value_bias = biases[2],
    };
    status = mca_attention_create(encoder->context, &attention_weights, attention);

cleanup:
    for (int p = 0; p < 3; ++p) {
        free(weights[p]);
        free(biases[p]);
    }
    return status;
}

/* One dense or LayerNorm tensor of a layer: the name after "encoder.layer.N.", its shape
 * and where the buffer goes. */
typedef struct layer_tensor {
    const char *suffix;
    int rank;
    int64_t shape[2];
    cl_mem *buffer;
} layer_tensor_t;

static int load_layer(mca_encoder_t *encoder, const mca_safetensors_t *file, const char *path,
                      int index, encoder_layer_t *layer)
{
    const int64_t hidden = encoder->config.hidden_size;
    const int64_t intermediate = encoder->config.intermediate_size;
    const layer_tensor_t tensors[] = {
        {"attention.output.dense.weight", 2, {hidden, hidden}, &layer->attention_output_weight},
        {"attention.output.dense.bias", 1, {hidden, 0}, &layer->attention_output_bias},
        {"attention.output.LayerNorm.weight", 1, {hidden, 0}, &layer->attention_norm_weight},
        {"attention.output.LayerNorm.bias", 1, {hidden, 0}, &layer->attention_norm_bias},
        {"intermediate.dense.weight", 2, {intermediate, hidden}, &layer->intermediate_weight},
        {"intermediate.dense.bias", 1, {intermediate, 0}, &layer->intermediate_bias},
        {"output.dense.weight", 2, {hidden, intermediate}, &layer->output_weight},
        {"output.dense.bias", 1, {hidden, 0}, &layer->output_bias},
        {"output.LayerNorm.weight", 1, {hidden, 0}, &layer->output_norm_weight},
        {"output.LayerNorm.bias", 1, {hidden, 0}, &layer->output_norm_bias},
    };

    int status = load_attention(encoder, file, path, index, &layer->attention);
    for (size_t t = 0; t < sizeof tensors / sizeof tensors[0] && status == MCA_SUCCESS; ++t) {
        char name[ENCODER_MAX_NAME];
        snprintf(name, sizeof name, "encoder.layer.%d.%s", index, tensors[t].suffix);
        status = load_tensor_buffer(encoder->context, file, path, name, tensors[t].rank,
                                    tensors[t].shape, tensors[t].buffer);
    }
    return status;
}

/* Checks what this file relies on beyond the config reader's own checks. */
static int check_config(const mca_context_t *context, const mca_bert_config_t *config,
                        const mca_tokenizer_t *tokenizer, const char *model_dir)
{
    int vocabulary = mca_tokenizer_vocab_size(tokenizer);
    if (vocabulary > config->vocab_size)
        return mca_context_error(context, MCA_ERROR_SHAPE_MISMATCH,
                                 "vocab.txt in %s has %d tokens but config.json has "
                                 "vocab_size %d; the token ids would index past the word "
                                 "embeddings",
                                 model_dir, vocabulary, config->vocab_size);
    if (config->max_position_embeddings < 2)
        return mca_context_error(context, MCA_ERROR_INVALID_CONFIG,
                                 "max_position_embeddings is %d in %s/config.json; at least 2 "
                                 "are needed for [CLS] and [SEP]",
                                 config->max_position_embeddings, model_dir);
    if (config->type_vocab_size < 1)
        return mca_context_error(context, MCA_ERROR_INVALID_CONFIG,
                                 "type_vocab_size is %d in %s/config.json; the encoder needs "
                                 "token type 0",
                                 config->type_vocab_size, model_dir);
    return MCA_SUCCESS;
}

/* Loads config.json and vocab.txt into the encoder and checks them against each other. */
static int load_config_and_vocabulary(mca_encoder_t *encoder, const char *model_dir)
{
    const mca_context_t *context = encoder->context;
    char *config_path = join_path(model_dir, "config.json");
    char *vocab_path = join_path(model_dir, "vocab.txt");
    int status = MCA_SUCCESS;

    if (config_path == NULL || vocab_path == NULL) {
        status = mca_context_error(context, MCA_ERROR_OUT_OF_HOST_MEMORY,
                                   "allocating the model file paths failed");
        goto cleanup;
    }

    status = mca_bert_config_read(config_path, &encoder->config);
    if (status != MCA_SUCCESS) {
        mca_log(context, MCA_LOG_ERROR, "%s", mca_last_error());
        goto cleanup;
    }
    status = mca_tokenizer_load(vocab_path, &encoder->tokenizer);
    if (status != MCA_SUCCESS) {
        mca_log(context, MCA_LOG_ERROR, "%s", mca_last_error());
        goto cleanup;
    }
    status = check_config(context, &encoder->config, encoder->tokenizer, model_dir);

cleanup:
    free(config_path);
    free(vocab_path);
    return status;
}

/* Loads model.safetensors: the embeddings and every layer. */
static int load_weights(mca_encoder_t *encoder, const char *model_dir)
{
    const mca_context_t *context = encoder->context;
    mca_safetensors_t *file = NULL;
    char *path = join_path(model_dir, "model.safetensors");
    int status = MCA_SUCCESS;

    if (path == NULL) {
        status = mca_context_error(context, MCA_ERROR_OUT_OF_HOST_MEMORY,
                                   "allocating the model file path failed");
        goto cleanup;
    }
    status = mca_safetensors_open(path, &file);
    if (status != MCA_SUCCESS) {
        mca_log(context, MCA_LOG_ERROR, "%s", mca_last_error());
        goto cleanup;
    }

    status = load_embeddings(encoder, file, path);
    for (int layer = 0; layer < encoder->config.num_hidden_layers && status == MCA_SUCCESS;
         ++layer)
        status = load_layer(encoder, file, path, layer, &encoder->layers[layer]);

cleanup:
    mca_safetensors_close(file);
    free(path);
    return status;
}

mca_status_t mca_encoder_load(mca_context_t *context, const char *model_dir,
                              mca_encoder_t **encoder)
{
    if (context == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT, "mca_encoder_load: context is NULL");
    if (model_dir == NULL)
        return mca_context_error(context, MCA_ERROR_INVALID_ARGUMENT,
                                 "mca_encoder_load: model_dir is NULL");
    if (encoder == NULL)
        return mca_context_error(context, MCA_ERROR_INVALID_ARGUMENT,
                                 "mca_encoder_load: encoder is NULL");

    struct stat info;
    const char *problem = NULL;
    char reason[256]; /* strerror_r, because strerror need not be thread-safe */
    if (stat(model_dir, &info) != 0) {
        int error_number = errno;
        if (strerror_r(error_number, reason, sizeof reason) != 0)
            snprintf(reason, sizeof reason, "error %d", error_number);
        problem = reason;
    } else if (!S_ISDIR(info.st_mode))
        problem = "not a directory";
    if (problem != NULL)
        return mca_context_error(context, MCA_ERROR_IO,
                                 "model directory \"%s\" cannot be used: %s; pass the "
                                 "directory that holds config.json, model.safetensors and "
                                 "vocab.txt",
                                 model_dir, problem);

    mca_encoder_t *result = mca_calloc(1, sizeof *result);
    if (result == NULL)
        return mca_context_error(context, MCA_ERROR_OUT_OF_HOST_MEMORY,
                                 "allocating the encoder failed");
    result->context = context;

    int status = load_config_and_vocabulary(result, model_dir);
    if (status != MCA_SUCCESS)
        goto cleanup;

    result->layers = mca_calloc((size_t)result->config.num_hidden_layers, sizeof *result->layers);
    if (result->layers == NULL) {
        status = mca_context_error(context, MCA_ERROR_OUT_OF_HOST_MEMORY,
                                   "allocating %d encoder layers failed",
                                   result->config.num_hidden_layers);
        goto cleanup;
    }
    status = load_weights(result, model_dir);
    if (status != MCA_SUCCESS)
        goto cleanup;

    mca_log(context, MCA_LOG_INFO,
            "loaded encoder from %s: %d layers, hidden size %d, %d heads, intermediate size "
            "%d, maximum length %d tokens",
            model_dir, result->config.num_hidden_layers, result->config.hidden_size,
            result->config.num_attention_heads, result->config.intermediate_size,
            result->config.max_position_embeddings);
    *encoder = result;
    result = NULL;

cleanup:
    mca_encoder_destroy(result);
    return status;
}

static void release_layer(encoder_layer_t *layer)
{
    mca_attention_destroy(layer->attention);
    layer->attention = NULL;
    mca_buffer_release(&layer->attention_output_weight);
    mca_buffer_release(&layer->attention_output_bias);
    mca_buffer_release(&layer->attention_norm_weight);
    mca_buffer_release(&layer->attention_norm_bias);
    mca_buffer_release(&layer->intermediate_weight);
    mca_buffer_release(&layer->intermediate_bias);
    mca_buffer_release(&layer->output_weight);
    mca_buffer_release(&layer->output_bias);
    mca_buffer_release(&layer->output_norm_weight);
    mca_buffer_release(&layer->output_norm_bias);
}

void mca_encoder_destroy(mca_encoder_t *encoder)
{
    if (encoder == NULL)
        return;

    if (encoder->layers != NULL) {
        for (int layer = 0; layer < encoder->config.num_hidden_layers; ++layer)
            release_layer(&encoder->layers[layer]);
        free(encoder->layers);
    }
    mca_buffer_release(&encoder->word_embeddings);
    mca_buffer_release(&encoder->position_embeddings);
    mca_buffer_release(&encoder->token_type_embeddings);
    mca_buffer_release(&encoder->embedding_norm_weight);
    mca_buffer_release(&encoder->embedding_norm_bias);

    mca_buffer_release(&encoder->ids.buffer);
    mca_buffer_release(&encoder->valid_lengths.buffer);
    mca_buffer_release(&encoder->hidden.buffer);
    mca_buffer_release(&encoder->attention.buffer);
    mca_buffer_release(&encoder->projected.buffer);
    mca_buffer_release(&encoder->intermediate.buffer);
    mca_buffer_release(&encoder->pooled.buffer);

    mca_tokenizer_destroy(encoder->tokenizer);
    free(encoder);
}

int mca_encoder_hidden_size(const mca_encoder_t *encoder)
{
    return encoder != NULL ? encoder->config.hidden_size : 0;
}

int mca_encoder_max_length(const mca_encoder_t *encoder)
{
    return encoder != NULL ? encoder->config.max_position_embeddings : 0;
}

/* ------------------------------------------------------------------------------------ */
/* Tokenization                                                                          */
/* ------------------------------------------------------------------------------------ */

/* Token ids of a batch, padded to the longest text. */
typedef struct token_batch {
    int32_t *ids;       /* (count, tokens); padding is id 0 */
    int *valid_lengths; /* (count) */
    int tokens;         /* maximum valid length, at least 2 */
} token_batch_t;

static void token_batch_free(token_batch_t *batch)
{
    free(batch->ids);
    free(batch->valid_lengths);
    batch->ids = NULL;
    batch->valid_lengths = NULL;
}

/* Logs that text `index` was cut to `kept` tokens, with its full token count. The tokenizer
 * only flags truncation, so the text is encoded again without a limit: every token comes
 * from at least one byte, so bytes + 2 ids ([CLS] and [SEP]) always suffice. */
static void warn_truncated(const mca_encoder_t *encoder, int index, const char *text, int kept)
{
    const size_t bytes = strlen(text);
    int full_count = -1;
    if (bytes <= (size_t)INT_MAX - 2) {
        int32_t *ids = mca_malloc((bytes + 2) * sizeof *ids);
        int truncated = 0;
        if (ids != NULL &&
            mca_tokenizer_encode(encoder->tokenizer, text, bytes, (int)(bytes + 2), ids,
                                 &full_count, &truncated) != MCA_SUCCESS)
            full_count = -1;
        free(ids);
    }

    if (full_count > 0)
        mca_log(encoder->context, MCA_LOG_WARNING,
                "text %d has %d tokens with [CLS] and [SEP], more than the model's maximum of "
                "%d; kept the first %d",
                index, full_count, encoder->config.max_position_embeddings, kept);
    else
        mca_log(encoder->context, MCA_LOG_WARNING,
                "text %d has more tokens than the model's maximum of %d; kept the first %d",
                index, encoder->config.max_position_embeddings, kept);
}

/* Tokenizes every text into at most max_position_embeddings ids, with a warning for each
 * truncated text, and packs the ids into rows padded to the longest text. */
static int tokenize_batch(mca_encoder_t *encoder, int count, const char *const *texts,
                          token_batch_t *batch)
{
    const mca_context_t *context = encoder->context;
    const int max_length = encoder->config.max_position_embeddings;
    int32_t *scratch = mca_malloc((size_t)max_length * sizeof *scratch);
    int32_t *packed = NULL; /* every text's ids back to back */
    size_t packed_count = 0, packed_capacity = 0;
    token_batch_t result = {NULL, mca_calloc((size_t)count, sizeof(int)), 2};
    int status = MCA_SUCCESS;

    if (scratch == NULL || result.valid_lengths == NULL) {
        status = mca_context_error(context, MCA_ERROR_OUT_OF_HOST_MEMORY,
                                   "allocating token buffers for %d texts failed", count);
        goto cleanup;
    }

    for (int t = 0; t < count; ++t) {
        int length = 0, truncated = 0;
        status = mca_tokenizer_encode(encoder->tokenizer, texts[t], strlen(texts[t]),
                                      max_length, scratch, &length, &truncated);
        if (status != MCA_SUCCESS) {
            /* mca_context_error writes the buffer that mca_last_error returns, so the
             * tokenizer's message is copied first. */
            char reason[512];
            snprintf(reason, sizeof reason, "%s", mca_last_error());
            status = mca_context_error(context, status, "tokenizing text %d failed: %s", t,
                                       reason);
            goto cleanup;
        }
        if (truncated)
            warn_truncated(encoder, t, texts[t], length);

        if (packed_count + (size_t)length > packed_capacity) {
            size_t capacity = packed_capacity > 0 ? 2 * packed_capacity : 4096;
            while (capacity < packed_count + (size_t)length)
                capacity *= 2;
            int32_t *grown = mca_realloc(packed, capacity * sizeof *grown);
            if (grown == NULL) {
                status = mca_context_error(context, MCA_ERROR_OUT_OF_HOST_MEMORY,
                                           "allocating %zu token ids failed", capacity);
                goto cleanup;
            }
            packed = grown;
            packed_capacity = capacity;
        }
        memcpy(packed + packed_count, scratch, (size_t)length * sizeof *scratch);
        packed_count += (size_t)length;
        result.valid_lengths[t] = length;
        if (length > result.tokens)
            result.tokens = length;
    }

    /* Padding ids never reach a valid output, so id 0, which every vocabulary has, is
     * as good as any. */
    result.ids = mca_calloc((size_t)count * (size_t)result.tokens, sizeof *result.ids);
    if (result.ids == NULL) {
        status = mca_context_error(context, MCA_ERROR_OUT_OF_HOST_MEMORY,
                                   "allocating %d x %d token ids failed", count, result.tokens);
        goto cleanup;
    }
    size_t offset = 0;
    for (int t = 0; t < count; ++t) {
        memcpy(result.ids + (size_t)t * (size_t)result.tokens, packed + offset,
               (size_t)result.valid_lengths[t] * sizeof *packed);
        offset += (size_t)result.valid_lengths[t];
    }

    *batch = result;
    result.ids = NULL;
    result.valid_lengths = NULL;

cleanup:
    token_batch_free(&result);
    free(packed);
    free(scratch);
    return status;
}

/* ------------------------------------------------------------------------------------ */
/* Device steps                                                                          */
/* ------------------------------------------------------------------------------------ */

/* Checks the workspaces of a (batch, tokens) call against int kernel arguments and the
 * device's memory, so that an oversized batch fails with a hint rather than a bare
 * allocation error. */
static int check_workspace_limits(const mca_encoder_t *encoder, int batch, int tokens)
{
    const mca_context_t *context = encoder->context;
    const size_t rows = (size_t)batch * (size_t)tokens;
    const size_t width = (size_t)(encoder->config.intermediate_size > encoder->config.hidden_size
                                      ? encoder->config.intermediate_size
                                      : encoder->config.hidden_size);

    if (rows > INT_MAX / width)
        return mca_context_error(context, MCA_ERROR_DEVICE_LIMIT,
                                 "a batch of %d texts padded to %d tokens has %zu x %zu "
                                 "activations, more than the kernels index (%d); embed fewer "
                                 "texts per call",
                                 batch, tokens, rows, width, INT_MAX);

    const size_t hidden_bytes = rows * (size_t)encoder->config.hidden_size * sizeof(float);
    const size_t intermediate_bytes =
        rows * (size_t)encoder->config.intermediate_size * sizeof(float);
    const size_t largest = hidden_bytes > intermediate_bytes ? hidden_bytes : intermediate_bytes;
    if (largest > context->max_mem_alloc_size)
        return mca_context_error(context, MCA_ERROR_DEVICE_LIMIT,
                                 "a batch of %d texts padded to %d tokens needs a %zu-byte "
                                 "workspace, more than the device's maximum allocation of %llu "
                                 "bytes; embed fewer texts per call",
                                 batch, tokens, largest,
                                 (unsigned long long)context->max_mem_alloc_size);

    const size_t total = 3 * hidden_bytes + intermediate_bytes;
    if (total > context->global_mem_size)
        return mca_context_error(context, MCA_ERROR_DEVICE_LIMIT,
                                 "a batch of %d texts padded to %d tokens needs %zu bytes of "
                                 "workspaces, more than the device's %llu bytes of global "
                                 "memory; embed fewer texts per call",
                                 batch, tokens, total,
                                 (unsigned long long)context->global_mem_size);
    return MCA_SUCCESS;
}

/* Grows every workspace for a (batch, tokens) call. */
static int reserve_workspaces(mca_encoder_t *encoder, int batch, int tokens)
{
    const mca_context_t *context = encoder->context;
    const size_t rows = (size_t)batch * (size_t)tokens;
    const size_t hidden = (size_t)encoder->config.hidden_size;
    const size_t intermediate = (size_t)encoder->config.intermediate_size;
    const struct {
        encoder_workspace_t *workspace;
        size_t bytes;
        const char *what;
    } requests[] = {
        {&encoder->ids, rows * sizeof(int32_t), "encoder token ids"},
        {&encoder->valid_lengths, (size_t)batch * sizeof(int32_t), "encoder valid lengths"},
        {&encoder->hidden, rows * hidden * sizeof(float), "encoder hidden states"},
        {&encoder->attention, rows * hidden * sizeof(float), "encoder attention output"},
        {&encoder->projected, rows * hidden * sizeof(float), "encoder dense output"},
        {&encoder->intermediate, rows * intermediate * sizeof(float),
         "encoder intermediate activations"},
        {&encoder->pooled, (size_t)batch * hidden * sizeof(float), "encoder pooled embeddings"},
    };

    for (size_t r = 0; r < sizeof requests / sizeof requests[0]; ++r) {
        int status = mca_buffer_reserve(context, &requests[r].workspace->buffer,
                                        &requests[r].workspace->capacity, requests[r].bytes,
                                        requests[r].what);
        if (status != MCA_SUCCESS)
            return status;
    }
    return MCA_SUCCESS;
}

static int encoder_embeddings(mca_encoder_t *encoder, int batch, int tokens)
{
    mca_context_t *context = encoder->context;
    cl_kernel kernel;
    int status = mca_context_kernel(context, "encoder_embeddings", &kernel);
    if (status != MCA_SUCCESS)
        return status;

    cl_int rows = batch * tokens;
    cl_int tokens_arg = tokens;
    cl_int hidden_size = encoder->config.hidden_size;
    cl_float eps = encoder->config.layer_norm_eps;
    status = mca_set_kernel_args(context, kernel, 11, MCA_ARG(rows), MCA_ARG(tokens_arg),
                                 MCA_ARG(hidden_size), MCA_ARG(eps), MCA_ARG(encoder->ids.buffer),
                                 MCA_ARG(encoder->word_embeddings),
                                 MCA_ARG(encoder->position_embeddings),
                                 MCA_ARG(encoder->token_type_embeddings),
                                 MCA_ARG(encoder->embedding_norm_weight),
                                 MCA_ARG(encoder->embedding_norm_bias),
                                 MCA_ARG(encoder->hidden.buffer));
    if (status != MCA_SUCCESS)
        return status;

    size_t global_size = (size_t)rows;
    return mca_launch(context, kernel, 1, &global_size, NULL);
}

/* hidden = LayerNorm(hidden + projected) with the given LayerNorm parameters. */
static int encoder_residual_layer_norm(mca_encoder_t *encoder, size_t rows, cl_mem norm_weight,
                                       cl_mem norm_bias)
{
    mca_context_t *context = encoder->context;
    cl_kernel kernel;
    int status = mca_context_kernel(context, "encoder_residual_layer_norm", &kernel);
    if (status != MCA_SUCCESS)
        return status;

    cl_int rows_arg = (cl_int)rows;
    cl_int hidden_size = encoder->config.hidden_size;
    cl_float eps = encoder->config.layer_norm_eps;
    status = mca_set_kernel_args(context, kernel, 7, MCA_ARG(rows_arg), MCA_ARG(hidden_size),
                                 MCA_ARG(eps), MCA_ARG(encoder->projected.buffer),
                                 MCA_ARG(norm_weight), MCA_ARG(norm_bias),
                                 MCA_ARG(encoder->hidden.buffer));
    if (status != MCA_SUCCESS)
        return status;

    return mca_launch(context, kernel, 1, &rows, NULL);
}

static int encoder_gelu(mca_encoder_t *encoder, size_t rows)
{
    mca_context_t *context = encoder->context;
    cl_kernel kernel;
    int status = mca_context_kernel(context, "encoder_gelu", &kernel);
    if (status != MCA_SUCCESS)
        return status;

    size_t count = rows * (size_t)encoder->config.intermediate_size;
    cl_ulong count_arg = count;
    status = mca_set_kernel_args(context, kernel, 2, MCA_ARG(count_arg),
                                 MCA_ARG(encoder->intermediate.buffer));
    if (status != MCA_SUCCESS)
        return status;

    return mca_launch(context, kernel, 1, &count, NULL);
}

static int encoder_mean_pool(mca_encoder_t *encoder, int batch, int tokens)
{
    mca_context_t *context = encoder->context;
    cl_kernel kernel;
    int status = mca_context_kernel(context, "encoder_mean_pool", &kernel);
    if (status != MCA_SUCCESS)
        return status;

    cl_int batch_arg = batch;
    cl_int tokens_arg = tokens;
    cl_int hidden_size = encoder->config.hidden_size;
    status = mca_set_kernel_args(context, kernel, 6, MCA_ARG(batch_arg), MCA_ARG(tokens_arg),
                                 MCA_ARG(hidden_size), MCA_ARG(encoder->valid_lengths.buffer),
                                 MCA_ARG(encoder->hidden.buffer),
                                 MCA_ARG(encoder->pooled.buffer));
    if (status != MCA_SUCCESS)
        return status;

    size_t global_size = (size_t)batch * (size_t)hidden_size;
    return mca_launch(context, kernel, 1, &global_size, NULL);
}

/* Runs layer `index` on encoder->hidden in place. */
static int run_layer(mca_encoder_t *encoder, const mca_forward_options_t *options, int index,
                     int batch, int tokens, const int *valid_lengths, mca_forward_stats_t *stats)
{
    mca_context_t *context = encoder->context;
    const encoder_layer_t *layer = &encoder->layers[index];
    const size_t rows = (size_t)batch * (size_t)tokens;
    const size_t hidden = (size_t)encoder->config.hidden_size;
    const size_t intermediate = (size_t)encoder->config.intermediate_size;

    mca_forward_options_t layer_options = *options;
    layer_options.layer_index = (uint32_t)index;
    int status = mca_attention_forward_buffers(layer->attention, &layer_options, batch, tokens,
                                               valid_lengths, encoder->hidden.buffer,
                                               encoder->attention.buffer, stats);
    if (status != MCA_SUCCESS)
        return status;

    /* Attention block: output projection, residual, LayerNorm. */
    status = mca_linear(context, encoder->attention.buffer, rows, hidden,
                        layer->attention_output_weight, layer->attention_output_bias, hidden,
                        encoder->projected.buffer);
    if (status == MCA_SUCCESS)
        status = encoder_residual_layer_norm(encoder, rows, layer->attention_norm_weight,
                                             layer->attention_norm_bias);

    /* Feed-forward block: dense, GELU, dense, residual, LayerNorm. */
    if (status == MCA_SUCCESS)
        status = mca_linear(context, encoder->hidden.buffer, rows, hidden,
                            layer->intermediate_weight, layer->intermediate_bias, intermediate,
                            encoder->intermediate.buffer);
    if (status == MCA_SUCCESS)
        status = encoder_gelu(encoder, rows);
    if (status == MCA_SUCCESS)
        status = mca_linear(context, encoder->intermediate.buffer, rows, intermediate,
                            layer->output_weight, layer->output_bias, hidden,
                            encoder->projected.buffer);
    if (status == MCA_SUCCESS)
        status = encoder_residual_layer_norm(encoder, rows, layer->output_norm_weight,
                                             layer->output_norm_bias);
    return status;
}

/* Runs the whole encoder on a tokenized batch and reads the mean-pooled rows, (batch, D)
 * before normalization, into `pooled`. */
static int run_encoder(mca_encoder_t *encoder, const mca_forward_options_t *options,
                       const token_batch_t *batch, int count, float *pooled,
                       mca_forward_stats_t *stats)
{
    mca_context_t *context = encoder->context;
    const int tokens = batch->tokens;
    const size_t rows = (size_t)count * (size_t)tokens;

    int status = check_workspace_limits(encoder, count, tokens);
    if (status == MCA_SUCCESS)
        status = reserve_workspaces(encoder, count, tokens);
    if (status == MCA_SUCCESS)
        status = mca_buffer_write(context, encoder->ids.buffer, 0, rows * sizeof(int32_t),
                                  batch->ids);
    if (status == MCA_SUCCESS)
        status = mca_buffer_write(context, encoder->valid_lengths.buffer, 0,
                                  (size_t)count * sizeof(int32_t), batch->valid_lengths);
    if (status == MCA_SUCCESS)
        status = encoder_embeddings(encoder, count, tokens);

    for (int layer = 0; layer < encoder->config.num_hidden_layers && status == MCA_SUCCESS;
         ++layer)
        status = run_layer(encoder, options, layer, count, tokens, batch->valid_lengths, stats);

    if (status == MCA_SUCCESS)
        status = encoder_mean_pool(encoder, count, tokens);
    if (status == MCA_SUCCESS)
        status = mca_buffer_read(context, encoder->pooled.buffer, 0,
                                 (size_t)count * (size_t)encoder->config.hidden_size *
                                     sizeof(float),
                                 pooled);
    return status;
}

/* Divides each row by max(||row||, 1e-12), as torch.nn.functional.normalize does in
 * sentence-transformers' Normalize module. */
static void normalize_rows(int count, int width, const float *pooled, float *embeddings)
{
    for (int t = 0; t < count; ++t) {
        const float *row = pooled + (size_t)t * (size_t)width;
        double squares = 0.0;
        for (int c = 0; c < width; ++c)
            squares += (double)row[c] * row[c];
        double norm = sqrt(squares);
        if (norm < 1e-12)
            norm = 1e-12;
        for (int c = 0; c < width; ++c)
            embeddings[(size_t)t * (size_t)width + c] = (float)(row[c] / norm);
    }
}

/* ------------------------------------------------------------------------------------ */
/* Embedding                                                                             */
/* ------------------------------------------------------------------------------------ */

static int check_embed_arguments(const mca_encoder_t *encoder,
                                 const mca_forward_options_t *options, int count,
                                 const char *const *texts, const float *embeddings)
{
    if (encoder == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT, "mca_encoder_embed: encoder is NULL");

    const mca_context_t *context = encoder->context;
    if (options == NULL)
        return mca_context_error(context, MCA_ERROR_INVALID_ARGUMENT,
                                 "mca_encoder_embed: options is NULL; fill them with "
                                 "mca_forward_options_init");
    if (count < 1)
        return mca_context_error(context, MCA_ERROR_INVALID_ARGUMENT,
                                 "mca_encoder_embed: count is %d; pass at least one text",
                                 count);
    if (texts == NULL)
        return mca_context_error(context, MCA_ERROR_INVALID_ARGUMENT,
                                 "mca_encoder_embed: texts is NULL");
    for (int t = 0; t < count; ++t) {
        if (texts[t] == NULL)
            return mca_context_error(context, MCA_ERROR_INVALID_ARGUMENT,
                                     "mca_encoder_embed: texts[%d] is NULL", t);
    }
    if (embeddings == NULL)
        return mca_context_error(context, MCA_ERROR_INVALID_ARGUMENT,
                                 "mca_encoder_embed: embeddings is NULL");

    /* Sequence numbers wrapping past 2^32 would repeat earlier draws. */
    if ((uint64_t)options->first_sequence + (uint64_t)count - 1 > UINT32_MAX)
        return mca_context_error(context, MCA_ERROR_INVALID_ARGUMENT,
                                 "mca_encoder_embed: first_sequence %u plus %d texts passes "
                                 "the largest sequence number %u",
                                 options->first_sequence, count, UINT32_MAX);
    return MCA_SUCCESS;
}

mca_status_t mca_encoder_embed(mca_encoder_t *encoder, const mca_forward_options_t *options,
                               int count, const char *const *texts, float *embeddings,
                               int *token_counts, mca_forward_stats_t *stats)
{
    int status = check_embed_arguments(encoder, options, count, texts, embeddings);
    if (status != MCA_SUCCESS)
        return status;

    const int width = encoder->config.hidden_size;
    token_batch_t batch = {NULL, NULL, 0};
    float *pooled = mca_malloc((size_t)count * (size_t)width * sizeof *pooled);
    mca_forward_stats_t call_stats;
    mca_forward_stats_reset(&call_stats);

    if (pooled == NULL) {
        status = mca_context_error(encoder->context, MCA_ERROR_OUT_OF_HOST_MEMORY,
                                   "allocating %d x %d pooled embeddings failed", count, width);
        goto cleanup;
    }
    status = tokenize_batch(encoder, count, texts, &batch);
    if (status != MCA_SUCCESS)
        goto cleanup;
    status = run_encoder(encoder, options, &batch, count, pooled, &call_stats);
    if (status != MCA_SUCCESS)
        goto cleanup;

    /* Every step has succeeded, so the outputs are written now and only now. */
    normalize_rows(count, width, pooled, embeddings);
    if (token_counts != NULL)
        memcpy(token_counts, batch.valid_lengths, (size_t)count * sizeof *token_counts);
    if (stats != NULL)
        mca_forward_stats_add(stats, &call_stats);

cleanup:
    token_batch_free(&batch);
    free(pooled);
    return status;
}
