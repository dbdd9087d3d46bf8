/*
 * libFuzzer target for mca-embed's command-line parser (tools/embed_args.c).
 *
 * The input is split at NUL bytes into the words that follow "mca-embed" in argv, each in
 * a buffer of exactly its own size. Besides the sanitizers, the harness checks the
 * contract in tools/embed_args.h and aborts on a violation:
 *
 *   - a failure returns the caller's buffer with a message that is not empty, was not cut
 *     short by the buffer size and has one of the parser's message forms;
 *   - a success gives settings within the documented ranges, and paths that point into an
 *     argv word (the input file is a whole word other than "-");
 *   - the parser writes no argv string, and argv keeps the same pointers, maybe reordered;
 *   - a second parse of the same words gives the same result, so getopt's state is reset;
 *   - a success without --help gives the same settings again when parsed from a command
 *     line that the harness builds from those settings.
 */
#include "../tools/embed_args.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mca.h"

/* Words of the command line that the harness builds from settings: every option with a
 * value, --quiet and the input file. */
#define CANONICAL_WORDS 24

typedef struct command_line {
    int argc;
    char **argv;    /* argc + 1 pointers; the parser may reorder them */
    char **words;   /* the same pointers in input order, for checks and a second parse */
    size_t *sizes;  /* bytes of each word, NUL included */
    char *original; /* a copy of the input, to see whether a word was written */
    size_t original_size;
} command_line_t;

static void report_violation(const char *format, ...) __attribute__((format(printf, 1, 2)));

static void report_violation(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    fprintf(stderr, "fuzz_embed_args: contract violation: ");
    vfprintf(stderr, format, args);
    fprintf(stderr, "\n");
    va_end(args);
    abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* The default model directory then is DEFAULT_MODEL_DIR on every machine. */
    unsetenv("MCA_MODEL_DIR");
    unsetenv("POSIXLY_CORRECT");
    return 0;
}

/* Splits data at NUL bytes into "mca-embed" and one word per piece, each word malloc'd
 * with its own size. An input of n NUL bytes gives n + 1 words, the empty input none. */
static command_line_t split_words(const uint8_t *data, size_t size)
{
    size_t count = 0;
    if (size > 0) {
        count = 1;
        for (size_t i = 0; i < size; ++i)
            count += data[i] == '\0';
    }

    command_line_t line = {0};
    line.argc = (int)count + 1;
    line.argv = calloc(count + 2, sizeof *line.argv);
    line.words = calloc(count + 2, sizeof *line.words);
    line.sizes = calloc(count + 2, sizeof *line.sizes);
    line.original = malloc(size + 1);
    if (line.argv == NULL || line.words == NULL || line.sizes == NULL || line.original == NULL)
        abort();
    memcpy(line.original, data, size);
    line.original_size = size;

    static const char program[] = "mca-embed";
    line.words[0] = strdup(program);
    line.sizes[0] = sizeof program;
    size_t start = 0;
    for (size_t w = 1; w <= count; ++w) {
        size_t end = start;
        while (end < size && data[end] != '\0')
            ++end;
        line.sizes[w] = end - start + 1;
        line.words[w] = malloc(line.sizes[w]);
        if (line.words[w] == NULL)
            abort();
        memcpy(line.words[w], data + start, end - start);
        line.words[w][end - start] = '\0';
        start = end + 1;
    }
    if (line.words[0] == NULL)
        abort();
    memcpy(line.argv, line.words, (count + 1) * sizeof *line.argv);
    return line;
}

static void free_words(command_line_t *line)
{
    for (int w = 0; w < line->argc; ++w)
        free(line->words[w]);
    free(line->words);
    free(line->argv);
    free(line->sizes);
    free(line->original);
}

/* Returns whether `text` points at a byte inside word w, its terminating NUL included. */
static bool points_into(const command_line_t *line, int w, const char *text)
{
    return text >= line->words[w] && text < line->words[w] + line->sizes[w];
}

static void check_path(const command_line_t *line, const char *name, const char *path)
{
    if (path[0] == '\0')
        report_violation("%s is empty", name);
    for (int w = 1; w < line->argc; ++w) {
        if (points_into(line, w, path))
            return;
    }
    report_violation("%s \"%s\" points into no argv word", name, path);
}

