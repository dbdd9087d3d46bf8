/*
 * Encoder: exact embeddings of all-MiniLM-L6-v2 against an independent reference, batching,
 * reproducibility and fidelity of MCA mode, statistics, truncation and the error paths of
 * loading and embedding. Tests that need the model skip when MCA_MODEL_DIR contains no model.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <errno.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "context.h"
#include "test_util.h"

typedef struct fixture {
    mca_context_t *context;
    mca_encoder_t *encoder; /* NULL when the model or the test data is absent */
    const char *model_dir;
    int width;

    char **sentences; /* lines of encoder_sentences.txt */
    int count;
    float *reference; /* (count, width) from encoder_reference.txt */
    float *exact;     /* (count, width) exact embeddings of one batch, computed on first use */

    int warnings;             /* warnings logged since the last reset */
    char last_warning[1024];
} fixture_t;

static fixture_t fixture;

static void log_message(mca_log_level_t level, const char *message, void *user_data)
{
    (void)user_data;
    if (level == MCA_LOG_WARNING) {
        fixture.warnings++;
        snprintf(fixture.last_warning, sizeof fixture.last_warning, "%s", message);
    }
    test_log(level, message, NULL);
}

static double seconds_since(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + 1e-9 * (double)(now.tv_nsec - start->tv_nsec);
}

static double cosine(const float *a, const float *b, int width)
{
    double dot = 0.0, norm_a = 0.0, norm_b = 0.0;
    for (int c = 0; c < width; c++) {
        dot += (double)a[c] * b[c];
        norm_a += (double)a[c] * a[c];
        norm_b += (double)b[c] * b[c];
    }
    return dot / (sqrt(norm_a) * sqrt(norm_b));
}

/* ------------------------------------------------------------------------------------ */
/* Test data                                                                             */
/* ------------------------------------------------------------------------------------ */

/* Returns a new string with dir + "/" + name. */
static char *join_path(const char *dir, const char *name)
{
    size_t length = strlen(dir) + strlen(name) + 2;
    char *path = malloc(length);
    assert_non_null(path);
    snprintf(path, length, "%s/%s", dir, name);
    return path;
}

static bool file_exists(const char *dir, const char *name)
{
    char *path = join_path(dir, name);
    bool exists = access(path, R_OK) == 0;
    free(path);
    return exists;
}

/* Reads every line of `path` without its "\n" or "\r\n". Returns the count, or -1. */
static int read_lines(const char *path, char ***lines)
{
    FILE *file = fopen(path, "r");
    if (file == NULL)
        return -1;

    char *line = NULL;
    size_t capacity = 0;
    ssize_t length;
    int count = 0;
    *lines = NULL;
    while ((length = getline(&line, &capacity, file)) != -1) {
        while (length > 0 && (line[length - 1] == '\n' || line[length - 1] == '\r'))
            line[--length] = '\0';
        *lines = realloc(*lines, (size_t)(count + 1) * sizeof **lines);
        (*lines)[count++] = strdup(line);
    }
    free(line);
    fclose(file);
    return count;
}

/* Parses `count` lines of `width` numbers each into a new (count, width) array. */
static float *read_reference(const char *path, int count, int width)
{
    char **lines;
    int found = read_lines(path, &lines);
    if (found != count) {
        fprintf(stderr, "%s has %d lines, expected %d (one per sentence)\n", path, found, count);
        return NULL;
    }

    float *values = malloc((size_t)count * (size_t)width * sizeof *values);
    bool valid = values != NULL;
    for (int i = 0; i < count; i++) {
        const char *cursor = lines[i];
        for (int c = 0; c < width && valid; c++) {
            char *end;
            values[(size_t)i * width + c] = strtof(cursor, &end);
            if (end == cursor) {
                fprintf(stderr, "%s line %d has fewer than %d numbers\n", path, i + 1, width);
                valid = false;
            }
            cursor = end;
        }
        free(lines[i]);
    }
    free(lines);
    if (!valid) {
        free(values);
        return NULL;
    }
    return values;
}

