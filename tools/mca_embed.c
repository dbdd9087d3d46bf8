/*
 * mca-embed: sentence embeddings with exact or Monte-Carlo attention, and a report of how
 * closely the two agree. Run `mca-embed --help` for the options.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "embed_args.h"
#include "embed_output.h"
#include "mca.h"
#include "tokenizer.h"

#define PROGRAM "mca-embed"

/* Exit statuses: 1 for a failure while running, 2 for a usage error. */
#define EXIT_RUN_FAILURE 1
#define EXIT_USAGE 2

typedef struct sentences {
    char **texts;
    int count;
    int capacity;
} sentences_t;

/* Embeddings and measurements of one mode over the whole input. */
typedef struct run_result {
    float *embeddings; /* (sentences, hidden size), L2-normalized */
    long long tokens;  /* valid tokens, [CLS] and [SEP] included */
    double seconds;    /* wall time of the timed embedding calls */
    mca_forward_stats_t stats;
} run_result_t;

/* What the library's log messages during an embedding call refer to. log_message adds it to
 * each message, because the library numbers texts from 0 within the call. */
typedef struct log_state {
    const char *mode;   /* mode of the current call, NULL outside embedding calls */
    int first, last;    /* sentences of the current call, numbered from 1 */
    bool mute_warnings; /* the current call would repeat warnings already printed */
} log_state_t;

static log_state_t log_state;

/* Agreement between MCA and exact embeddings of the same sentences. */
typedef struct comparison {
    double cosine_mean;
    double cosine_min;
    double nn_agreement; /* NAN when there are fewer than two sentences */
    int nn_agreeing;
} comparison_t;

static void print_usage(FILE *stream)
{
    fprintf(stream,
            "Usage: " PROGRAM " [OPTION]... [FILE]\n"
            "Embed sentences, one per line, with a BERT sentence encoder such as\n"
            "all-MiniLM-L6-v2, using exact attention, Monte-Carlo attention (MCA), or both\n"
            "compared on the same input.\n"
            "\n"
            "Reads FILE, or standard input when FILE is \"-\" or absent. A trailing \"\\n\" or\n"
            "\"\\r\\n\" is stripped, and lines that are empty or contain only whitespace are\n"
            "ignored, so sentence i is the i-th non-blank line. Every line must be valid\n"
            "UTF-8 without NUL bytes, or the run stops before loading the model. Sentences\n"
            "longer than the model allows (512 tokens for all-MiniLM-L6-v2) keep their\n"
            "first tokens, with a warning.\n"
            "\n"
            "Options:\n"
            "  --model DIR          model directory with config.json, model.safetensors and\n"
            "                       vocab.txt (default: $MCA_MODEL_DIR, else " DEFAULT_MODEL_DIR
            ")\n"
            "  --mode MODE          exact, mca or compare (default: mca); compare runs exact,\n"
            "                       then MCA, and reports how closely they agree\n"
            "  --alpha A            MCA precision, a finite number > 0; smaller values draw\n"
            "                       more samples (default: %g, the largest alpha whose mean\n"
            "                       embedding cosine to exact stayed >= 0.998 on the\n"
            "                       all-MiniLM-L6-v2 sweep in bench/RESULTS.md; with the\n"
            "                       paper's --budget-length 128, alpha 0.2 gave 0.996)\n"
            "  --seed N             64-bit seed of the MCA sampler (default: 0)\n"
            "  --budget-length N    budget length n_b in tokens, 0 .. %d; 0 uses each\n"
            "                       sentence's own length (default: 0)\n"
            "  --min-samples N      minimum samples per token, 0 .. hidden size (default: 1)\n"
            "  --batch N            sentences per device call, 1 .. %d (default: %d)\n"
            "  --device P:D         OpenCL platform and device index (default: $MCA_PLATFORM\n"
            "                       and $MCA_DEVICE, else 0:0)\n"
            "  --output FILE        write the embeddings as a float32 .npy file of shape\n"
            "                       (sentences, hidden size); in compare mode the MCA ones.\n"
            "                       It is written to FILE.tmp.XXXXXX and renamed to FILE,\n"
            "                       so FILE is never left half-written\n"
            "  --report FORMAT      text or json (default: text)\n"
            "  --quiet              print no progress\n"
            "  --help               print this help and exit\n"
            "\n"
            "Progress lines (\"MODE: N/M sentences\") go to standard error, at most once per\n"
            "second, when the input spans more than one batch. Seconds are the wall time of\n"
            "the embedding calls. They exclude model loading and an untimed warm-up call on\n"
            "the first batch of each mode, which compiles the device kernels.\n"
            "\n"
            "Exit status: 0 on success, 1 when a step fails, 2 on a usage error.\n",
            DEFAULT_ALPHA, MCA_MAX_BUDGET_LENGTH, MAX_BATCH, DEFAULT_BATCH);
}