/* Checks that the parser wrote no word and only reordered the argv pointers. */
static void check_argv(const command_line_t *line)
{
    if (line->argv[line->argc] != NULL)
        report_violation("argv[argc] is no longer NULL");
    if (strcmp(line->words[0], "mca-embed") != 0)
        report_violation("argv[0] was written: \"%s\"", line->words[0]);

    size_t offset = 0;
    for (int w = 1; w < line->argc; ++w) {
        size_t length = line->sizes[w] - 1;
        if (memcmp(line->words[w], line->original + offset, length) != 0 ||
            line->words[w][length] != '\0')
            report_violation("argv word %d was written", w);
        offset += length + 1;

        int seen = 0;
        for (int a = 0; a < line->argc; ++a)
            seen += line->argv[a] == line->words[w];
        if (seen != 1)
            report_violation("argv holds word %d %d times after parsing, expected once", w,
                             seen);
    }
}

static void check_message(const char *message, const char *result, const char *buffer)
{
    if (result != buffer)
        report_violation("a failure returned %p, not the message buffer %p", (const void *)result,
                         (const void *)buffer);
    size_t length = strnlen(message, EMBED_ARGS_MESSAGE_SIZE);
    if (length == 0)
        report_violation("a failure left the message empty");
    if (length >= EMBED_ARGS_MESSAGE_SIZE - 1)
        report_violation("the message filled its buffer, so it may have been cut: %.*s",
                         (int)length, message);

    static const char *const forms[] = {
        "invalid value for --", "unrecognized option '", "option '--",
        "invalid option -- '",  "too many arguments: ",
    };
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; ++i) {
        if (strncmp(message, forms[i], strlen(forms[i])) == 0)
            return;
    }
    report_violation("the message has no known form: %s", message);
}

static void check_settings(const command_line_t *line, const settings_t *settings)
{
    if (settings->help)
        return;
    if (settings->model_dir == NULL)
        report_violation("model_dir is NULL");
    if (strcmp(settings->model_dir, DEFAULT_MODEL_DIR) != 0 || settings->model_dir[0] == '\0')
        check_path(line, "model_dir", settings->model_dir);
    if (settings->output_path != NULL)
        check_path(line, "output_path", settings->output_path);
    if (settings->input_path != NULL) {
        bool whole_word = false;
        for (int w = 1; w < line->argc; ++w)
            whole_word = whole_word || settings->input_path == line->words[w];
        if (!whole_word)
            report_violation("input_path \"%s\" is not a whole argv word", settings->input_path);
        if (strcmp(settings->input_path, "-") == 0)
            report_violation("input_path is \"-\", which stands for standard input");
    }

    if (settings->mode != RUN_EXACT && settings->mode != RUN_MCA && settings->mode != RUN_COMPARE)
        report_violation("mode is %d", (int)settings->mode);
    if (settings->report != REPORT_TEXT && settings->report != REPORT_JSON)
        report_violation("report is %d", (int)settings->report);
    if (!isfinite((float)settings->alpha) || !((float)settings->alpha > 0.0f))
        report_violation("alpha is %.17g, which is not a finite float > 0", settings->alpha);
    if (settings->budget_length < 0 || settings->budget_length > MCA_MAX_BUDGET_LENGTH)
        report_violation("budget_length is %d", settings->budget_length);
    if (settings->min_samples < 0)
        report_violation("min_samples is %d", settings->min_samples);
    if (settings->batch < 1 || settings->batch > MAX_BATCH)
        report_violation("batch is %d", settings->batch);
    if ((settings->platform_index < 0) != (settings->device_index < 0) ||
        settings->platform_index < -1 || settings->device_index < -1)
        report_violation("device indices are %d:%d", settings->platform_index,
                         settings->device_index);
}

