/* Part of mca-embed: parses its command line into settings_t without printing or exiting. */
#include "embed_args.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mca.h"

/* Longest prefix of a value, in bytes, that a message quotes. */
#define QUOTED_VALUE_MAX 200

/* Parses a whole decimal integer in [minimum, maximum]. */
static bool parse_int(const char *text, long minimum, long maximum, int *value)
{
    char *end;
    errno = 0;
    long parsed = strtol(text, &end, 10);
    if (end == text || *end != '\0' || errno == ERANGE || parsed < minimum || parsed > maximum)
        return false;
    *value = (int)parsed;
    return true;
}

/* Parses a whole unsigned 64-bit decimal integer; strtoull alone would accept "-1". */
static bool parse_seed(const char *text, uint64_t *value)
{
    if (!isdigit((unsigned char)text[0]))
        return false;
    char *end;
    errno = 0;
    unsigned long long parsed = strtoull(text, &end, 10);
    if (*end != '\0' || errno == ERANGE)
        return false;
    *value = (uint64_t)parsed;
    return true;
}

/* Parses a whole number that is finite and > 0 also as a float. */
static bool parse_alpha(const char *text, double *value)
{
    char *end;
    errno = 0;
    double parsed = strtod(text, &end);
    if (end == text || *end != '\0' || errno == ERANGE || !isfinite((float)parsed) ||
        (float)parsed <= 0.0f)
        return false;
    *value = parsed;
    return true;
}

/* Parses "PLATFORM:DEVICE" as two indices >= 0. */
static bool parse_device(const char *text, int *platform, int *device)
{
    const char *colon = strchr(text, ':');
    if (colon == NULL || colon == text)
        return false;

    char platform_text[32];
    size_t length = (size_t)(colon - text);
    if (length >= sizeof platform_text)
        return false;
    memcpy(platform_text, text, length);
    platform_text[length] = '\0';
    return parse_int(platform_text, 0, INT_MAX, platform) && parse_int(colon + 1, 0, INT_MAX, device);
}

enum {
    OPTION_MODEL = 256,
    OPTION_MODE,
    OPTION_ALPHA,
    OPTION_SEED,
    OPTION_BUDGET_LENGTH,
    OPTION_MIN_SAMPLES,
    OPTION_BATCH,
    OPTION_DEVICE,
    OPTION_OUTPUT,
    OPTION_REPORT,
    OPTION_QUIET,
    OPTION_HELP,
};

static const struct option long_options[] = {
    {"model", required_argument, NULL, OPTION_MODEL},
    {"mode", required_argument, NULL, OPTION_MODE},
    {"alpha", required_argument, NULL, OPTION_ALPHA},
    {"seed", required_argument, NULL, OPTION_SEED},
    {"budget-length", required_argument, NULL, OPTION_BUDGET_LENGTH},
    {"min-samples", required_argument, NULL, OPTION_MIN_SAMPLES},
    {"batch", required_argument, NULL, OPTION_BATCH},
    {"device", required_argument, NULL, OPTION_DEVICE},
    {"output", required_argument, NULL, OPTION_OUTPUT},
    {"report", required_argument, NULL, OPTION_REPORT},
    {"quiet", no_argument, NULL, OPTION_QUIET},
    {"help", no_argument, NULL, OPTION_HELP},
    {NULL, 0, NULL, 0},
};

/* Appends printf-style text to the message; text beyond the buffer is dropped. */
static void append(char *message, const char *format, ...) __attribute__((format(printf, 2, 3)));

static void append(char *message, const char *format, ...)
{
    size_t used = strlen(message);
    va_list args;
    va_start(args, format);
    vsnprintf(message + used, EMBED_ARGS_MESSAGE_SIZE - used, format, args);
    va_end(args);
}

/* Appends `value` between two `quote` characters, cut after QUOTED_VALUE_MAX bytes at a
 * UTF-8 character boundary and then followed by "...", so that the message always fits its
 * buffer. */
static void append_quoted(char *message, char quote, const char *value)
{
    size_t length = strlen(value);
    const char *ellipsis = "";
    if (length > QUOTED_VALUE_MAX) {
        length = QUOTED_VALUE_MAX;
        while (length > 0 && ((unsigned char)value[length] & 0xC0u) == 0x80u)
            length--;
        ellipsis = "...";
    }
    append(message, "%c%.*s%s%c", quote, (int)length, value, ellipsis, quote);
}

static const char *value_error(char *message, const char *option, const char *value,
                               const char *expected)
{
    message[0] = '\0';
    append(message, "invalid value for --%s: ", option);
    append_quoted(message, '"', value);
    append(message, "; expected %s", expected);
    return message;
}