/* Prints a usage error and the --help hint to standard error. */
static void print_usage_error(const char *message)
{
    fprintf(stderr, PROGRAM ": %s\nTry '" PROGRAM " --help' for more information.\n", message);
}

/* ------------------------------------------------------------------------------------ */
/* Input                                                                                 */
/* ------------------------------------------------------------------------------------ */

static void sentences_free(sentences_t *sentences)
{
    for (int i = 0; i < sentences->count; ++i)
        free(sentences->texts[i]);
    free(sentences->texts);
    *sentences = (sentences_t){NULL, 0, 0};
}

static bool is_blank(const char *line)
{
    for (; *line != '\0'; ++line) {
        if (!isspace((unsigned char)*line))
            return false;
    }
    return true;
}

/* Checks that line `number` of `name`, `length` bytes without its line ending, is text the
 * encoder accepts. Prints why and returns false when it contains a NUL byte, which would
 * silently end the sentence early, or is not valid UTF-8. */
static bool check_line(const char *name, long long number, const char *line, size_t length)
{
    const char *nul = memchr(line, '\0', length);
    if (nul != NULL) {
        fprintf(stderr,
                PROGRAM ": line %lld of %s contains a NUL byte at byte offset %zu; remove it, "
                        "or convert the file to UTF-8 if it is UTF-16\n",
                number, name, (size_t)(nul - line));
        return false;
    }

    const char *reason = NULL;
    size_t offset = 0;
    if (!mca_utf8_validate((const unsigned char *)line, length, &offset, &reason)) {
        fprintf(stderr,
                PROGRAM ": line %lld of %s is not valid UTF-8: %s at byte offset %zu (byte "
                        "0x%02X); convert the file to UTF-8\n",
                number, name, reason, offset, (unsigned)(unsigned char)line[offset]);
        return false;
    }
    return true;
}

/* Appends a copy of `line`. Returns false when out of memory or at INT_MAX sentences. */
static bool sentences_append(sentences_t *sentences, const char *line)
{
    if (sentences->count == sentences->capacity) {
        if (sentences->capacity > INT_MAX / 2)
            return false;
        int capacity = sentences->capacity > 0 ? 2 * sentences->capacity : 256;
        char **grown = realloc(sentences->texts, (size_t)capacity * sizeof *grown);
        if (grown == NULL)
            return false;
        sentences->texts = grown;
        sentences->capacity = capacity;
    }
    char *copy = strdup(line);
    if (copy == NULL)
        return false;
    sentences->texts[sentences->count++] = copy;
    return true;
}

/* Reads the non-blank lines of `path` (standard input when NULL), without "\n" or "\r\n".
 * Fails on the first line that check_line rejects. */
