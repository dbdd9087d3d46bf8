/* Tuned CLBlast parameters: the device-name rule, the default path, applying a file at
 * context creation, and the ways a file is rejected. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <sys/stat.h>
#include <unistd.h>

#include <clblast_c.h>

#include "gemm.h"
#include "test_util.h"
#include "tuning.h"

/* Xgemm and XgemmDirect parameters found by clblast_tuner_xgemm (m = n = k = 512) and
 * clblast_tuner_xgemm_direct (m = n = k = 256) of CLBlast 1.5.3 on PoCL 3.1 on an AMD EPYC
 * CPU. */
#define XGEMM_PARAMETERS                                                                       \
    "\"GEMMK\": 0, \"KREG\": 1, \"KWG\": 32, \"KWI\": 2, \"MDIMA\": 8, \"MDIMC\": 16, "        \
    "\"MWG\": 128, \"NDIMB\": 8, \"NDIMC\": 8, \"NWG\": 64, \"SA\": 0, \"SB\": 0, "            \
    "\"STRM\": 1, \"STRN\": 1, \"VWM\": 4"
#define XGEMM_VWN ", \"VWN\": 4"
#define XGEMM_DIRECT_PARAMETERS                                                                \
    "\"KWID\": 2, \"MDIMAD\": 8, \"MDIMCD\": 32, \"NDIMBD\": 32, \"NDIMCD\": 8, \"PADA\": 1, " \
    "\"PADB\": 1, \"VWMD\": 2, \"VWND\": 2, \"WGD\": 64"

#define FILE_HEADER "{\"format\": \"mca-clblast-tuning\", \"version\": 1, "

/* GEMMs of at least 40^3 multiply-adds run Xgemm, smaller ones XgemmDirect. */
static const char valid_file[] =
    FILE_HEADER "\"device\": \"%s\", \"kernels\": ["
    "{\"kernel\": \"Xgemm\", \"precision\": 32, \"parameters\": {" XGEMM_PARAMETERS XGEMM_VWN
    "}},"
    "{\"kernel\": \"XgemmDirect\", \"precision\": 32, \"parameters\": {"
    XGEMM_DIRECT_PARAMETERS "}},"
    "{\"kernel\": \"GemmRoutine\", \"precision\": 32, "
    "\"parameters\": {\"XGEMM_MIN_INDIRECT_SIZE\": 40}}]}";

typedef struct fixture {
    char directory[256];
    mca_context_t *context; /* created without tuned parameters */
    char log[16384];        /* every message of the context, one per line */
} fixture_t;

static void record_log(mca_log_level_t level, const char *message, void *user_data)
{
    fixture_t *fixture = user_data;
    size_t used = strlen(fixture->log);
    snprintf(fixture->log + used, sizeof fixture->log - used, "%d %s\n", (int)level, message);
}

static mca_context_t *create_context(fixture_t *fixture, const char *tuning_file, int *status)
{
    mca_context_options_t options;
    mca_context_options_init(&options);
    options.log = record_log;
    options.log_user_data = fixture;
    options.log_level = MCA_LOG_DEBUG;
    options.tuning_file = tuning_file;
    mca_context_t *context = NULL;
    *status = mca_context_create(&options, &context);
    return context;
}

/* Writes `text` to a file in the fixture's directory and stores its path. */
static void write_file(const fixture_t *fixture, const char *name, const char *text, char *path,
                       size_t size)
{
    snprintf(path, size, "%s/%s", fixture->directory, name);
    FILE *file = fopen(path, "w");
    assert_non_null(file);
    assert_true(fputs(text, file) >= 0);
    assert_int_equal(fclose(file), 0);
}

static void write_valid_file(const fixture_t *fixture, const char *device, char *path,
                             size_t size)
{
    char text[4096];
    snprintf(text, sizeof text, valid_file, device);
    write_file(fixture, "valid.json", text, path, size);
}