/* Loads the sentences, the reference and the encoder, or leaves fixture.encoder NULL. */
static void load_model_and_data(void)
{
    const char *data_dir = getenv("MCA_TEST_DATA_DIR");
    if (fixture.model_dir == NULL || data_dir == NULL ||
        !file_exists(fixture.model_dir, "config.json") ||
        !file_exists(fixture.model_dir, "model.safetensors") ||
        !file_exists(fixture.model_dir, "vocab.txt")) {
        fprintf(stderr, "no model in MCA_MODEL_DIR (%s): the tests that need it skip; run "
                        "tools/setup to install it\n",
                fixture.model_dir != NULL ? fixture.model_dir : "unset");
        return;
    }

    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    int status = mca_encoder_load(fixture.context, fixture.model_dir, &fixture.encoder);
    if (status != MCA_SUCCESS) {
        fprintf(stderr, "mca_encoder_load: %s: %s\n", mca_status_string(status),
                mca_last_error());
        fixture.encoder = NULL;
        return;
    }
    fixture.width = mca_encoder_hidden_size(fixture.encoder);
    fprintf(stderr, "loaded the encoder in %.2f s\n", seconds_since(&start));

    char *sentences_path = join_path(data_dir, "encoder_sentences.txt");
    char *reference_path = join_path(data_dir, "encoder_reference.txt");
    fixture.count = read_lines(sentences_path, &fixture.sentences);
    if (fixture.count > 0)
        fixture.reference = read_reference(reference_path, fixture.count, fixture.width);
    if (fixture.count <= 0 || fixture.reference == NULL)
        fprintf(stderr, "test data %s or %s missing or invalid: the tests that need it skip\n",
                sentences_path, reference_path);
    free(sentences_path);
    free(reference_path);
}

static int setup(void **state)
{
    (void)state;
    mca_context_options_t options;
    mca_context_options_init(&options);
    options.log = log_message;
    options.log_level = MCA_LOG_WARNING;
    int status = mca_context_create(&options, &fixture.context);
    if (status != MCA_SUCCESS) {
        fprintf(stderr, "mca_context_create: %s: %s\n", mca_status_string(status),
                mca_last_error());
        return -1;
    }
    fixture.model_dir = getenv("MCA_MODEL_DIR");
    load_model_and_data();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < fixture.count; i++)
        free(fixture.sentences[i]);
    free(fixture.sentences);
    free(fixture.reference);
    free(fixture.exact);
    mca_encoder_destroy(fixture.encoder);
    mca_context_destroy(fixture.context);
    return 0;
}

static void require_model(void)
{
    if (fixture.encoder == NULL)
        skip();
}

static void require_model_and_data(void)
{
    if (fixture.encoder == NULL || fixture.reference == NULL)
        skip();
}

/* Embeds `count` sentences from `first` in one call, asserting success. */
static void embed(const mca_forward_options_t *options, int first, int count, float *embeddings,
                  int *token_counts, mca_forward_stats_t *stats)
{
    mca_forward_options_t call_options = *options;
    call_options.first_sequence = options->first_sequence + (uint32_t)first;
    int status = mca_encoder_embed(fixture.encoder, &call_options, count,
                                   (const char *const *)fixture.sentences + first, embeddings,
                                   token_counts, stats);
    if (status != MCA_SUCCESS)
        fail_msg("mca_encoder_embed: %s: %s", mca_status_string(status), mca_last_error());
}

static float *new_embeddings(int count)
{
    float *embeddings = malloc((size_t)count * (size_t)fixture.width * sizeof *embeddings);
    assert_non_null(embeddings);
    return embeddings;
}