static bool same_text(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static void check_same_settings(const char *parse_name, const settings_t *a, const settings_t *b)
{
    if (!same_text(a->model_dir, b->model_dir) || !same_text(a->input_path, b->input_path) ||
        !same_text(a->output_path, b->output_path))
        report_violation("%s gives other paths", parse_name);
    if (a->mode != b->mode || a->report != b->report || a->quiet != b->quiet ||
        a->help != b->help)
        report_violation("%s gives another mode, report, quiet or help", parse_name);
    if (memcmp(&a->alpha, &b->alpha, sizeof a->alpha) != 0)
        report_violation("%s gives alpha %.17g instead of %.17g", parse_name, b->alpha, a->alpha);
    if (a->seed != b->seed || a->budget_length != b->budget_length ||
        a->min_samples != b->min_samples || a->batch != b->batch ||
        a->platform_index != b->platform_index || a->device_index != b->device_index)
        report_violation("%s gives another seed, budget length, minimum samples, batch or "
                         "device",
                         parse_name);
}

/* Parses the command line that states every field of *settings explicitly, and checks that
 * it gives the same settings. */
static void check_canonical(const settings_t *settings)
{
    static const char *const modes[] = {"exact", "mca", "compare"};
    static const char *const reports[] = {"text", "json"};
    char alpha[40], seed[24], budget[16], samples[16], batch[16], device[32];
    snprintf(alpha, sizeof alpha, "%.17g", settings->alpha);
    snprintf(seed, sizeof seed, "%" PRIu64, settings->seed);
    snprintf(budget, sizeof budget, "%d", settings->budget_length);
    snprintf(samples, sizeof samples, "%d", settings->min_samples);
    snprintf(batch, sizeof batch, "%d", settings->batch);
    snprintf(device, sizeof device, "%d:%d", settings->platform_index, settings->device_index);

    const char *words[CANONICAL_WORDS + 1];
    int count = 0;
    words[count++] = "mca-embed";
    words[count++] = "--model";
    words[count++] = settings->model_dir;
    words[count++] = "--mode";
    words[count++] = modes[settings->mode];
    words[count++] = "--alpha";
    words[count++] = alpha;
    words[count++] = "--seed";
    words[count++] = seed;
    words[count++] = "--budget-length";
    words[count++] = budget;
    words[count++] = "--min-samples";
    words[count++] = samples;
    words[count++] = "--batch";
    words[count++] = batch;
    words[count++] = "--report";
    words[count++] = reports[settings->report];
    if (settings->platform_index >= 0) {
        words[count++] = "--device";
        words[count++] = device;
    }
    if (settings->output_path != NULL) {
        words[count++] = "--output";
        words[count++] = settings->output_path;
    }
    if (settings->quiet)
        words[count++] = "--quiet";
    /* "--" keeps an input path that starts with "-" from being read as an option. */
    if (settings->input_path != NULL) {
        words[count++] = "--";
        words[count++] = settings->input_path;
    }
    words[count] = NULL;

    settings_t again;
    char message[EMBED_ARGS_MESSAGE_SIZE];
    if (embed_args_parse(count, (char **)words, &again, message) != NULL)
        report_violation("the canonical command line of the parsed settings fails: %s",
                         message);
    check_same_settings("the canonical command line", settings, &again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    command_line_t line = split_words(data, size);

    settings_t settings;
    char message[EMBED_ARGS_MESSAGE_SIZE];
    memset(message, 0x5a, sizeof message);
    const char *result = embed_args_parse(line.argc, line.argv, &settings, message);
    check_argv(&line);
    if (result != NULL)
        check_message(message, result, message);
    else
        check_settings(&line, &settings);

    /* A second parse, of the words in their input order. */
    memcpy(line.argv, line.words, (size_t)line.argc * sizeof *line.argv);
    settings_t second;
    char second_message[EMBED_ARGS_MESSAGE_SIZE];
    const char *second_result = embed_args_parse(line.argc, line.argv, &second, second_message);
    if ((result == NULL) != (second_result == NULL))
        report_violation("a second parse of the same words %s", result == NULL ? "fails" : "succeeds");
    if (result != NULL && strcmp(message, second_message) != 0)
        report_violation("a second parse gives another message: \"%s\", then \"%s\"", message,
                         second_message);
    if (result == NULL) {
        check_same_settings("a second parse", &settings, &second);
        if (!settings.help)
            check_canonical(&settings);
    }

    free_words(&line);
    return 0;
}