static int setup(void **state)
{
    fixture_t *fixture = calloc(1, sizeof *fixture);
    if (fixture == NULL)
        return -1;
    snprintf(fixture->directory, sizeof fixture->directory, "/tmp/mca-test-tuning-XXXXXX");
    if (mkdtemp(fixture->directory) == NULL)
        return -1;
    int status = 0;
    fixture->context = create_context(fixture, MCA_TUNING_NONE, &status);
    if (fixture->context == NULL) {
        fprintf(stderr, "mca_context_create: %s\n", mca_last_error());
        return -1;
    }
    *state = fixture;
    return 0;
}

/* Removes the files the tests write, then the directory. */
static int teardown(void **state)
{
    fixture_t *fixture = *state;
    static const char *const names[] = {"valid.json", "malformed.json", "incomplete.json",
                                        "invalid.json", "header.json", "precision.json",
                                        "unknown.json", "oversized.json"};
    char path[512];
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        snprintf(path, sizeof path, "%s/%s", fixture->directory, names[i]);
        unlink(path);
    }
    snprintf(path, sizeof path, "%s/mca", fixture->directory);
    rmdir(path);
    rmdir(fixture->directory);
    mca_context_destroy(fixture->context);
    free(fixture);
    return 0;
}

/* Clears the log and the tuning variables before each test. */
static int reset(void **state)
{
    fixture_t *fixture = *state;
    fixture->log[0] = '\0';
    unsetenv(MCA_TUNING_ENVIRONMENT);
    return 0;
}

static void sanitized_device_names(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        {"pthread-haswell-AMD EPYC", "pthread-haswell-AMD_EPYC"},
        {"  Intel(R) Core(TM) i5-6200U CPU @ 2.30GHz   ", "Intel_R_Core_TM_i5-6200U_CPU_2.30GHz"},
        {"gfx1030/..", "gfx1030_.."},
        {"_keep_underscores_", "_keep_underscores_"},
        {"", "unknown-device"},
        {" /() ", "unknown-device"},
    };
    char sanitized[256];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        mca_tuning_sanitize_device_name(cases[i][0], sanitized, sizeof sanitized);
        assert_string_equal(sanitized, cases[i][1]);
    }

    char long_name[300];
    memset(long_name, 'x', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    mca_tuning_sanitize_device_name(long_name, sanitized, sizeof sanitized);
    assert_int_equal(strlen(sanitized), 128);
    mca_tuning_sanitize_device_name("a b", sanitized, 3);
    assert_string_equal(sanitized, "a");
}

/* Points HOME and XDG_CACHE_HOME at `directory` and returns their previous values. */
static void use_cache_directory(const char *directory, char **saved_home, char **saved_cache)
{
    *saved_home = getenv("HOME") != NULL ? strdup(getenv("HOME")) : NULL;
    *saved_cache = getenv("XDG_CACHE_HOME") != NULL ? strdup(getenv("XDG_CACHE_HOME")) : NULL;
    setenv("HOME", directory, 1);
    setenv("XDG_CACHE_HOME", directory, 1);
}

static void restore_cache_directory(char *saved_home, char *saved_cache)
{
    if (saved_home != NULL)
        setenv("HOME", saved_home, 1);
    else
        unsetenv("HOME");
    if (saved_cache != NULL)
        setenv("XDG_CACHE_HOME", saved_cache, 1);
    else
        unsetenv("XDG_CACHE_HOME");
    free(saved_home);
    free(saved_cache);
}