/* Returns the exact embeddings of all sentences in one batch, computed once. */
static const float *exact_embeddings(void)
{
    if (fixture.exact == NULL) {
        mca_forward_options_t options;
        mca_forward_options_init(&options);
        float *embeddings = new_embeddings(fixture.count);
        struct timespec start;
        clock_gettime(CLOCK_MONOTONIC, &start);
        embed(&options, 0, fixture.count, embeddings, NULL, NULL);
        fprintf(stderr, "exact: %d sentences in %.2f s\n", fixture.count,
                seconds_since(&start));
        fixture.exact = embeddings;
    }
    return fixture.exact;
}

/* Mean and minimum cosine between rows of `a` and `b`, and the row of the minimum. */
typedef struct cosine_summary {
    double mean, min;
    int worst;
} cosine_summary_t;

static cosine_summary_t compare_rows(const float *a, const float *b, int count)
{
    cosine_summary_t summary = {0.0, INFINITY, -1};
    for (int i = 0; i < count; i++) {
        double value = cosine(a + (size_t)i * fixture.width, b + (size_t)i * fixture.width,
                              fixture.width);
        summary.mean += value / count;
        if (!(value >= summary.min)) {
            summary.min = value;
            summary.worst = i;
        }
    }
    return summary;
}

/* ------------------------------------------------------------------------------------ */
/* Exact mode                                                                            */
/* ------------------------------------------------------------------------------------ */

/* The reference comes from an independent float64 numpy implementation of the model
 * (tests/reference_embeddings.py). Measured worst cosine: 1 - 1e-12 on PoCL 3.1 (CPU, AMD
 * EPYC). The threshold leaves room for devices that round and order float32 sums
 * differently. */
static void exact_matches_reference(void **state)
{
    (void)state;
    require_model_and_data();

    const float *exact = exact_embeddings();
    cosine_summary_t summary = compare_rows(exact, fixture.reference, fixture.count);
    fprintf(stderr, "exact vs reference: worst cosine 1 - %.3g (sentence %d)\n",
            1.0 - summary.min, summary.worst + 1);
    if (!(summary.min >= 0.9999))
        fail_msg("sentence %d has cosine %.9f to the reference, below 0.9999",
                 summary.worst + 1, summary.min);

    /* Embeddings are L2-normalized. */
    for (int i = 0; i < fixture.count; i++) {
        const float *row = exact + (size_t)i * fixture.width;
        double squares = 0.0;
        for (int c = 0; c < fixture.width; c++)
            squares += (double)row[c] * row[c];
        assert_true(fabs(sqrt(squares) - 1.0) < 1e-5);
    }
}

/* A batch pads every sentence to the longest one, which changes GEMM shapes and, on some
 * devices, the order of float32 sums, but nothing else. Measured worst cosine: 1 to double
 * precision (PoCL 3.1, CPU, CLBlast 1.5.3). */
static void exact_batch_equals_single(void **state)
{
    (void)state;
    require_model_and_data();

    const float *batch = exact_embeddings();
    float *single = new_embeddings(fixture.count);
    mca_forward_options_t options;
    mca_forward_options_init(&options);
    for (int i = 0; i < fixture.count; i++)
        embed(&options, i, 1, single + (size_t)i * fixture.width, NULL, NULL);

    cosine_summary_t summary = compare_rows(batch, single, fixture.count);
    fprintf(stderr, "exact batch vs one at a time: worst cosine 1 - %.3g (sentence %d)\n",
            1.0 - summary.min, summary.worst + 1);
    if (!(summary.min >= 0.99999))
        fail_msg("sentence %d has cosine %.9f between batch and single runs, below 0.99999",
                 summary.worst + 1, summary.min);
    free(single);
}

/* mca_launch rounds every global size up to a multiple of the work-group size, so an odd
 * work-group size leaves a partial last group in every kernel and tests their guards. */