static int read_sentences(const char *path, sentences_t *sentences)
{
    const char *name = path != NULL ? path : "standard input";
    FILE *input = path != NULL ? fopen(path, "r") : stdin;
    if (input == NULL) {
        fprintf(stderr, PROGRAM ": opening input file \"%s\" failed: %s\n", path,
                strerror(errno));
        return EXIT_RUN_FAILURE;
    }

    char *line = NULL;
    size_t capacity = 0;
    ssize_t length;
    long long line_number = 0;
    int status = 0;
    while ((length = getline(&line, &capacity, input)) != -1) {
        line_number++;
        if (length > 0 && line[length - 1] == '\n')
            line[--length] = '\0';
        if (length > 0 && line[length - 1] == '\r')
            line[--length] = '\0';
        if (!check_line(name, line_number, line, (size_t)length)) {
            status = EXIT_RUN_FAILURE;
            break;
        }
        if (is_blank(line))
            continue;
        if (!sentences_append(sentences, line)) {
            fprintf(stderr, PROGRAM ": storing sentence %d of %s failed: out of memory\n",
                    sentences->count + 1, name);
            status = EXIT_RUN_FAILURE;
            break;
        }
    }
    if (status == 0 && ferror(input)) {
        fprintf(stderr, PROGRAM ": reading %s failed: %s\n", name, strerror(errno));
        status = EXIT_RUN_FAILURE;
    }

    free(line);
    if (path != NULL)
        fclose(input);
    return status;
}

/* ------------------------------------------------------------------------------------ */
/* Embedding                                                                             */
/* ------------------------------------------------------------------------------------ */

