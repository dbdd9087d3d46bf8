/*
 * mca-bench: times one attention layer per stage, exact and Monte-Carlo, side by side in
 * one run on one device, with OpenCL profiling markers; plus the published code's value
 * strategy at equal sample counts and exact attention on the host with OpenBLAS.
 *
 * Inputs:
 *   minilm     layer 0 of all-MiniLM-L6-v2 (D = 384, 12 heads) on its real input: the
 *              embedding layer's output for tools/sentences.txt, packed into sequences.
 *   bert-base  D = 768, 12 heads of width 64, and
 *   large      D = 1024, 16 heads of width 64: random value weights, and query and key
 *              weights built from the real layer so that every head reproduces a real
 *              head's attention pattern (see make_wide_weights).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <clblast_c.h>

#include "attention.h"
#include "config.h"
#include "host_attention.h"
#include "safetensors.h"
#include "tokenizer.h"
#include "tuning.h"

#define MAX_LIST 16

typedef struct shape {
    const char *name;
    int hidden;
    int heads;
} shape_t;

static const shape_t all_shapes[] = {
    {"minilm", 384, 12},
    {"bert-base", 768, 12},
    {"large", 1024, 16},
};

typedef struct int_list {
    int values[MAX_LIST];
    int count;
} int_list_t;

typedef struct float_list {
    float values[MAX_LIST];
    int count;
} float_list_t;

typedef struct bench_options {
    const char *model_dir;
    const char *sentences;
    const char *csv_path;
    const char *markdown_path;
    const char *tuning_file;
    char shapes[128];
    int_list_t tokens;
    int_list_t batches;
    float_list_t alphas;
    int budget_length;
    int repeats;
    int warmup;
    unsigned long long seed;
    float quality_alpha; /* alpha at which the embedding cosine reaches 0.999 */
    bool skip_untuned;
    bool skip_openblas;
} bench_options_t;

/* One measured configuration: medians over the repeats. */
typedef struct measurement {
    const char *path;
    float alpha;
    double flops_fraction, flops_fraction_paper;
    unsigned long long samples, distinct;
    mca_stage_times_t times;
} measurement_t;

static void fail(const char *what, int status)
{
    fprintf(stderr, "mca-bench: %s: %s: %s\n", what, mca_status_string(status), mca_last_error());
    exit(1);
}

static void usage(FILE *stream)
{
    fprintf(stream,
            "Usage: mca-bench [options]\n"
            "Times one attention layer per stage (OpenCL profiling markers), exact and MCA,\n"
            "in one run on one device, and writes the medians as CSV and a markdown table.\n"
            "\n"
            "  --model DIR        all-MiniLM-L6-v2 directory (default $MCA_MODEL_DIR, else\n"
            "                     models/all-MiniLM-L6-v2)\n"
            "  --sentences FILE   text that supplies the real tokens (default tools/sentences.txt)\n"
            "  --shapes LIST      minilm,bert-base,large (default all)\n"
            "  --tokens LIST      tokens per sequence, every one valid (default 128,512)\n"
            "  --batch LIST       sequences per batch (default 1,8)\n"
            "  --alphas LIST      MCA alphas (default 0.05,0.1,0.2,0.5,1.0)\n"
            "  --budget-length N  n_b of the sample-count formula, 0 = sequence length (default 0)\n"
            "  --quality-alpha A  alpha at which the embedding cosine is >= 0.999; the whole-layer\n"
            "                     target is checked there (default: the smallest alpha)\n"
            "  --repeats N        timed runs per configuration, median reported (default 5)\n"
            "  --warmup N         untimed runs first; PoCL compiles per work-group size (default 2)\n"
            "  --seed N           sampling seed (default 1)\n"
            "  --tuning FILE      tuned CLBlast parameters (default: MCA_CLBLAST_TUNING, then the\n"
            "                     per-device file written by tools/tune)\n"
            "  --skip-untuned     do not time the exact path with CLBlast's default parameters\n"
            "  --skip-openblas    do not time the host baseline\n"
            "  --csv FILE         write every measurement as CSV\n"
            "  --markdown FILE    append the tables to FILE (for example bench/RESULTS.md)\n"
            "  --help             show this help\n");
}

static void parse_int_list(const char *option, const char *text, int_list_t *list)
{
    list->count = 0;
    char *copy = strdup(text);
    for (char *item = strtok(copy, ","); item != NULL; item = strtok(NULL, ",")) {
        char *end = NULL;
        errno = 0;
        long value = strtol(item, &end, 10);
        if (errno != 0 || *end != '\0' || value <= 0 || value > 1 << 20 ||
            list->count == MAX_LIST) {
            fprintf(stderr, "mca-bench: %s: '%s' is not a positive integer list of at most %d\n",
                    option, text, MAX_LIST);
            exit(2);
        }
        list->values[list->count++] = (int)value;
    }
    free(copy);
}

static void parse_float_list(const char *option, const char *text, float_list_t *list)
{
    list->count = 0;
    char *copy = strdup(text);
    for (char *item = strtok(copy, ","); item != NULL; item = strtok(NULL, ",")) {
        char *end = NULL;
        errno = 0;
        float value = strtof(item, &end);
        if (errno != 0 || *end != '\0' || !(value > 0.0f) || !isfinite(value) ||
            list->count == MAX_LIST) {
            fprintf(stderr, "mca-bench: %s: '%s' is not a list of positive numbers\n", option,
                    text);
            exit(2);
        }
        list->values[list->count++] = value;
    }
    free(copy);
}