static void exact_independent_of_work_group_size(void **state)
{
    (void)state;
    require_model_and_data();

    const float *reference = exact_embeddings();
    float *embeddings = new_embeddings(fixture.count);
    mca_forward_options_t options;
    mca_forward_options_init(&options);
    const size_t saved = fixture.context->local_size;
    fixture.context->local_size = 5;
    embed(&options, 0, fixture.count, embeddings, NULL, NULL);
    fixture.context->local_size = saved;

    cosine_summary_t summary = compare_rows(reference, embeddings, fixture.count);
    fprintf(stderr, "exact, work-group size 5 vs %zu: worst cosine 1 - %.3g (sentence %d)\n",
            saved, 1.0 - summary.min, summary.worst + 1);
    if (!(summary.min >= 0.99999))
        fail_msg("sentence %d has cosine %.9f between work-group sizes, below 0.99999",
                 summary.worst + 1, summary.min);
    free(embeddings);
}

/* ------------------------------------------------------------------------------------ */
/* MCA mode                                                                              */
/* ------------------------------------------------------------------------------------ */

static mca_forward_options_t mca_options(float alpha, int budget_length, uint64_t seed)
{
    mca_forward_options_t options;
    mca_forward_options_init(&options);
    options.mode = MCA_MODE_MCA;
    options.alpha = alpha;
    options.budget_length = budget_length;
    options.seed = seed;
    return options;
}

static void mca_same_seed_is_identical(void **state)
{
    (void)state;
    require_model_and_data();

    const mca_forward_options_t options = mca_options(0.2f, 0, 1234);
    float *first = new_embeddings(fixture.count);
    float *second = new_embeddings(fixture.count);
    embed(&options, 0, fixture.count, first, NULL, NULL);
    embed(&options, 0, fixture.count, second, NULL, NULL);

    assert_memory_equal(first, second, (size_t)fixture.count * fixture.width * sizeof *first);
    free(first);
    free(second);
}

static void mca_other_seed_differs(void **state)
{
    (void)state;
    require_model_and_data();

    mca_forward_options_t options = mca_options(0.2f, 0, 1234);
    float *first = new_embeddings(fixture.count);
    float *second = new_embeddings(fixture.count);
    embed(&options, 0, fixture.count, first, NULL, NULL);
    options.seed = 1235;
    embed(&options, 0, fixture.count, second, NULL, NULL);

    assert_memory_not_equal(first, second,
                            (size_t)fixture.count * fixture.width * sizeof *first);
    free(first);
    free(second);
}

/* Sentence t draws from sequence number first_sequence + t whatever the batch, so splitting
 * the corpus changes only the padding. Where padding changes the float32 rounding of the
 * exact steps, a sample count can cross an integer for a few tokens and change their draws,
 * so only closeness is required. Measured worst cosine: 1 to double precision (PoCL 3.1,
 * CPU). */
static void mca_batch_split_agrees(void **state)
{
    (void)state;
    require_model_and_data();

    const mca_forward_options_t options = mca_options(0.2f, 128, 99);
    float *whole = new_embeddings(fixture.count);
    float *split = new_embeddings(fixture.count);
    embed(&options, 0, fixture.count, whole, NULL, NULL);
    const int split_size = 3;
    for (int first = 0; first < fixture.count; first += split_size) {
        int size = fixture.count - first < split_size ? fixture.count - first : split_size;
        embed(&options, first, size, split + (size_t)first * fixture.width, NULL, NULL);
    }

    cosine_summary_t summary = compare_rows(whole, split, fixture.count);
    fprintf(stderr, "MCA one batch vs batches of %d: worst cosine 1 - %.3g (sentence %d)\n",
            split_size, 1.0 - summary.min, summary.worst + 1);
    if (!(summary.min >= 0.9999))
        fail_msg("sentence %d has cosine %.9f between batch splits, below 0.9999",
                 summary.worst + 1, summary.min);
    free(whole);
    free(split);
}