static void default_path_from_environment(void **state)
{
    (void)state;
    char *saved_home = NULL, *saved_cache = NULL;
    use_cache_directory("/home/user", &saved_home, &saved_cache);
    char path[4096];

    setenv("XDG_CACHE_HOME", "/cache", 1);
    assert_int_equal(mca_tuning_default_path("AMD EPYC", path, sizeof path), MCA_SUCCESS);
    assert_string_equal(path, "/cache/mca/clblast-AMD_EPYC.json");

    /* The XDG Base Directory Specification ignores relative paths. */
    setenv("XDG_CACHE_HOME", "relative", 1);
    assert_int_equal(mca_tuning_default_path("AMD EPYC", path, sizeof path), MCA_SUCCESS);
    assert_string_equal(path, "/home/user/.cache/mca/clblast-AMD_EPYC.json");

    unsetenv("XDG_CACHE_HOME");
    unsetenv("HOME");
    assert_int_equal(mca_tuning_default_path("AMD EPYC", path, sizeof path), MCA_ERROR_IO);
    assert_non_null(strstr(mca_last_error(), "MCA_CLBLAST_TUNING"));

    setenv("HOME", "/home/user", 1);
    assert_int_equal(mca_tuning_default_path("AMD EPYC", path, 20),
                     MCA_ERROR_INVALID_ARGUMENT);
    restore_cache_directory(saved_home, saved_cache);
}

/* Largest |C - A op(B)| relative to sum |A| |op(B)| over the inner index, in double. */
static double gemm_error(const float *a, const float *b, const float *c, size_t m, size_t n,
                         size_t k, bool transpose_b)
{
    double worst = 0.0;
    for (size_t i = 0; i < m; i++) {
        for (size_t j = 0; j < n; j++) {
            double sum = 0.0, magnitude = 0.0;
            for (size_t p = 0; p < k; p++) {
                double product = (double)a[i * k + p] *
                                 (double)(transpose_b ? b[j * k + p] : b[p * n + j]);
                sum += product;
                magnitude += fabs(product);
            }
            double error = fabs((double)c[i * n + j] - sum) / magnitude;
            worst = error > worst ? error : worst;
        }
    }
    return worst;
}

/* Runs C = A op(B) through mca_gemm and checks it against the host product. */
static void check_gemm(mca_context_t *context, size_t m, size_t n, size_t k, bool transpose_b)
{
    test_rng_t rng = {0x5eed + m + n + k};
    float *a = malloc(m * k * sizeof *a);
    float *b = malloc(k * n * sizeof *b);
    float *c = malloc(m * n * sizeof *c);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    test_fill(&rng, a, m * k, 1.0f);
    test_fill(&rng, b, k * n, 1.0f);

    cl_mem a_buffer = NULL, b_buffer = NULL, c_buffer = NULL;
    assert_int_equal(mca_buffer_create(context, m * k * sizeof *a, a, "A", &a_buffer), 0);
    assert_int_equal(mca_buffer_create(context, k * n * sizeof *b, b, "B", &b_buffer), 0);
    assert_int_equal(mca_buffer_create(context, m * n * sizeof *c, NULL, "C", &c_buffer), 0);
    mca_matrix_t a_matrix = {a_buffer, 0, k};
    mca_matrix_t b_matrix = {b_buffer, 0, transpose_b ? k : n};
    mca_matrix_t c_matrix = {c_buffer, 0, n};
    int status = mca_gemm(context, false, transpose_b, m, n, k, 1.0f, a_matrix, b_matrix, 0.0f,
                          c_matrix);
    assert_int_equal(status, MCA_SUCCESS);
    assert_int_equal(mca_buffer_read(context, c_buffer, 0, m * n * sizeof *c, c), 0);

    /* float32 sums of k products: a relative error of 1e-5 is about 100 ulps. */
    assert_true(gemm_error(a, b, c, m, n, k, transpose_b) < 1e-5);

    mca_buffer_release(&a_buffer);
    mca_buffer_release(&b_buffer);
    mca_buffer_release(&c_buffer);
    free(a);
    free(b);
    free(c);
}