/* Applies one option to *settings. Returns NULL, or the message for an invalid value. */
static const char *apply_option(int option, const char *value, settings_t *settings,
                                char *message)
{
    switch (option) {
    case OPTION_MODEL:
        if (value[0] == '\0')
            return value_error(message, "model", value, "a model directory");
        settings->model_dir = value;
        return NULL;
    case OPTION_MODE:
        if (strcmp(value, "exact") == 0)
            settings->mode = RUN_EXACT;
        else if (strcmp(value, "mca") == 0)
            settings->mode = RUN_MCA;
        else if (strcmp(value, "compare") == 0)
            settings->mode = RUN_COMPARE;
        else
            return value_error(message, "mode", value, "exact, mca or compare");
        return NULL;
    case OPTION_ALPHA:
        if (!parse_alpha(value, &settings->alpha))
            return value_error(message, "alpha", value, "a finite number > 0");
        return NULL;
    case OPTION_SEED:
        if (!parse_seed(value, &settings->seed))
            return value_error(message, "seed", value,
                               "an integer in 0 .. 18446744073709551615");
        return NULL;
    case OPTION_BUDGET_LENGTH:
        if (!parse_int(value, 0, MCA_MAX_BUDGET_LENGTH, &settings->budget_length))
            return value_error(message, "budget-length", value, "an integer in 0 .. 1048576");
        return NULL;
    case OPTION_MIN_SAMPLES:
        if (!parse_int(value, 0, INT_MAX, &settings->min_samples))
            return value_error(message, "min-samples", value, "an integer >= 0");
        return NULL;
    case OPTION_BATCH:
        if (!parse_int(value, 1, MAX_BATCH, &settings->batch))
            return value_error(message, "batch", value, "an integer in 1 .. 65536");
        return NULL;
    case OPTION_DEVICE:
        if (!parse_device(value, &settings->platform_index, &settings->device_index))
            return value_error(message, "device", value,
                               "PLATFORM:DEVICE, two indices >= 0 such as 0:0");
        return NULL;
    case OPTION_OUTPUT:
        if (value[0] == '\0')
            return value_error(message, "output", value, "a file path");
        settings->output_path = value;
        return NULL;
    case OPTION_REPORT:
        if (strcmp(value, "text") == 0)
            settings->report = REPORT_TEXT;
        else if (strcmp(value, "json") == 0)
            settings->report = REPORT_JSON;
        else
            return value_error(message, "report", value, "text or json");
        return NULL;
    case OPTION_QUIET:
        settings->quiet = true;
        return NULL;
    default:
        snprintf(message, EMBED_ARGS_MESSAGE_SIZE, "internal error: option %d has no handler",
                 option);
        return message;
    }
}

/*
 * Writes the message for a command-line word that getopt_long rejected with '?', in the
 * words of glibc's own messages, which opterr = 0 turns off. glibc leaves optopt at the
 * invalid short option character, at the value of a long option whose argument is missing
 * or not allowed, and at 0 for a long option that is unknown or an ambiguous prefix. The
 * rejected long option is then argv[optind - 1].
 */
static const char *option_error(int argc, char **argv, char *message)
{
    message[0] = '\0';
    for (const struct option *option = long_options; option->name != NULL; ++option) {
        if (optopt == option->val) {
            append(message, "option '--%s' %s", option->name,
                   option->has_arg == no_argument ? "doesn't allow an argument"
                                                  : "requires an argument");
            return message;
        }
    }
    if (optopt != 0) {
        append(message, "invalid option -- '%c'", optopt);
        return message;
    }

    const char *word = optind >= 1 && optind <= argc ? argv[optind - 1] : "";
    const char *name = strncmp(word, "--", 2) == 0 ? word + 2 : word;
    const size_t name_length = strcspn(name, "=");
    int matches = 0;
    for (const struct option *option = long_options; option->name != NULL; ++option)
        matches += strncmp(option->name, name, name_length) == 0;

    if (matches < 2) {
        append(message, "unrecognized option ");
        append_quoted(message, '\'', word);
        return message;
    }
    append(message, "option ");
    append_quoted(message, '\'', word);
    append(message, " is ambiguous; possibilities:");
    for (const struct option *option = long_options; option->name != NULL; ++option) {
        if (strncmp(option->name, name, name_length) == 0)
            append(message, " '--%s'", option->name);
    }
    return message;
}

const char *embed_args_parse(int argc, char **argv, settings_t *settings,
                             char message[EMBED_ARGS_MESSAGE_SIZE])
{
    const char *model_dir = getenv("MCA_MODEL_DIR");
    *settings = (settings_t){
        .model_dir = model_dir != NULL && model_dir[0] != '\0' ? model_dir : DEFAULT_MODEL_DIR,
        .mode = RUN_MCA,
        .alpha = DEFAULT_ALPHA,
        .min_samples = 1,
        .batch = DEFAULT_BATCH,
        .platform_index = -1,
        .device_index = -1,
        .report = REPORT_TEXT,
    };
    message[0] = '\0';

    opterr = 0;
    optind = 0;
    int option;
    while ((option = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
        if (option == OPTION_HELP) {
            settings->help = true;
            return NULL;
        }
        if (option == '?')
            return option_error(argc, argv, message);
        const char *error = apply_option(option, optarg, settings, message);
        if (error != NULL)
            return error;
    }

    if (argc - optind > 1) {
        snprintf(message, EMBED_ARGS_MESSAGE_SIZE,
                 "too many arguments: expected at most one input file, got %d", argc - optind);
        return message;
    }
    if (optind < argc && strcmp(argv[optind], "-") != 0)
        settings->input_path = argv[optind];
    return NULL;
}