/* Runs MCA over all sentences and returns the cosine summary against exact mode. */
static cosine_summary_t mca_fidelity(float alpha, int budget_length,
                                     mca_forward_stats_t *stats)
{
    const mca_forward_options_t options = mca_options(alpha, budget_length, 7);
    float *approximate = new_embeddings(fixture.count);
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    embed(&options, 0, fixture.count, approximate, NULL, stats);
    double seconds = seconds_since(&start);

    cosine_summary_t summary = compare_rows(approximate, exact_embeddings(), fixture.count);
    fprintf(stderr,
            "MCA alpha %g, budget length %d: cosine to exact mean %.6f, min %.6f; value FLOP "
            "fraction %.4f (paper's accounting %.4f); %.2f s\n",
            (double)alpha, budget_length, summary.mean, summary.min, stats->flops_fraction,
            stats->flops_fraction_paper, seconds);
    free(approximate);
    return summary;
}

/*
 * Fidelity of MCA embeddings to exact ones, measured with seeds 1 to 5 and 7 on PoCL 3.1
 * (CPU) over the 12 test sentences (25 tokens each on average):
 *   alpha 0.01, budget = length:  mean cosine 0.9994 .. 0.9996, value FLOP fraction 0.985
 *   alpha 0.2,  budget 128:       mean cosine 0.9912 .. 0.9936, value FLOP fraction 0.82
 *   alpha 0.2,  budget = length:  mean cosine 0.61 .. 0.65,     value FLOP fraction 0.42
 * With the budget at the sequence length, r = (n m / alpha)^2 is about (128 / n)^2 = 26
 * times smaller than with the fixed budget of 128 that Kim and Ko used on GLUE, and the
 * expected error of a sampled value row grows as 1 / sqrt(r). So on these short sentences
 * alpha 0.2 is accurate only with that budget. The thresholds sit below the measured ranges, so that a device whose rounding
 * leads to other draws still passes. The last checks state that a smaller alpha and a larger
 * budget each buy fidelity.
 */
static void mca_fidelity_by_alpha(void **state)
{
    (void)state;
    require_model_and_data();

    mca_forward_stats_t stats;
    mca_forward_stats_reset(&stats);
    cosine_summary_t fine = mca_fidelity(0.01f, 0, &stats);
    assert_true(fine.mean >= 0.998);

    mca_forward_stats_reset(&stats);
    cosine_summary_t paper = mca_fidelity(0.2f, 128, &stats);
    assert_true(paper.mean >= 0.98);

    mca_forward_stats_reset(&stats);
    cosine_summary_t coarse = mca_fidelity(0.2f, 0, &stats);
    assert_true(coarse.mean > 0.0);
    assert_true(fine.mean > paper.mean);
    assert_true(paper.mean > coarse.mean);
}

static void mca_stats_are_fractions(void **state)
{
    (void)state;
    require_model_and_data();

    const mca_forward_options_t options = mca_options(0.2f, 0, 5);
    float *embeddings = new_embeddings(fixture.count);
    int *token_counts = calloc((size_t)fixture.count, sizeof *token_counts);
    assert_non_null(token_counts);
    mca_forward_stats_t stats;
    mca_forward_stats_reset(&stats);
    embed(&options, 0, fixture.count, embeddings, token_counts, &stats);

    assert_true(stats.flops_fraction > 0.0);
    assert_true(stats.flops_fraction <= 1.0);
    assert_true(stats.flops_fraction_paper > 0.0);
    assert_true(stats.flops_fraction_paper <= 1.0);
    assert_true(stats.error_bound_mean > 0.0);
    assert_true(stats.error_bound_max >= stats.error_bound_mean);

    /* Every layer adds the batch's valid tokens once. */
    uint64_t tokens = 0;
    for (int i = 0; i < fixture.count; i++)
        tokens += (uint64_t)token_counts[i];
    const uint64_t layers = 6; /* all-MiniLM-L6-v2 */
    assert_int_equal(stats.valid_tokens, layers * tokens);

    /* A second call adds to the same counters. */
    embed(&options, 0, fixture.count, embeddings, NULL, &stats);
    assert_int_equal(stats.valid_tokens, 2 * layers * tokens);
    assert_true(stats.flops_fraction > 0.0);
    assert_true(stats.flops_fraction <= 1.0);
    free(embeddings);
    free(token_counts);
}