static void valid_file_applied(void **state)
{
    fixture_t *fixture = *state;
    char path[512];
    write_valid_file(fixture, mca_context_device_name(fixture->context), path, sizeof path);

    fixture->log[0] = '\0';
    int status = 0;
    mca_context_t *context = create_context(fixture, path, &status);
    assert_int_equal(status, MCA_SUCCESS);
    assert_non_null(context);

    char expected[1024];
    snprintf(expected, sizeof expected,
             "1 using tuned CLBlast parameters from %s (kernels: Xgemm, XgemmDirect, "
             "GemmRoutine)",
             path);
    assert_non_null(strstr(fixture->log, expected));

    /* 70 * 50 * 90 >= 40^3 runs Xgemm with padded operands, 20 * 30 * 40 runs XgemmDirect. */
    check_gemm(context, 70, 50, 90, true);
    check_gemm(context, 70, 50, 90, false);
    check_gemm(context, 20, 30, 40, true);
    check_gemm(context, 256, 128, 64, false);
    mca_context_destroy(context);
}

static void explicit_file_missing(void **state)
{
    fixture_t *fixture = *state;
    char path[512];
    snprintf(path, sizeof path, "%s/absent.json", fixture->directory);

    int status = 0;
    mca_context_t *context = create_context(fixture, path, &status);
    assert_int_equal(status, MCA_ERROR_IO);
    assert_null(context);
    assert_non_null(strstr(mca_last_error(), path));
    assert_non_null(strstr(mca_last_error(), "tuning_file option"));
}

static void unreadable_file_rejected(void **state)
{
    fixture_t *fixture = *state;

    /* fopen opens a directory, and reading it fails. */
    assert_int_equal(mca_tuning_apply(fixture->context, fixture->directory), MCA_ERROR_IO);
    assert_non_null(strstr(mca_last_error(), fixture->directory));
}

static void oversized_file_rejected(void **state)
{
    fixture_t *fixture = *state;
    char *text = malloc(MCA_TUNING_MAX_FILE_BYTES + 2);
    assert_non_null(text);
    memset(text, ' ', MCA_TUNING_MAX_FILE_BYTES + 1);
    text[MCA_TUNING_MAX_FILE_BYTES + 1] = '\0';
    char path[512];
    write_file(fixture, "oversized.json", text, path, sizeof path);
    free(text);

    assert_int_equal(mca_tuning_apply(fixture->context, path), MCA_ERROR_CORRUPT_FILE);
    assert_non_null(strstr(mca_last_error(), path));
    assert_non_null(strstr(mca_last_error(), "larger than"));
}

static void environment_file_missing(void **state)
{
    fixture_t *fixture = *state;
    char path[512];
    snprintf(path, sizeof path, "%s/absent.json", fixture->directory);
    setenv(MCA_TUNING_ENVIRONMENT, path, 1);

    assert_int_equal(mca_tuning_apply(fixture->context, NULL), MCA_ERROR_IO);
    assert_non_null(strstr(mca_last_error(), path));
    assert_non_null(strstr(mca_last_error(), MCA_TUNING_ENVIRONMENT));
}

static void environment_file_applied(void **state)
{
    fixture_t *fixture = *state;
    char path[512];
    write_valid_file(fixture, mca_context_device_name(fixture->context), path, sizeof path);
    setenv(MCA_TUNING_ENVIRONMENT, path, 1);

    assert_int_equal(mca_tuning_apply(fixture->context, NULL), MCA_SUCCESS);
    char expected[600];
    snprintf(expected, sizeof expected, "using tuned CLBlast parameters from %s", path);
    assert_non_null(strstr(fixture->log, expected));
}

static void malformed_json_rejected(void **state)
{
    fixture_t *fixture = *state;
    static const char *const texts[] = {
        "{\"format\": \"mca-clblast-tuning\", \"version\": 1, \"kernels\": [",
        "",
        FILE_HEADER "\"kernels\": []} trailing",
    };
    char path[512];
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        write_file(fixture, "malformed.json", texts[i], path, sizeof path);
        assert_int_equal(mca_tuning_apply(fixture->context, path), MCA_ERROR_CORRUPT_FILE);
        assert_non_null(strstr(mca_last_error(), path));
        assert_non_null(strstr(mca_last_error(), "not valid JSON"));
    }
}