static double monotonic_seconds(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

static const char *mode_name(mca_mode_t mode)
{
    return mode == MCA_MODE_MCA ? "mca" : "exact";
}

/* Embeds every sentence in batches of settings->batch. Sentence i draws from sequence
 * number i, so MCA results do not depend on the batch size. `repeat` mutes the library's
 * warnings, because the only warnings that embedding logs are about truncated sentences,
 * which an earlier pass over the same sentences has printed. */
static int embed_sentences(mca_encoder_t *encoder, const settings_t *settings, mca_mode_t mode,
                           const sentences_t *sentences, bool repeat, run_result_t *result)
{
    const int width = mca_encoder_hidden_size(encoder);
    const int count = sentences->count;
    const int batches = (count + settings->batch - 1) / settings->batch;
    const bool show_progress = !settings->quiet && batches > 1;
    int *token_counts = malloc((size_t)settings->batch * sizeof *token_counts);

    *result = (run_result_t){0};
    mca_forward_stats_reset(&result->stats);
    result->embeddings = malloc((size_t)count * (size_t)width * sizeof *result->embeddings);
    if (token_counts == NULL || result->embeddings == NULL) {
        fprintf(stderr, PROGRAM ": allocating embeddings for %d sentences failed: out of memory\n",
                count);
        free(token_counts);
        return EXIT_RUN_FAILURE;
    }

    mca_forward_options_t options;
    mca_forward_options_init(&options);
    options.mode = mode;
    options.alpha = (float)settings->alpha;
    options.seed = settings->seed;
    options.budget_length = settings->budget_length;
    options.min_samples = settings->min_samples;

    /* The warm-up call compiles the device kernels that the timed calls then reuse. Its
     * output is overwritten below, its statistics are dropped, and its warnings are muted
     * because the timed call over the same sentences repeats them. */
    const int first_batch = count < settings->batch ? count : settings->batch;
    log_state = (log_state_t){mode_name(mode), 1, first_batch, true};
    int status = mca_encoder_embed(encoder, &options, first_batch,
                                   (const char *const *)sentences->texts, result->embeddings,
                                   NULL, NULL);
    if (status != MCA_SUCCESS) {
        fprintf(stderr, PROGRAM ": warm-up in %s mode failed: %s\n", mode_name(mode),
                mca_last_error());
        free(token_counts);
        return EXIT_RUN_FAILURE;
    }

    const double start = monotonic_seconds();
    double last_progress = start;
    for (int first = 0; first < count; first += settings->batch) {
        const int size = count - first < settings->batch ? count - first : settings->batch;
        options.first_sequence = (uint32_t)first;
        log_state = (log_state_t){mode_name(mode), first + 1, first + size, repeat};
        status = mca_encoder_embed(encoder, &options, size,
                                   (const char *const *)sentences->texts + first,
                                   result->embeddings + (size_t)first * (size_t)width,
                                   token_counts, mode == MCA_MODE_MCA ? &result->stats : NULL);
        if (status != MCA_SUCCESS) {
            fprintf(stderr, PROGRAM ": embedding sentences %d to %d in %s mode failed: %s\n",
                    first + 1, first + size, mode_name(mode), mca_last_error());
            free(token_counts);
            return EXIT_RUN_FAILURE;
        }
        for (int i = 0; i < size; ++i)
            result->tokens += token_counts[i];

        const double now = monotonic_seconds();
        const bool done = first + size == count;
        if (show_progress && (now - last_progress >= 1.0 || done)) {
            fprintf(stderr, "%s: %d/%d sentences\n", mode_name(mode), first + size, count);
            last_progress = now;
        }
    }
    result->seconds = monotonic_seconds() - start;
    log_state = (log_state_t){0};

    free(token_counts);
    return 0;
}

static double cosine(const float *a, const float *b, int width)
{
    double dot = 0.0, norm_a = 0.0, norm_b = 0.0;
    for (int c = 0; c < width; ++c) {
        dot += (double)a[c] * b[c];
        norm_a += (double)a[c] * a[c];
        norm_b += (double)b[c] * b[c];
    }
    double denominator = sqrt(norm_a) * sqrt(norm_b);
    return denominator > 0.0 ? dot / denominator : 0.0;
}

/* Returns the index of the sentence other than `i` with the highest cosine to sentence i;
 * ties go to the lower index. */
static int nearest_neighbour(const float *embeddings, int count, int width, int i)
{
    const float *row = embeddings + (size_t)i * (size_t)width;
    int best = -1;
    double best_cosine = -INFINITY;
    for (int j = 0; j < count; ++j) {
        if (j == i)
            continue;
        double value = cosine(row, embeddings + (size_t)j * (size_t)width, width);
        if (value > best_cosine) {
            best_cosine = value;
            best = j;
        }
    }
    return best;
}

/* Compares MCA embeddings with exact ones. The nearest-neighbour search is quadratic in the
 * number of sentences. */
static comparison_t compare_embeddings(const float *exact, const float *approximate, int count,
                                       int width)
{
    comparison_t comparison = {0.0, INFINITY, NAN, 0};
    for (int i = 0; i < count; ++i) {
        double value = cosine(exact + (size_t)i * (size_t)width,
                              approximate + (size_t)i * (size_t)width, width);
        comparison.cosine_mean += value / count;
        if (value < comparison.cosine_min)
            comparison.cosine_min = value;
    }

    if (count >= 2) {
        for (int i = 0; i < count; ++i) {
            if (nearest_neighbour(exact, count, width, i) ==
                nearest_neighbour(approximate, count, width, i))
                comparison.nn_agreeing++;
        }
        comparison.nn_agreement = (double)comparison.nn_agreeing / count;
    }
    return comparison;
}

/* ------------------------------------------------------------------------------------ */
/* Reports                                                                               */
/* ------------------------------------------------------------------------------------ */

static void print_text_report(const settings_t *settings, int count, const run_result_t *exact,
                              const run_result_t *approximate, const comparison_t *comparison)
{
    const run_result_t *any = exact != NULL ? exact : approximate;
    printf("sentences                       %d\n", count);
    printf("tokens                          %lld\n", any->tokens);
    if (approximate != NULL) {
        const mca_forward_stats_t *stats = &approximate->stats;
        printf("alpha                           %g\n", settings->alpha);
        printf("value FLOP fraction             %.4f (valid tokens only)\n", stats->flops_fraction);
        printf("value FLOP fraction, paper      %.4f (mean r/D, padding included)\n",
               stats->flops_fraction_paper);
        printf("error bound per row, mean       %.4g\n", stats->error_bound_mean);
        printf("error bound per row, max        %.4g\n", stats->error_bound_max);
    }
    if (comparison != NULL) {
        printf("cosine MCA vs exact, mean       %.6f\n", comparison->cosine_mean);
        printf("cosine MCA vs exact, min        %.6f\n", comparison->cosine_min);
        if (count >= 2)
            printf("nearest-neighbour agreement     %.4f (%d of %d sentences)\n",
                   comparison->nn_agreement, comparison->nn_agreeing, count);
        else
            printf("nearest-neighbour agreement     n/a (needs 2 sentences)\n");
    }
    if (exact != NULL)
        printf("seconds, exact                  %.3f\n", exact->seconds);
    if (approximate != NULL)
        printf("seconds, MCA                    %.3f\n", approximate->seconds);
}

static int print_json_report(const settings_t *settings, int count, const run_result_t *exact,
                             const run_result_t *approximate, const comparison_t *comparison)
{
    const run_result_t *any = exact != NULL ? exact : approximate;
    cJSON *report = cJSON_CreateObject();
    if (report == NULL)
        goto failed;

    bool added = cJSON_AddNumberToObject(report, "sentences", count) != NULL &&
                 cJSON_AddNumberToObject(report, "tokens", (double)any->tokens) != NULL;
    if (approximate != NULL) {
        const mca_forward_stats_t *stats = &approximate->stats;
        added = added && cJSON_AddNumberToObject(report, "alpha", settings->alpha) != NULL &&
                cJSON_AddNumberToObject(report, "flops_fraction", stats->flops_fraction) != NULL &&
                cJSON_AddNumberToObject(report, "flops_fraction_paper",
                                        stats->flops_fraction_paper) != NULL;
        /* The error bound is part of the single-mode report only, so that compare mode
         * prints exactly its documented keys. */
        if (comparison == NULL)
            added = added &&
                    cJSON_AddNumberToObject(report, "error_bound_mean", stats->error_bound_mean) !=
                        NULL &&
                    cJSON_AddNumberToObject(report, "error_bound_max", stats->error_bound_max) !=
                        NULL;
    }
    if (comparison != NULL) {
        added = added &&
                cJSON_AddNumberToObject(report, "cosine_mean", comparison->cosine_mean) != NULL &&
                cJSON_AddNumberToObject(report, "cosine_min", comparison->cosine_min) != NULL;
        if (count >= 2)
            added = added && cJSON_AddNumberToObject(report, "nn_agreement",
                                                     comparison->nn_agreement) != NULL;
        else
            added = added && cJSON_AddNullToObject(report, "nn_agreement") != NULL;
    }
    if (exact != NULL)
        added = added && cJSON_AddNumberToObject(report, "seconds_exact", exact->seconds) != NULL;
    if (approximate != NULL)
        added = added &&
                cJSON_AddNumberToObject(report, "seconds_mca", approximate->seconds) != NULL;
    if (!added)
        goto failed;

    char *text = cJSON_PrintUnformatted(report);
    if (text == NULL)
        goto failed;
    printf("%s\n", text);
    cJSON_free(text);
    cJSON_Delete(report);
    return 0;

failed:
    cJSON_Delete(report);
    fprintf(stderr, PROGRAM ": building the JSON report failed: out of memory\n");
    return EXIT_RUN_FAILURE;
}

/* ------------------------------------------------------------------------------------ */
/* Main                                                                                  */
/* ------------------------------------------------------------------------------------ */

/* Prints the library's warnings and errors, during an embedding call with the sentences
 * that the call's text numbers refer to. An error is printed again, with the failed step,
 * when the call returns. The logged copy can carry more detail, such as an OpenCL build log. */
static void log_message(mca_log_level_t level, const char *message, void *user_data)
{
    const log_state_t *state = user_data;
    const bool error = level >= MCA_LOG_ERROR;
    if (!error && state->mute_warnings)
        return;
    if (state->mode == NULL)
        fprintf(stderr, PROGRAM ": %s: %s\n", error ? "error" : "warning", message);
    else
        fprintf(stderr, PROGRAM ": %s: %s mode, sentences %d to %d (text 0 is sentence %d): %s\n",
                error ? "error" : "warning", state->mode, state->first, state->last,
                state->first, message);
}

static int create_encoder(const settings_t *settings, mca_context_t **context,
                          mca_encoder_t **encoder)
{
    mca_context_options_t options;
    mca_context_options_init(&options);
    options.platform_index = settings->platform_index;
    options.device_index = settings->device_index;
    options.log = log_message;
    options.log_user_data = &log_state;
    options.log_level = MCA_LOG_WARNING;

    if (mca_context_create(&options, context) != MCA_SUCCESS) {
        fprintf(stderr, PROGRAM ": creating the OpenCL context failed: %s\n", mca_last_error());
        return EXIT_RUN_FAILURE;
    }
    if (mca_encoder_load(*context, settings->model_dir, encoder) != MCA_SUCCESS) {
        fprintf(stderr, PROGRAM ": loading the model from %s failed: %s\n", settings->model_dir,
                mca_last_error());
        return EXIT_RUN_FAILURE;
    }
    return 0;
}

int main(int argc, char **argv)
{
    settings_t settings;
    char message[EMBED_ARGS_MESSAGE_SIZE];
    if (embed_args_parse(argc, argv, &settings, message) != NULL) {
        print_usage_error(message);
        return EXIT_USAGE;
    }
    if (settings.help) {
        print_usage(stdout);
        return EXIT_SUCCESS;
    }

    int status;
    sentences_t sentences = {NULL, 0, 0};
    mca_context_t *context = NULL;
    mca_encoder_t *encoder = NULL;
    run_result_t exact = {0}, approximate = {0};
    comparison_t comparison;

    status = read_sentences(settings.input_path, &sentences);
    if (status != 0)
        goto cleanup;
    if (sentences.count == 0) {
        fprintf(stderr, PROGRAM ": %s contains no sentences (blank lines are ignored)\n",
                settings.input_path != NULL ? settings.input_path : "standard input");
        status = EXIT_RUN_FAILURE;
        goto cleanup;
    }

    if (settings.output_path != NULL && !check_output_path(settings.output_path)) {
        status = EXIT_RUN_FAILURE;
        goto cleanup;
    }

    status = create_encoder(&settings, &context, &encoder);
    if (status != 0)
        goto cleanup;

    const bool run_exact = settings.mode != RUN_MCA;
    const bool run_mca = settings.mode != RUN_EXACT;
    if (run_exact)
        status = embed_sentences(encoder, &settings, MCA_MODE_EXACT, &sentences, false, &exact);
    if (status == 0 && run_mca)
        status = embed_sentences(encoder, &settings, MCA_MODE_MCA, &sentences, run_exact,
                                 &approximate);
    if (status != 0)
        goto cleanup;

    const int width = mca_encoder_hidden_size(encoder);
    const bool compare = settings.mode == RUN_COMPARE;
    if (compare)
        comparison = compare_embeddings(exact.embeddings, approximate.embeddings,
                                        sentences.count, width);

    if (settings.output_path != NULL) {
        if (!write_npy(settings.output_path,
                       run_mca ? approximate.embeddings : exact.embeddings, sentences.count,
                       width)) {
            status = EXIT_RUN_FAILURE;
            goto cleanup;
        }
    }

    const run_result_t *exact_result = run_exact ? &exact : NULL;
    const run_result_t *mca_result = run_mca ? &approximate : NULL;
    const comparison_t *comparison_result = compare ? &comparison : NULL;
    if (settings.report == REPORT_JSON)
        status = print_json_report(&settings, sentences.count, exact_result, mca_result,
                                   comparison_result);
    else
        print_text_report(&settings, sentences.count, exact_result, mca_result,
                          comparison_result);
    if (status == 0 && (fflush(stdout) != 0 || ferror(stdout))) {
        fprintf(stderr, PROGRAM ": writing the report to standard output failed: %s\n",
                strerror(errno));
        status = EXIT_RUN_FAILURE;
    }

cleanup:
    free(exact.embeddings);
    free(approximate.embeddings);
    mca_encoder_destroy(encoder);
    mca_context_destroy(context);
    sentences_free(&sentences);
    return status;
}