/* ------------------------------------------------------------------------------------ */
/* Tokens                                                                                */
/* ------------------------------------------------------------------------------------ */

static void empty_text_gives_two_tokens(void **state)
{
    (void)state;
    require_model();

    const char *texts[2] = {"", "   "};
    float *embeddings = new_embeddings(2);
    int token_counts[2] = {0, 0};
    mca_forward_options_t options;
    mca_forward_options_init(&options);
    assert_int_equal(mca_encoder_embed(fixture.encoder, &options, 2, texts, embeddings,
                                       token_counts, NULL),
                     MCA_SUCCESS);

    assert_int_equal(token_counts[0], 2);
    assert_int_equal(token_counts[1], 2);
    for (int c = 0; c < fixture.width; c++) {
        assert_true(isfinite(embeddings[c]));
        assert_float_equal(embeddings[c], embeddings[fixture.width + c], 1e-6);
    }
    free(embeddings);
}

static void long_text_is_truncated(void **state)
{
    (void)state;
    require_model();

    /* "word " 600 times is 600 tokens plus [CLS] and [SEP]. */
    const int words = 600;
    char *text = malloc((size_t)words * 5 + 1);
    assert_non_null(text);
    for (int i = 0; i < words; i++)
        memcpy(text + (size_t)i * 5, "word ", 5);
    text[(size_t)words * 5] = '\0';

    const char *texts[2] = {"short", text};
    float *embeddings = new_embeddings(2);
    int token_counts[2] = {0, 0};
    mca_forward_options_t options;
    mca_forward_options_init(&options);
    fixture.warnings = 0;
    assert_int_equal(mca_encoder_embed(fixture.encoder, &options, 2, texts, embeddings,
                                       token_counts, NULL),
                     MCA_SUCCESS);

    const int max_length = mca_encoder_max_length(fixture.encoder);
    assert_int_equal(max_length, 512);
    assert_int_equal(token_counts[0], 3);
    assert_int_equal(token_counts[1], max_length);
    assert_int_equal(fixture.warnings, 1);
    assert_non_null(strstr(fixture.last_warning, "text 1 has 602 tokens"));
    assert_non_null(strstr(fixture.last_warning, "kept the first 512"));
    free(embeddings);
    free(text);
}

/* ------------------------------------------------------------------------------------ */
/* Errors                                                                                */
/* ------------------------------------------------------------------------------------ */

static void load_missing_directory(void **state)
{
    (void)state;
    mca_encoder_t *encoder = (mca_encoder_t *)&fixture; /* must stay untouched */
    assert_int_equal(mca_encoder_load(fixture.context, "/nonexistent/mca-model", &encoder),
                     MCA_ERROR_IO);
    assert_ptr_equal(encoder, (mca_encoder_t *)&fixture);
    assert_non_null(strstr(mca_last_error(), "/nonexistent/mca-model"));
}

static void load_null_arguments(void **state)
{
    (void)state;
    mca_encoder_t *encoder = NULL;
    const char *dir = fixture.model_dir != NULL ? fixture.model_dir : ".";
    assert_int_equal(mca_encoder_load(NULL, dir, &encoder), MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_encoder_load(fixture.context, NULL, &encoder),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_encoder_load(fixture.context, dir, NULL), MCA_ERROR_INVALID_ARGUMENT);
    assert_null(encoder);

    mca_encoder_destroy(NULL);
    assert_int_equal(mca_encoder_hidden_size(NULL), 0);
    assert_int_equal(mca_encoder_max_length(NULL), 0);
}

/* A temporary model directory whose files the tests write or link; removed by
 * temp_model_remove. */
typedef struct temp_model {
    char dir[64];
} temp_model_t;

static void temp_model_create(temp_model_t *model)
{
    snprintf(model->dir, sizeof model->dir, "/tmp/mca-test-encoder-XXXXXX");
    assert_non_null(mkdtemp(model->dir));
}