static long parse_long(const char *option, const char *text, long low, long high)
{
    char *end = NULL;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || *end != '\0' || value < low || value > high) {
        fprintf(stderr, "mca-bench: %s: '%s' is not an integer in %ld .. %ld\n", option, text,
                low, high);
        exit(2);
    }
    return value;
}

static void parse_options(int argc, char **argv, bench_options_t *o)
{
    memset(o, 0, sizeof *o);
    o->model_dir = getenv("MCA_MODEL_DIR");
    if (o->model_dir == NULL || o->model_dir[0] == '\0')
        o->model_dir = "models/all-MiniLM-L6-v2";
    o->sentences = "tools/sentences.txt";
    snprintf(o->shapes, sizeof o->shapes, "minilm,bert-base,large");
    parse_int_list("--tokens", "128,512", &o->tokens);
    parse_int_list("--batch", "1,8", &o->batches);
    parse_float_list("--alphas", "0.05,0.1,0.2,0.5,1.0", &o->alphas);
    o->repeats = 5;
    o->warmup = 2;
    o->seed = 1;

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes_value = true;
        if (strcmp(arg, "--help") == 0) {
            usage(stdout);
            exit(0);
        } else if (strcmp(arg, "--skip-untuned") == 0) {
            o->skip_untuned = true;
            takes_value = false;
        } else if (strcmp(arg, "--skip-openblas") == 0) {
            o->skip_openblas = true;
            takes_value = false;
        } else if (value == NULL) {
            fprintf(stderr, "mca-bench: %s needs a value or is unknown; see --help\n", arg);
            exit(2);
        } else if (strcmp(arg, "--model") == 0) {
            o->model_dir = value;
        } else if (strcmp(arg, "--sentences") == 0) {
            o->sentences = value;
        } else if (strcmp(arg, "--shapes") == 0) {
            snprintf(o->shapes, sizeof o->shapes, "%s", value);
        } else if (strcmp(arg, "--tokens") == 0) {
            parse_int_list(arg, value, &o->tokens);
        } else if (strcmp(arg, "--batch") == 0) {
            parse_int_list(arg, value, &o->batches);
        } else if (strcmp(arg, "--alphas") == 0) {
            parse_float_list(arg, value, &o->alphas);
        } else if (strcmp(arg, "--budget-length") == 0) {
            o->budget_length = (int)parse_long(arg, value, 0, MCA_MAX_BUDGET_LENGTH);
        } else if (strcmp(arg, "--quality-alpha") == 0) {
            float_list_t one;
            parse_float_list(arg, value, &one);
            o->quality_alpha = one.values[0];
        } else if (strcmp(arg, "--repeats") == 0) {
            o->repeats = (int)parse_long(arg, value, 1, 1000);
        } else if (strcmp(arg, "--warmup") == 0) {
            o->warmup = (int)parse_long(arg, value, 0, 1000);
        } else if (strcmp(arg, "--seed") == 0) {
            o->seed = (unsigned long long)parse_long(arg, value, 0, 0x7fffffffL);
        } else if (strcmp(arg, "--tuning") == 0) {
            o->tuning_file = value;
        } else if (strcmp(arg, "--csv") == 0) {
            o->csv_path = value;
        } else if (strcmp(arg, "--markdown") == 0) {
            o->markdown_path = value;
        } else {
            fprintf(stderr, "mca-bench: unknown option %s; see --help\n", arg);
            exit(2);
        }
        if (takes_value)
            i++;
    }
    if (o->quality_alpha == 0.0f)
        o->quality_alpha = o->alphas.values[0];
}

/* ------------------------------------------------------------------------------------ */
/* Real inputs                                                                           */
/* ------------------------------------------------------------------------------------ */

/* Tensors of all-MiniLM-L6-v2 that the benchmark uses, on the host. */
typedef struct model {
    int hidden, vocab, positions;
    float layer_norm_eps;
    float *word, *position, *token_type, *norm_weight, *norm_bias;
    float *attention; /* Q, K, V weights then Q, K, V biases of layer 0 */
    mca_tokenizer_t *tokenizer;
} model_t;

static float *read_tensor(mca_safetensors_t *file, const char *name, int rank, int64_t a,
                          int64_t b)
{
    int64_t shape[2] = {a, b};
    size_t count = (size_t)a * (rank == 2 ? (size_t)b : 1);
    float *data = malloc(count * sizeof *data);
    if (data == NULL) {
        fprintf(stderr, "mca-bench: out of memory reading %s\n", name);
        exit(1);
    }
    int status = mca_safetensors_read_f32(file, name, rank, shape, data);
    if (status != MCA_SUCCESS)
        fail(name, status);
    return data;
}

