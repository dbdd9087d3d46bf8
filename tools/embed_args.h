/* Part of mca-embed: its settings and the parser that fills them from the command line. */
#ifndef MCA_EMBED_ARGS_H
#define MCA_EMBED_ARGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DEFAULT_MODEL_DIR "models/all-MiniLM-L6-v2"
/* Measured on tools/sentences.txt with the default budget length (bench/RESULTS.md): alpha
 * 0.02 keeps the mean embedding cosine to exact at 0.9985 for 95% of the value FLOPs, while
 * 0.05 drops it to 0.98 and 0.2 to 0.61. */
#define DEFAULT_ALPHA 0.02
#define DEFAULT_BATCH 32
#define MAX_BATCH 65536

/* Size of the buffer that receives a usage error. A value longer than 200 bytes is quoted
 * up to that length, followed by "...". */
#define EMBED_ARGS_MESSAGE_SIZE 640

typedef enum run_mode { RUN_EXACT, RUN_MCA, RUN_COMPARE } run_mode_t;
typedef enum report_format { REPORT_TEXT, REPORT_JSON } report_format_t;

/* Paths point into argv or the environment and live as long as they do. */
typedef struct settings {
    const char *model_dir;   /* never NULL or empty */
    const char *input_path;  /* NULL reads standard input */
    const char *output_path; /* NULL writes no embeddings, else not empty */
    run_mode_t mode;
    double alpha; /* as typed, for the report; the library receives it as a float */
    uint64_t seed;
    int budget_length;
    int min_samples;
    int batch;
    int platform_index; /* -1 reads MCA_PLATFORM, as the library does */
    int device_index;   /* -1 reads MCA_DEVICE; -1 exactly when platform_index is -1 */
    report_format_t report;
    bool quiet;
    bool help; /* --help came before any error: print the usage and run nothing */
} settings_t;

/*
 * Fills *settings from mca-embed's command line, with defaults for the options not given
 * (the model directory defaults to $MCA_MODEL_DIR when set and not empty). Stops at the
 * first error or at --help.
 *
 * Returns NULL on success. Otherwise writes a one-sentence usage error to `message`, which
 * names the invalid option or value and what was expected, and returns `message`. The
 * function prints nothing and never exits, so a test or fuzzer can call it repeatedly.
 *
 * Uses getopt_long, so it reorders argv's pointers (GNU permutation; the strings are not
 * written) and is not thread-safe. It resets getopt's state with optind = 0, which glibc
 * supports, so repeated calls each parse their argv from the start.
 */
const char *embed_args_parse(int argc, char **argv, settings_t *settings,
                             char message[EMBED_ARGS_MESSAGE_SIZE]);

#endif /* MCA_EMBED_ARGS_H */