static void header_checked(void **state)
{
    fixture_t *fixture = *state;
    static const char *const cases[][2] = {
        {"{\"version\": 1, \"kernels\": []}", "\"format\" must be"},
        {"{\"format\": \"other\", \"version\": 1, \"kernels\": []}", "\"format\" must be"},
        {"{\"format\": \"mca-clblast-tuning\", \"version\": 2, \"kernels\": []}",
         "unsupported \"version\""},
        {FILE_HEADER "\"kernels\": {}}", "no \"kernels\" array"},
        {FILE_HEADER "\"kernels\": [{\"precision\": 32, \"parameters\": {\"A\": 1}}]}",
         "entry 0 of \"kernels\" has no \"kernel\" name"},
        {FILE_HEADER "\"kernels\": [{\"kernel\": \"Copy\", \"parameters\": {\"A\": 1}}]}",
         "kernel 'Copy' (entry 0) has no numeric \"precision\""},
        {FILE_HEADER "\"kernels\": [{\"kernel\": \"Copy\", \"precision\": 32}]}",
         "kernel 'Copy' needs a non-empty \"parameters\" object"},
        {FILE_HEADER "\"kernels\": [{\"kernel\": \"Copy\", \"precision\": 32, "
                     "\"parameters\": {\"A\": 1}}, {\"kernel\": \"Copy\", \"precision\": 32, "
                     "\"parameters\": {\"A\": 1}}]}",
         "kernel 'Copy' is listed twice"},
    };
    char path[512];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        write_file(fixture, "header.json", cases[i][0], path, sizeof path);
        assert_int_equal(mca_tuning_apply(fixture->context, path), MCA_ERROR_CORRUPT_FILE);
        assert_non_null(strstr(mca_last_error(), path));
        if (strstr(mca_last_error(), cases[i][1]) == NULL)
            fail_msg("case %zu: '%s' does not contain '%s'", i, mca_last_error(), cases[i][1]);
    }
}

static void missing_parameter_rejected_by_clblast(void **state)
{
    fixture_t *fixture = *state;
    char path[512];
    write_file(fixture, "incomplete.json",
               FILE_HEADER "\"kernels\": [{\"kernel\": \"Xgemm\", \"precision\": 32, "
                           "\"parameters\": {" XGEMM_PARAMETERS "}}]}",
               path, sizeof path);

    assert_int_equal(mca_tuning_apply(fixture->context, path), CLBlastMissingOverrideParameter);
    assert_int_equal(CLBlastMissingOverrideParameter, -2047);
    assert_non_null(strstr(mca_last_error(), path));
    assert_non_null(strstr(mca_last_error(), "kernel 'Xgemm'"));
}

static void unknown_kernel_rejected_by_clblast(void **state)
{
    fixture_t *fixture = *state;
    char path[512];
    write_file(fixture, "unknown.json",
               FILE_HEADER "\"kernels\": [{\"kernel\": \"NoSuchKernel\", \"precision\": 32, "
                           "\"parameters\": {\"WGS\": 64}}]}",
               path, sizeof path);

    /* CLBlast 1.5.3 returns CLBlastDatabaseError for a kernel missing from its database. */
    assert_int_equal(mca_tuning_apply(fixture->context, path), CLBlastDatabaseError);
    assert_non_null(strstr(mca_last_error(), path));
    assert_non_null(strstr(mca_last_error(), "kernel 'NoSuchKernel'"));
}

static void invalid_values_rejected(void **state)
{
    fixture_t *fixture = *state;
    static const char *const values[] = {"-1", "2.5", "\"8\"", "1e30", "true", "null",
                                         "9007199254740993"};
    char path[512];
    char text[2048];
    for (size_t i = 0; i < sizeof values / sizeof *values; i++) {
        snprintf(text, sizeof text,
                 FILE_HEADER "\"kernels\": [{\"kernel\": \"Xgemm\", \"precision\": 32, "
                             "\"parameters\": {" XGEMM_PARAMETERS ", \"VWN\": %s}}]}",
                 values[i]);
        write_file(fixture, "invalid.json", text, path, sizeof path);
        assert_int_equal(mca_tuning_apply(fixture->context, path), MCA_ERROR_CORRUPT_FILE);
        assert_non_null(strstr(mca_last_error(), path));
        if (strstr(mca_last_error(), "parameter VWN of kernel 'Xgemm'") == NULL)
            fail_msg("value %s: '%s'", values[i], mca_last_error());
    }
}