static void temp_model_link(const temp_model_t *model, const char *name)
{
    /* The link lives in another directory, so a relative model directory is made absolute. */
    char *target = join_path(fixture.model_dir, name);
    char *link = join_path(model->dir, name);
    char *absolute = target;
    if (target[0] != '/') {
        char cwd[4096];
        assert_non_null(getcwd(cwd, sizeof cwd));
        absolute = join_path(cwd, target);
    }
    assert_int_equal(symlink(absolute, link), 0);
    if (absolute != target)
        free(absolute);
    free(target);
    free(link);
}

static void temp_model_write(const temp_model_t *model, const char *name, const void *bytes,
                             size_t size)
{
    char *path = join_path(model->dir, name);
    FILE *file = fopen(path, "wb");
    assert_non_null(file);
    assert_int_equal(fwrite(bytes, 1, size, file), size);
    assert_int_equal(fclose(file), 0);
    free(path);
}

static void temp_model_remove(const temp_model_t *model)
{
    static const char *const names[] = {"config.json", "vocab.txt", "model.safetensors"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char *path = join_path(model->dir, names[i]);
        unlink(path);
        free(path);
    }
    rmdir(model->dir);
}

/* Reads the real config.json, sets `field` to `value` unless field is NULL, and writes it
 * into the temporary model. */
static void temp_model_write_config(const temp_model_t *model, const char *field, int value)
{
    char *path = join_path(fixture.model_dir, "config.json");
    FILE *file = fopen(path, "rb");
    assert_non_null(file);
    char text[65536];
    size_t size = fread(text, 1, sizeof text - 1, file);
    fclose(file);
    text[size] = '\0';
    free(path);

    cJSON *config = cJSON_Parse(text);
    assert_non_null(config);
    if (field != NULL) {
        cJSON *number = cJSON_GetObjectItemCaseSensitive(config, field);
        assert_non_null(number);
        cJSON_SetNumberValue(number, value);
    }
    char *printed = cJSON_Print(config);
    assert_non_null(printed);
    temp_model_write(model, "config.json", printed, strlen(printed));
    cJSON_free(printed);
    cJSON_Delete(config);
}

/* config.json sets hidden_size to twice the width of the weights. The head count still
 * divides it, so the config alone is valid and the mismatch shows at the first tensor. */
static void load_wrong_hidden_size(void **state)
{
    (void)state;
    require_model();

    temp_model_t model;
    temp_model_create(&model);
    temp_model_write_config(&model, "hidden_size", 2 * fixture.width);
    temp_model_link(&model, "vocab.txt");
    temp_model_link(&model, "model.safetensors");

    mca_encoder_t *encoder = NULL;
    int status = mca_encoder_load(fixture.context, model.dir, &encoder);
    temp_model_remove(&model);
    assert_int_equal(status, MCA_ERROR_SHAPE_MISMATCH);
    assert_null(encoder);
}

/* A valid safetensors file that contains one unrelated tensor, so the first tensor the encoder
 * reads is missing. */
static void load_missing_tensor(void **state)
{
    (void)state;
    require_model();

    static const char header[] =
        "{\"unrelated\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    const uint64_t header_length = sizeof header - 1;
    unsigned char file[8 + sizeof header - 1 + 4];
    for (int i = 0; i < 8; i++)
        file[i] = (unsigned char)(header_length >> (8 * i));
    memcpy(file + 8, header, header_length);
    memset(file + 8 + header_length, 0, 4);

    temp_model_t model;
    temp_model_create(&model);
    temp_model_write_config(&model, NULL, 0);
    temp_model_link(&model, "vocab.txt");
    temp_model_write(&model, "model.safetensors", file, sizeof file);

    mca_encoder_t *encoder = NULL;
    int status = mca_encoder_load(fixture.context, model.dir, &encoder);
    temp_model_remove(&model);
    assert_int_equal(status, MCA_ERROR_MISSING_TENSOR);
    assert_non_null(strstr(mca_last_error(), "embeddings.word_embeddings.weight"));
    assert_null(encoder);
}