static void load_model(const char *dir, model_t *m)
{
    char path[4096];
    mca_bert_config_t config;
    snprintf(path, sizeof path, "%s/config.json", dir);
    int status = mca_bert_config_read(path, &config);
    if (status != MCA_SUCCESS)
        fail("reading config.json (run tools/setup first)", status);
    m->hidden = config.hidden_size;
    m->vocab = config.vocab_size;
    m->positions = config.max_position_embeddings;
    m->layer_norm_eps = config.layer_norm_eps;

    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    mca_safetensors_t *file = NULL;
    if ((status = mca_safetensors_open(path, &file)) != MCA_SUCCESS)
        fail("opening model.safetensors", status);
    int D = m->hidden;
    m->word = read_tensor(file, "embeddings.word_embeddings.weight", 2, m->vocab, D);
    m->position = read_tensor(file, "embeddings.position_embeddings.weight", 2, m->positions, D);
    m->token_type = read_tensor(file, "embeddings.token_type_embeddings.weight", 2,
                                config.type_vocab_size, D);
    m->norm_weight = read_tensor(file, "embeddings.LayerNorm.weight", 1, D, 0);
    m->norm_bias = read_tensor(file, "embeddings.LayerNorm.bias", 1, D, 0);

    const char *parts[] = {"query", "key", "value"};
    size_t dd = (size_t)D * D;
    m->attention = malloc((3 * dd + 3 * (size_t)D) * sizeof(float));
    for (int i = 0; i < 3; i++) {
        char name[128];
        snprintf(name, sizeof name, "encoder.layer.0.attention.self.%s.weight", parts[i]);
        float *w = read_tensor(file, name, 2, D, D);
        memcpy(m->attention + i * dd, w, dd * sizeof(float));
        free(w);
        snprintf(name, sizeof name, "encoder.layer.0.attention.self.%s.bias", parts[i]);
        float *b = read_tensor(file, name, 1, D, 0);
        memcpy(m->attention + 3 * dd + (size_t)i * D, b, (size_t)D * sizeof(float));
        free(b);
    }
    mca_safetensors_close(file);

    snprintf(path, sizeof path, "%s/vocab.txt", dir);
    if ((status = mca_tokenizer_load(path, &m->tokenizer)) != MCA_SUCCESS)
        fail("loading vocab.txt", status);
}

static void free_model(model_t *m)
{
    free(m->word);
    free(m->position);
    free(m->token_type);
    free(m->norm_weight);
    free(m->norm_bias);
    free(m->attention);
    mca_tokenizer_destroy(m->tokenizer);
}

/* Token ids of every sentence of the file, each with its [CLS] and [SEP], concatenated. */
static int32_t *read_token_stream(const char *path, const model_t *m, size_t *count)
{
    FILE *file = fopen(path, "r");
    if (file == NULL) {
        fprintf(stderr, "mca-bench: cannot open %s: %s\n", path, strerror(errno));
        exit(1);
    }
    size_t capacity = 4096, used = 0;
    int32_t *ids = malloc(capacity * sizeof *ids);
    int32_t line_ids[512];
    char *line = NULL;
    size_t line_capacity = 0;
    ssize_t length;
    while ((length = getline(&line, &line_capacity, file)) > 0) {
        while (length > 0 && (line[length - 1] == '\n' || line[length - 1] == '\r'))
            line[--length] = '\0';
        if (length == 0)
            continue;
        int n = 0;
        int status = mca_tokenizer_encode(m->tokenizer, line, (size_t)length, 512, line_ids, &n,
                                          NULL);
        if (status != MCA_SUCCESS)
            fail("tokenizing the sentences", status);
        if (used + (size_t)n > capacity) {
            capacity = 2 * (used + (size_t)n);
            ids = realloc(ids, capacity * sizeof *ids);
        }
        memcpy(ids + used, line_ids, (size_t)n * sizeof *ids);
        used += (size_t)n;
    }
    free(line);
    fclose(file);
    if (used == 0) {
        fprintf(stderr, "mca-bench: %s contains no sentences; give a text file with one per "
                        "line\n",
                path);
        exit(1);
    }
    *count = used;
    return ids;
}

/* Layer 0's input for `batch` sequences of `tokens` real tokens: word, position and token
 * type 0 embeddings, then LayerNorm, computed in double. Sequence b starts at a different
 * place in the stream so that the sequences differ. */
static void embed_tokens(const model_t *m, const int32_t *stream, size_t stream_length,
                         int batch, int tokens, float *hidden)
{
    int D = m->hidden;
    double *row = malloc((size_t)D * sizeof *row);
    for (int b = 0; b < batch; b++) {
        size_t start = ((size_t)b * 97) % stream_length;
        for (int t = 0; t < tokens; t++) {
            int32_t id = stream[(start + (size_t)t) % stream_length];
            int position = t % m->positions;
            double mean = 0.0, variance = 0.0;
            for (int c = 0; c < D; c++) {
                row[c] = (double)m->word[(size_t)id * D + c] +
                         m->position[(size_t)position * D + c] + m->token_type[c];
                mean += row[c];
            }
            mean /= D;
            for (int c = 0; c < D; c++)
                variance += (row[c] - mean) * (row[c] - mean);
            variance /= D;
            double scale = 1.0 / sqrt(variance + m->layer_norm_eps);
            float *out = hidden + ((size_t)b * tokens + t) * D;
            for (int c = 0; c < D; c++)
                out[c] = (float)((row[c] - mean) * scale * m->norm_weight[c] + m->norm_bias[c]);
        }
    }
    free(row);
}