static void other_precision_skipped(void **state)
{
    fixture_t *fixture = *state;
    char path[512];
    write_file(fixture, "precision.json",
               FILE_HEADER "\"kernels\": ["
                           "{\"kernel\": \"Xgemm\", \"precision\": 64, \"parameters\": {\"X\": 1}},"
                           "{\"kernel\": \"GemmRoutine\", \"precision\": 32, "
                           "\"parameters\": {\"XGEMM_MIN_INDIRECT_SIZE\": 40}}]}",
               path, sizeof path);

    assert_int_equal(mca_tuning_apply(fixture->context, path), MCA_SUCCESS);
    assert_non_null(strstr(fixture->log, "skipping kernel 'Xgemm' of precision 64"));
    assert_non_null(strstr(fixture->log, "(kernels: GemmRoutine)"));
}

static void other_device_warned(void **state)
{
    fixture_t *fixture = *state;
    char path[512];
    write_valid_file(fixture, "Some Other Device", path, sizeof path);

    assert_int_equal(mca_tuning_apply(fixture->context, path), MCA_SUCCESS);
    char expected[1024];
    snprintf(expected, sizeof expected, "%d '%s' was tuned on device 'Some Other Device'",
             (int)MCA_LOG_WARNING, path);
    assert_non_null(strstr(fixture->log, expected));
}

static void empty_path_applies_nothing(void **state)
{
    fixture_t *fixture = *state;
    setenv(MCA_TUNING_ENVIRONMENT, "/nonexistent/tuning.json", 1);
    assert_int_equal(mca_tuning_apply(fixture->context, MCA_TUNING_NONE), MCA_SUCCESS);
    assert_non_null(strstr(fixture->log, "not applying tuned CLBlast parameters"));
}

static void no_default_file(void **state)
{
    fixture_t *fixture = *state;
    char *saved_home = NULL, *saved_cache = NULL;
    use_cache_directory(fixture->directory, &saved_home, &saved_cache);

    int status = 0;
    mca_context_t *context = create_context(fixture, NULL, &status);
    restore_cache_directory(saved_home, saved_cache);
    assert_int_equal(status, MCA_SUCCESS);
    assert_non_null(context);

    char name[256], expected[1024];
    mca_tuning_sanitize_device_name(mca_context_device_name(context), name, sizeof name);
    snprintf(expected, sizeof expected,
             "1 no tuned CLBlast parameters for device '%s' (looked for %s/mca/clblast-%s.json); "
             "GEMMs use CLBlast's defaults, run tools/tune",
             mca_context_device_name(context), fixture->directory, name);
    assert_non_null(strstr(fixture->log, expected));
    mca_context_destroy(context);
}

static void default_file_applied(void **state)
{
    fixture_t *fixture = *state;
    char *saved_home = NULL, *saved_cache = NULL;
    use_cache_directory(fixture->directory, &saved_home, &saved_cache);

    char path[4096], text[4096];
    int status = mca_tuning_default_path(mca_context_device_name(fixture->context), path,
                                         sizeof path);
    assert_int_equal(status, MCA_SUCCESS);
    char directory[512];
    snprintf(directory, sizeof directory, "%s/mca", fixture->directory);
    assert_int_equal(mkdir(directory, 0700), 0);
    snprintf(text, sizeof text, valid_file, mca_context_device_name(fixture->context));
    FILE *file = fopen(path, "w");
    assert_non_null(file);
    fputs(text, file);
    fclose(file);

    status = mca_tuning_apply(fixture->context, NULL);
    restore_cache_directory(saved_home, saved_cache);
    unlink(path);
    assert_int_equal(status, MCA_SUCCESS);
    char expected[4200];
    snprintf(expected, sizeof expected, "using tuned CLBlast parameters from %s", path);
    assert_non_null(strstr(fixture->log, expected));
}