/* Every rejected call leaves the outputs and the statistics as they were. */
static void embed_invalid_arguments(void **state)
{
    (void)state;
    require_model();

    const char *texts[2] = {"first", "second"};
    const char *null_text[2] = {"first", NULL};
    const char *invalid_utf8[2] = {"first", "bad \xc3\x28 byte"};
    float embeddings[2 * 1024];
    int token_counts[2] = {-1, -1};
    assert_true(fixture.width <= 1024);
    for (size_t i = 0; i < sizeof embeddings / sizeof embeddings[0]; i++)
        embeddings[i] = -7.0f;
    mca_forward_stats_t stats;
    mca_forward_stats_reset(&stats);
    mca_forward_options_t options;
    mca_forward_options_init(&options);
    mca_encoder_t *encoder = fixture.encoder;

    assert_int_equal(mca_encoder_embed(NULL, &options, 2, texts, embeddings, token_counts, &stats),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_encoder_embed(encoder, NULL, 2, texts, embeddings, token_counts, &stats),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_encoder_embed(encoder, &options, 0, texts, embeddings, token_counts,
                                       &stats),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_encoder_embed(encoder, &options, -1, texts, embeddings, token_counts,
                                       &stats),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_encoder_embed(encoder, &options, 2, NULL, embeddings, token_counts,
                                       &stats),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_encoder_embed(encoder, &options, 2, null_text, embeddings,
                                       token_counts, &stats),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(mca_last_error(), "texts[1]"));
    assert_int_equal(mca_encoder_embed(encoder, &options, 2, texts, NULL, token_counts, &stats),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_encoder_embed(encoder, &options, 2, invalid_utf8, embeddings,
                                       token_counts, &stats),
                     MCA_ERROR_INVALID_TEXT);
    assert_non_null(strstr(mca_last_error(), "text 1"));

    /* Sequence numbers would wrap past 2^32 - 1. */
    mca_forward_options_t wrapping = options;
    wrapping.first_sequence = UINT32_MAX;
    assert_int_equal(mca_encoder_embed(encoder, &wrapping, 2, texts, embeddings, token_counts,
                                       &stats),
                     MCA_ERROR_INVALID_ARGUMENT);

    /* The attention layer checks the options; an invalid alpha fails in layer 0. */
    mca_forward_options_t invalid_alpha = mca_options(-1.0f, 0, 0);
    assert_int_equal(mca_encoder_embed(encoder, &invalid_alpha, 2, texts, embeddings,
                                       token_counts, &stats),
                     MCA_ERROR_INVALID_ARGUMENT);

    for (size_t i = 0; i < sizeof embeddings / sizeof embeddings[0]; i++)
        assert_true(embeddings[i] == -7.0f);
    assert_int_equal(token_counts[0], -1);
    assert_int_equal(token_counts[1], -1);
    assert_int_equal(stats.valid_tokens, 0);
    assert_int_equal(stats.padded_positions, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(exact_matches_reference),
        cmocka_unit_test(exact_batch_equals_single),
        cmocka_unit_test(exact_independent_of_work_group_size),
        cmocka_unit_test(mca_same_seed_is_identical),
        cmocka_unit_test(mca_other_seed_differs),
        cmocka_unit_test(mca_batch_split_agrees),
        cmocka_unit_test(mca_fidelity_by_alpha),
        cmocka_unit_test(mca_stats_are_fractions),
        cmocka_unit_test(empty_text_gives_two_tokens),
        cmocka_unit_test(long_text_is_truncated),
        cmocka_unit_test(load_missing_directory),
        cmocka_unit_test(load_null_arguments),
        cmocka_unit_test(load_wrong_hidden_size),
        cmocka_unit_test(load_missing_tensor),
        cmocka_unit_test(embed_invalid_arguments),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