/* xorshift64* for reproducible synthetic weights. */
static float uniform(unsigned long long *state)
{
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    unsigned long long bits = *state * 2685821657736338717ull;
    return (float)((double)(bits >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

/*
 * Weights of a wider layer (D' = hidden, head width 64) whose attention pattern is real:
 * head h' takes real head s = h' mod 12 (width 32). Rows h'*64 .. h'*64+31 of W_Q' are
 * sqrt(2) times the real rows of head s on the first 384 input columns, and zero elsewhere,
 * and likewise W_K' without the factor. Then Q'_h' K'_h'^T / sqrt(64) equals
 * Q_s K_s^T / sqrt(32) exactly, so A is the real layer's. The input is the real hidden
 * state in its first 384 columns and uniform noise of the same RMS in the rest; W_V' is
 * uniform noise with the RMS of the real W_V.
 */
static void make_wide_weights(const model_t *m, int hidden, int heads, float *storage,
                              mca_attention_weights_t *w)
{
    const int real = m->hidden, real_width = real / 12, width = hidden / heads;
    size_t dd = (size_t)hidden * hidden, real_dd = (size_t)real * real;
    memset(storage, 0, (3 * dd + 3 * (size_t)hidden) * sizeof(float));
    float *q = storage, *k = storage + dd, *v = storage + 2 * dd;
    float *bq = storage + 3 * dd, *bk = bq + hidden, *bv = bk + hidden;
    const float *real_q = m->attention, *real_k = m->attention + real_dd;
    const float *real_v = m->attention + 2 * real_dd;
    const float *real_bq = m->attention + 3 * real_dd, *real_bk = real_bq + real;

    for (int h = 0; h < heads; h++) {
        int s = h % 12;
        for (int c = 0; c < real_width; c++) {
            size_t out = (size_t)h * width + c, source = (size_t)s * real_width + c;
            for (int i = 0; i < real; i++) {
                q[out * hidden + i] = sqrtf(2.0f) * real_q[source * real + i];
                k[out * hidden + i] = real_k[source * real + i];
            }
            bq[out] = sqrtf(2.0f) * real_bq[source];
            bk[out] = real_bk[source];
        }
    }

    double sum = 0.0;
    for (size_t i = 0; i < real_dd; i++)
        sum += (double)real_v[i] * real_v[i];
    /* A uniform variate on [-a, a] has RMS a / sqrt(3). */
    float amplitude = (float)(sqrt(sum / real_dd) * sqrt(3.0));
    unsigned long long state = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < dd; i++)
        v[i] = amplitude * uniform(&state);
    for (int i = 0; i < hidden; i++)
        bv[i] = 0.1f * amplitude * uniform(&state);

    w->hidden_size = hidden;
    w->heads = heads;
    w->query_weight = q;
    w->key_weight = k;
    w->value_weight = v;
    w->query_bias = bq;
    w->key_bias = bk;
    w->value_bias = bv;
}

/* Widens real hidden states (rows of 384) to `hidden` columns with noise of equal RMS. */
static void widen_hidden(const float *real, size_t rows, int real_width, int hidden,
                         float *out)
{
    unsigned long long state = 0x243f6a8885a308d3ull;
    double sum = 0.0;
    for (size_t i = 0; i < rows * (size_t)real_width; i++)
        sum += (double)real[i] * real[i];
    float amplitude = (float)(sqrt(sum / ((double)rows * real_width)) * sqrt(3.0));
    for (size_t r = 0; r < rows; r++) {
        memcpy(out + r * hidden, real + r * real_width, (size_t)real_width * sizeof(float));
        for (int c = real_width; c < hidden; c++)
            out[r * hidden + c] = amplitude * uniform(&state);
    }
}

/* ------------------------------------------------------------------------------------ */
/* Measurement                                                                           */
/* ------------------------------------------------------------------------------------ */

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *values, int count)
{
    qsort(values, (size_t)count, sizeof *values, compare_doubles);
    return count % 2 ? values[count / 2] : 0.5 * (values[count / 2 - 1] + values[count / 2]);
}

/* Per-stage medians of `repeats` profiled forward passes after `warmup` untimed ones. One
 * more untimed pass collects the statistics: the timed passes ask for none, which skips the
 * error bounds, as a caller who wants only the output would. */
static void time_layer(mca_attention_t *layer, const mca_forward_options_t *options,
                       const bench_options_t *bench, int batch, int tokens, const int *lengths,
                       cl_mem hidden, cl_mem output, measurement_t *result)
{
    double samples[MCA_STAGE_COUNT + 1][64];
    int repeats = bench->repeats < 64 ? bench->repeats : 64;
    mca_stage_times_t times;
    mca_forward_stats_t stats;
    mca_forward_stats_reset(&stats);
    int status = mca_attention_forward_buffers(layer, options, batch, tokens, lengths, hidden,
                                               output, &stats);
    if (status != MCA_SUCCESS)
        fail("forward pass", status);

    layer->profile = &times;
    for (int run = 0; run < bench->warmup + repeats; run++) {
        status = mca_attention_forward_buffers(layer, options, batch, tokens, lengths, hidden,
                                               output, NULL);
        if (status != MCA_SUCCESS)
            fail("forward pass", status);
        if (run < bench->warmup)
            continue;
        for (int s = 0; s < MCA_STAGE_COUNT; s++)
            samples[s][run - bench->warmup] = times.seconds[s];
        samples[MCA_STAGE_COUNT][run - bench->warmup] = times.total;
    }
    layer->profile = NULL;

    for (int s = 0; s < MCA_STAGE_COUNT; s++)
        result->times.seconds[s] = median(samples[s], repeats);
    result->times.total = median(samples[MCA_STAGE_COUNT], repeats);
    result->alpha = options->mode == MCA_MODE_MCA ? options->alpha : 0.0f;
    result->flops_fraction = stats.flops_fraction;
    result->flops_fraction_paper = stats.flops_fraction_paper;
    result->samples = stats.samples_drawn;
    result->distinct = stats.distinct_columns;
}

static void time_host(const mca_attention_weights_t *w, const bench_options_t *bench, int batch,
                      int tokens, const int *lengths, const float *hidden, float *output,
                      measurement_t *result)
{
    double samples[4][64];
    int repeats = bench->repeats < 64 ? bench->repeats : 64;
    for (int run = 0; run < bench->warmup + repeats; run++) {
        host_attention_times_t times;
        int status = host_attention_forward(w, batch, tokens, lengths, hidden, output, &times);
        if (status != 0)
            fail("host attention", status);
        if (run < bench->warmup)
            continue;
        samples[0][run - bench->warmup] = times.projections;
        samples[1][run - bench->warmup] = times.scores;
        samples[2][run - bench->warmup] = times.attend;
        samples[3][run - bench->warmup] = times.total;
    }
    memset(result, 0, sizeof *result);
    result->path = "openblas";
    result->flops_fraction = 1.0;
    result->flops_fraction_paper = 1.0;
    /* The host projects Q, K and V in one stage; it is reported as the QK projection. */
    result->times.seconds[MCA_STAGE_QK_PROJECTION] = median(samples[0], repeats);
    result->times.seconds[MCA_STAGE_SCORES] = median(samples[1], repeats);
    result->times.seconds[MCA_STAGE_ATTEND] = median(samples[2], repeats);
    result->times.total = median(samples[3], repeats);
}

/* ------------------------------------------------------------------------------------ */
/* Reporting                                                                             */
/* ------------------------------------------------------------------------------------ */

/* Paths timed per alpha: the paper's exact pairs with merged sampling, the published
 * strategy, and whole exact rows (MCA_EXACT_WHOLE_ROWS) with merged sampling. */
#define MCA_PATHS 3

typedef struct config {
    const shape_t *shape;
    int tokens, batch;
    measurement_t rows[4 + MCA_PATHS * MAX_LIST];
    int count;
} config_t;

static void write_csv_header(FILE *csv)
{
    fprintf(csv, "shape,hidden,heads,tokens,batch,path,alpha,budget_length,flops_fraction,"
                 "flops_fraction_paper,samples,distinct");
    for (int s = 0; s < MCA_STAGE_COUNT; s++)
        fprintf(csv, ",%s", mca_stage_names[s]);
    fprintf(csv, ",total\n");
}

static void write_csv_rows(FILE *csv, const config_t *c, int budget_length)
{
    for (int i = 0; i < c->count; i++) {
        const measurement_t *m = &c->rows[i];
        fprintf(csv, "%s,%d,%d,%d,%d,%s,%g,%d,%.6f,%.6f,%llu,%llu", c->shape->name,
                c->shape->hidden, c->shape->heads, c->tokens, c->batch, m->path, m->alpha,
                budget_length, m->flops_fraction, m->flops_fraction_paper, m->samples,
                m->distinct);
        for (int s = 0; s < MCA_STAGE_COUNT; s++)
            fprintf(csv, ",%.6e", m->times.seconds[s]);
        fprintf(csv, ",%.6e\n", m->times.total);
    }
}

static const measurement_t *find_row(const config_t *c, const char *path, float alpha)
{
    for (int i = 0; i < c->count; i++)
        if (strcmp(c->rows[i].path, path) == 0 && fabsf(c->rows[i].alpha - alpha) < 1e-6f)
            return &c->rows[i];
    return NULL;
}

/* The MCA value stage: everything that replaces the exact V GEMM. The error bounds are
 * statistics and stay out of it; they are in the layer total. */
static double value_stage(const measurement_t *m)
{
    const double *s = m->times.seconds;
    return s[MCA_STAGE_PLANNING] + s[MCA_STAGE_EXACT_VALUES] + s[MCA_STAGE_SAMPLING] +
           s[MCA_STAGE_ACCUMULATION];
}

static double sampled_rows(const measurement_t *m)
{
    return m->times.seconds[MCA_STAGE_SAMPLING] + m->times.seconds[MCA_STAGE_ACCUMULATION];
}

static double gemm_time(const measurement_t *m)
{
    return m->times.seconds[MCA_STAGE_QK_PROJECTION] + m->times.seconds[MCA_STAGE_EXACT_VALUES];
}

static void write_markdown_config(FILE *out, const config_t *c)
{
    fprintf(out, "\n#### %s (D = %d, %d heads), %d tokens, batch %d\n\n", c->shape->name,
            c->shape->hidden, c->shape->heads, c->tokens, c->batch);
    fprintf(out, "| path | alpha | FLOP fraction | paper fraction | samples | distinct |");
    for (int s = 0; s < MCA_STAGE_COUNT; s++)
        fprintf(out, " %s ms |", mca_stage_names[s]);
    fprintf(out, " total ms |\n|---|---|---|---|---|---|");
    for (int s = 0; s <= MCA_STAGE_COUNT; s++)
        fprintf(out, "---|");
    fprintf(out, "\n");
    for (int i = 0; i < c->count; i++) {
        const measurement_t *m = &c->rows[i];
        fprintf(out, "| %s | %g | %.4f | %.4f | %llu | %llu |", m->path, m->alpha,
                m->flops_fraction, m->flops_fraction_paper, m->samples, m->distinct);
        for (int s = 0; s < MCA_STAGE_COUNT; s++)
            fprintf(out, " %.3f |", 1e3 * m->times.seconds[s]);
        fprintf(out, " %.3f |\n", 1e3 * m->times.total);
    }
}

/* Target ratios of one configuration, one markdown row per MCA alpha. */
static void write_markdown_targets(FILE *out, const config_t *c, const bench_options_t *bench)
{
    const measurement_t *exact = find_row(c, "exact_tuned", 0.0f);
    const measurement_t *untuned = find_row(c, "exact_untuned", 0.0f);
    if (exact == NULL)
        return;
    fprintf(out, "\n| %s %d tok batch %d, alpha | FLOP fraction | T1: value / (V GEMM x "
                 "fraction), <= 1.5 | T2: sampling / value, <= 0.25 | T3: MCA / exact "
                 "layer (512 tok) | T3 with whole exact rows | T4: published / merged sampled "
                 "rows, >= 5 |\n"
                 "|---|---|---|---|---|---|---|\n",
            c->shape->name, c->tokens, c->batch);
    double v_gemm = exact->times.seconds[MCA_STAGE_EXACT_VALUES];
    for (int a = 0; a < bench->alphas.count; a++) {
        float alpha = bench->alphas.values[a];
        const measurement_t *mca = find_row(c, "mca", alpha);
        const measurement_t *published = find_row(c, "published", alpha);
        const measurement_t *rows = find_row(c, "mca_rows", alpha);
        if (mca == NULL)
            continue;
        char t1[32] = "n/a (fraction < 0.1)";
        if (mca->flops_fraction >= 0.1)
            snprintf(t1, sizeof t1, "%.2f", value_stage(mca) / (v_gemm * mca->flops_fraction));
        char t3[32] = "", t3_rows[48] = "";
        const char *quality = fabsf(alpha - bench->quality_alpha) < 1e-6f ? " (quality alpha)" : "";
        if (c->tokens == 512)
            snprintf(t3, sizeof t3, "%.2f%s", mca->times.total / exact->times.total, quality);
        if (c->tokens == 512 && rows != NULL)
            snprintf(t3_rows, sizeof t3_rows, "%.2f at fraction %.4f",
                     rows->times.total / exact->times.total, rows->flops_fraction);
        char t4[32] = "n/a";
        if (published != NULL && sampled_rows(mca) > 0.0)
            snprintf(t4, sizeof t4, "%.1f", sampled_rows(published) / sampled_rows(mca));
        fprintf(out, "| %g | %.4f | %s | %.3f | %s | %s | %s |\n", alpha, mca->flops_fraction, t1,
                value_stage(mca) > 0.0 ? mca->times.seconds[MCA_STAGE_SAMPLING] / value_stage(mca)
                                       : 0.0,
                t3, t3_rows, t4);
    }
    if (untuned != NULL)
        fprintf(out, "\nT5: untuned / tuned CLBlast GEMM time (QK projection + V GEMM), >= 4: "
                     "%.2f\n",
                gemm_time(untuned) / gemm_time(exact));
    const measurement_t *host = find_row(c, "openblas", 0.0f);
    if (host != NULL)
        fprintf(out, "\nOpenBLAS host layer / tuned OpenCL exact layer: %.2f\n",
                host->times.total / exact->times.total);
}

/* The CPU model from /proc/cpuinfo, or "unknown CPU". */
static void cpu_model(char *out, size_t size)
{
    snprintf(out, size, "unknown CPU");
    FILE *file = fopen("/proc/cpuinfo", "r");
    if (file == NULL)
        return;
    char line[512];
    while (fgets(line, sizeof line, file) != NULL) {
        if (strncmp(line, "model name", 10) == 0) {
            const char *value = strchr(line, ':');
            if (value != NULL) {
                snprintf(out, size, "%s", value + 2);
                out[strcspn(out, "\n")] = '\0';
            }
            break;
        }
    }
    fclose(file);
}

/* Heading of a run: when, the command that produced it, and the machine. */
static void write_markdown_heading(FILE *out, int argc, char **argv,
                                   const mca_context_t *context, const bench_options_t *o)
{
    char when[64], cpu[256];
    time_t now = time(NULL);
    strftime(when, sizeof when, "%Y-%m-%d %H:%M UTC", gmtime(&now));
    cpu_model(cpu, sizeof cpu);
    fprintf(out, "\n### mca-bench, %s\n\nCommand: `", when);
    for (int i = 0; i < argc; i++)
        fprintf(out, "%s%s", i > 0 ? " " : "", argv[i]);
    fprintf(out, "`\n\nMachine: %s, %ld online cores; OpenCL device '%s'. Medians of %d runs "
                 "after %d warm-up runs; every sequence is full (all tokens valid); seed %llu, "
                 "budget length %d.\n",
            cpu, sysconf(_SC_NPROCESSORS_ONLN), mca_context_device_name(context), o->repeats,
            o->warmup, o->seed, o->budget_length);
}

/* ------------------------------------------------------------------------------------ */
/* Main                                                                                  */
/* ------------------------------------------------------------------------------------ */

static void log_to_stderr(mca_log_level_t level, const char *message, void *user_data)
{
    (void)user_data;
    if (level >= MCA_LOG_INFO)
        fprintf(stderr, "mca-bench: %s\n", message);
}

static bool shape_selected(const bench_options_t *o, const char *name)
{
    char copy[128];
    snprintf(copy, sizeof copy, "%s", o->shapes);
    for (char *item = strtok(copy, ","); item != NULL; item = strtok(NULL, ","))
        if (strcmp(item, name) == 0)
            return true;
    return false;
}

/* Everything one (shape, tokens, batch) configuration needs on the host and the device. */
typedef struct workload {
    mca_attention_weights_t weights;
    float *weight_storage;
    float *hidden;
    float *output;
    int *lengths;
    cl_mem hidden_buffer, output_buffer;
} workload_t;

static void prepare_workload(mca_context_t *context, const model_t *m, const shape_t *shape,
                             const int32_t *stream, size_t stream_length, int batch, int tokens,
                             workload_t *w)
{
    memset(w, 0, sizeof *w);
    size_t rows = (size_t)batch * tokens;
    size_t D = (size_t)shape->hidden;
    w->hidden = malloc(rows * D * sizeof(float));
    w->output = malloc(rows * D * sizeof(float));
    w->lengths = malloc((size_t)batch * sizeof(int));
    for (int b = 0; b < batch; b++)
        w->lengths[b] = tokens;

    float *real = malloc(rows * (size_t)m->hidden * sizeof(float));
    embed_tokens(m, stream, stream_length, batch, tokens, real);
    if (shape->hidden == m->hidden) {
        memcpy(w->hidden, real, rows * D * sizeof(float));
        size_t dd = D * D;
        w->weights = (mca_attention_weights_t){
            .hidden_size = m->hidden,
            .heads = 12,
            .query_weight = m->attention,
            .key_weight = m->attention + dd,
            .value_weight = m->attention + 2 * dd,
            .query_bias = m->attention + 3 * dd,
            .key_bias = m->attention + 3 * dd + D,
            .value_bias = m->attention + 3 * dd + 2 * D,
        };
    } else {
        widen_hidden(real, rows, m->hidden, shape->hidden, w->hidden);
        w->weight_storage = malloc((3 * D * D + 3 * D) * sizeof(float));
        make_wide_weights(m, shape->hidden, shape->heads, w->weight_storage, &w->weights);
    }
    free(real);

    int status = mca_buffer_create(context, rows * D * sizeof(float), w->hidden,
                                   "benchmark hidden states", &w->hidden_buffer);
    if (status == MCA_SUCCESS)
        status = mca_buffer_create(context, rows * D * sizeof(float), NULL, "benchmark output",
                                   &w->output_buffer);
    if (status != MCA_SUCCESS)
        fail("creating benchmark buffers", status);
}

static void release_workload(workload_t *w)
{
    free(w->weight_storage);
    free(w->hidden);
    free(w->output);
    free(w->lengths);
    mca_buffer_release(&w->hidden_buffer);
    mca_buffer_release(&w->output_buffer);
}

static void measure_exact(mca_context_t *context, const workload_t *w, const bench_options_t *o,
                          int batch, int tokens, const char *path, measurement_t *result)
{
    mca_attention_t *layer = NULL;
    int status = mca_attention_create(context, &w->weights, &layer);
    if (status != MCA_SUCCESS)
        fail("creating the attention layer", status);
    mca_forward_options_t options;
    mca_forward_options_init(&options);
    time_layer(layer, &options, o, batch, tokens, w->lengths, w->hidden_buffer,
               w->output_buffer, result);
    result->path = path;
    mca_attention_destroy(layer);
}

static void measure_config(mca_context_t *context, const workload_t *w, const bench_options_t *o,
                           config_t *c)
{
    mca_attention_t *layer = NULL;
    int status = mca_attention_create(context, &w->weights, &layer);
    if (status != MCA_SUCCESS)
        fail("creating the attention layer", status);

    fprintf(stderr, "mca-bench: %s, %d tokens, batch %d: exact\n", c->shape->name, c->tokens,
            c->batch);
    mca_forward_options_t options;
    mca_forward_options_init(&options);
    time_layer(layer, &options, o, c->batch, c->tokens, w->lengths, w->hidden_buffer,
               w->output_buffer, &c->rows[c->count]);
    c->rows[c->count++].path = "exact_tuned";

    options.mode = MCA_MODE_MCA;
    options.seed = o->seed;
    options.budget_length = o->budget_length;
    const mca_value_strategy_t strategies[MCA_PATHS] = {MCA_VALUES_MERGED, MCA_VALUES_PUBLISHED,
                                                        MCA_VALUES_MERGED};
    const mca_exact_rows_t exact_rows[MCA_PATHS] = {MCA_EXACT_PAIRS, MCA_EXACT_PAIRS,
                                                    MCA_EXACT_WHOLE_ROWS};
    const char *names[MCA_PATHS] = {"mca", "published", "mca_rows"};
    for (int a = 0; a < o->alphas.count; a++) {
        options.alpha = o->alphas.values[a];
        for (int s = 0; s < MCA_PATHS; s++) {
            fprintf(stderr, "mca-bench: %s, %d tokens, batch %d: %s, alpha %g\n",
                    c->shape->name, c->tokens, c->batch, names[s], options.alpha);
            layer->value_strategy = strategies[s];
            options.exact_rows = exact_rows[s];
            time_layer(layer, &options, o, c->batch, c->tokens, w->lengths, w->hidden_buffer,
                       w->output_buffer, &c->rows[c->count]);
            c->rows[c->count++].path = names[s];
        }
    }
    mca_attention_destroy(layer);

    if (!o->skip_openblas) {
        fprintf(stderr, "mca-bench: %s, %d tokens, batch %d: OpenBLAS\n", c->shape->name,
                c->tokens, c->batch);
        time_host(&w->weights, o, c->batch, c->tokens, w->lengths, w->hidden, w->output,
                  &c->rows[c->count++]);
    }
}

int main(int argc, char **argv)
{
    bench_options_t o;
    parse_options(argc, argv, &o);

    /* The untuned exact path is timed first, before the tuned parameters are applied: CLBlast
     * keeps parameters per device for the whole process. */
    mca_context_options_t context_options;
    mca_context_options_init(&context_options);
    context_options.log = log_to_stderr;
    context_options.tuning_file = MCA_TUNING_NONE;
    mca_context_t *context = NULL;
    int status = mca_context_create(&context_options, &context);
    if (status != MCA_SUCCESS)
        fail("creating the OpenCL context", status);

    model_t model;
    load_model(o.model_dir, &model);
    size_t stream_length = 0;
    int32_t *stream = read_token_stream(o.sentences, &model, &stream_length);

    config_t *configs = calloc(3 * MAX_LIST * MAX_LIST, sizeof *configs);
    int config_count = 0;
    for (size_t s = 0; s < sizeof all_shapes / sizeof *all_shapes; s++) {
        if (!shape_selected(&o, all_shapes[s].name))
            continue;
        for (int t = 0; t < o.tokens.count; t++) {
            for (int b = 0; b < o.batches.count; b++) {
                config_t *c = &configs[config_count++];
                c->shape = &all_shapes[s];
                c->tokens = o.tokens.values[t];
                c->batch = o.batches.values[b];
            }
        }
    }

    if (!o.skip_untuned) {
        for (int i = 0; i < config_count; i++) {
            config_t *c = &configs[i];
            fprintf(stderr, "mca-bench: %s, %d tokens, batch %d: exact, untuned CLBlast\n",
                    c->shape->name, c->tokens, c->batch);
            workload_t w;
            prepare_workload(context, &model, c->shape, stream, stream_length, c->batch,
                             c->tokens, &w);
            measure_exact(context, &w, &o, c->batch, c->tokens, "exact_untuned",
                          &c->rows[c->count++]);
            release_workload(&w);
        }
    }

    status = mca_tuning_apply(context, o.tuning_file);
    if (status != MCA_SUCCESS)
        fail("applying tuned CLBlast parameters", status);

    for (int i = 0; i < config_count; i++) {
        config_t *c = &configs[i];
        workload_t w;
        prepare_workload(context, &model, c->shape, stream, stream_length, c->batch, c->tokens,
                         &w);
        measure_config(context, &w, &o, c);
        release_workload(&w);
    }

    FILE *csv = o.csv_path != NULL ? fopen(o.csv_path, "w") : NULL;
    if (o.csv_path != NULL && csv == NULL) {
        fprintf(stderr, "mca-bench: cannot write %s: %s\n", o.csv_path, strerror(errno));
        return 1;
    }
    if (csv != NULL) {
        write_csv_header(csv);
        for (int i = 0; i < config_count; i++)
            write_csv_rows(csv, &configs[i], o.budget_length);
        fclose(csv);
    }

    FILE *markdown = o.markdown_path != NULL ? fopen(o.markdown_path, "a") : stdout;
    if (markdown == NULL) {
        fprintf(stderr, "mca-bench: cannot append to %s: %s\n", o.markdown_path,
                strerror(errno));
        return 1;
    }
    write_markdown_heading(markdown, argc, argv, context, &o);
    for (int i = 0; i < config_count; i++) {
        write_markdown_config(markdown, &configs[i]);
        write_markdown_targets(markdown, &configs[i], &o);
    }
    if (markdown != stdout)
        fclose(markdown);

    free(configs);
    free(stream);
    free_model(&model);
    mca_context_destroy(context);
    return 0;
}