/* Parameters that pass CLBlast's checks but compute wrong products stay installed in
 * CLBlast for the whole process, so the device is refused from then on. This test runs
 * last, because no later context of this process can use the device. */
static void wrong_results_block_device(void **state)
{
    fixture_t *fixture = *state;
    char path[512], text[4096];
    /* MWG = 7 is no multiple of the work-group tiling, which CLBlast 1.5.3 does not check. */
    snprintf(text, sizeof text,
             FILE_HEADER "\"device\": \"%s\", \"kernels\": ["
                         "{\"kernel\": \"Xgemm\", \"precision\": 32, \"parameters\": {"
                         "\"GEMMK\": 0, \"KREG\": 1, \"KWG\": 16, \"KWI\": 2, \"MDIMA\": 16, "
                         "\"MDIMC\": 8, \"MWG\": 7, \"NDIMB\": 32, \"NDIMC\": 16, "
                         "\"NWG\": 128, \"SA\": 0, \"SB\": 0, \"STRM\": 1, \"STRN\": 1, "
                         "\"VWM\": 8, \"VWN\": 4}},"
                         "{\"kernel\": \"GemmRoutine\", \"precision\": 32, "
                         "\"parameters\": {\"XGEMM_MIN_INDIRECT_SIZE\": 8}}]}",
             mca_context_device_name(fixture->context));
    write_file(fixture, "wrong.json", text, path, sizeof path);

    assert_int_equal(mca_tuning_apply(fixture->context, path), MCA_ERROR_INVALID_CONFIG);
    assert_non_null(strstr(mca_last_error(), "wrong GEMM results"));

    /* Neither "no file" nor a fresh context may now compute with CLBlast's state. */
    assert_int_equal(mca_tuning_apply(fixture->context, ""), MCA_ERROR_INVALID_CONFIG);
    assert_non_null(strstr(mca_last_error(), path));
    assert_non_null(strstr(mca_last_error(), "restart the process"));
    mca_context_options_t options;
    mca_context_options_init(&options);
    options.tuning_file = "";
    mca_context_t *context = NULL;
    assert_int_equal(mca_context_create(&options, &context), MCA_ERROR_INVALID_CONFIG);
    assert_null(context);
    assert_non_null(strstr(mca_last_error(), "restart the process"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sanitized_device_names),
        cmocka_unit_test(default_path_from_environment),
        cmocka_unit_test_setup(valid_file_applied, reset),
        cmocka_unit_test_setup(explicit_file_missing, reset),
        cmocka_unit_test_setup(unreadable_file_rejected, reset),
        cmocka_unit_test_setup(oversized_file_rejected, reset),
        cmocka_unit_test_setup(environment_file_missing, reset),
        cmocka_unit_test_setup(environment_file_applied, reset),
        cmocka_unit_test_setup(malformed_json_rejected, reset),
        cmocka_unit_test_setup(header_checked, reset),
        cmocka_unit_test_setup(missing_parameter_rejected_by_clblast, reset),
        cmocka_unit_test_setup(unknown_kernel_rejected_by_clblast, reset),
        cmocka_unit_test_setup(invalid_values_rejected, reset),
        cmocka_unit_test_setup(other_precision_skipped, reset),
        cmocka_unit_test_setup(other_device_warned, reset),
        cmocka_unit_test_setup(empty_path_applies_nothing, reset),
        cmocka_unit_test_setup(no_default_file, reset),
        cmocka_unit_test_setup(default_file_applied, reset),
        cmocka_unit_test_setup(wrong_results_block_device, reset),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
