/*
 * mca-tune: runs CLBlast's tuners (Debian package clblast-utils) for the single-precision
 * GEMM kernels that mca uses. It also measures at which size CLBlast should switch from its
 * direct GEMM kernel to the tiled one. The results go to one file per device, which every
 * new mca context applies. Run `mca-tune --help` for the options. tools/tune builds and
 * runs it.
 */
#define _XOPEN_SOURCE 700 /* nftw */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "context.h"
#include "tune_switch.h"
#include "tuning.h"

#define PROGRAM "mca-tune"

/* Exit statuses: 1 for a failure while running, 2 for a usage error. */
#define EXIT_RUN_FAILURE 1
#define EXIT_USAGE 2

#define MAX_EFFORT 64.0

/* One CLBlast tuner program, the kernel of CLBlast's database that it tunes, and the shape
 * it times. A zero shape keeps the tuner's default (1024 x 1024 for the copy kernels). */
typedef struct tuner {
    const char *program;
    const char *kernel;
    size_t m, n, k;
    /* The tuner tests `samples` * effort of its `configurations` (counted in CLBlast 1.5.3),
     * chosen at random, through its option -fraction. */
    double configurations;
    double samples;
} tuner_t;

/* Xgemm runs the GEMMs at or above XGEMM_MIN_INDIRECT_SIZE^3 multiply-adds, after Copy, Pad,
 * Transpose or Padtranspose bring the operands into its layout. XgemmDirect runs the smaller
 * ones. clblast_tuner_xgemm needs m, n and k to be multiples of the largest tile it tests
 * (128), so its shape is 512^3, within the range of the attention projections (m = 128 ..
 * 4096 rows, n and k = 384 .. 4096).
 * About 12% of clblast_tuner_xgemm's configurations have GEMMK=1, which find_best skips.
 * NOTE: the sample counts keep a default run near 15 minutes on a 2-core AMD EPYC under
 * PoCL 3.1, measured while other programs shared the cores. Other devices take more or less
 * time. */
static const tuner_t tuners[] = {
    {"clblast_tuner_xgemm", "Xgemm", 512, 512, 512, 138351, 160},
    {"clblast_tuner_xgemm_direct", "XgemmDirect", 256, 256, 256, 8466, 60},
    {"clblast_tuner_copy_fast", "Copy", 0, 0, 0, 144, 72},
    {"clblast_tuner_copy_pad", "Pad", 0, 0, 0, 81, 40},
    {"clblast_tuner_transpose_fast", "Transpose", 0, 0, 0, 88, 44},
    {"clblast_tuner_transpose_pad", "Padtranspose", 0, 0, 0, 34, 17},
};
#define TUNER_COUNT (sizeof tuners / sizeof *tuners)

/* Minimum number of configurations a tuner tests at any effort. */
#define MIN_SAMPLES 4.0

typedef struct settings {
    const char *output_path; /* NULL writes the device's default file */
    const char *work_dir;    /* NULL uses a temporary directory, removed after a success */
    double effort;
    bool switch_only; /* keep the file's kernel parameters, measure only the switch point */
    bool print_path;  /* print the file that a run would write, and exit */
    int platform_index;
    int device_index;
} settings_t;

/* Best configuration of one kernel: a "parameters" object for the output file, or NULL when
 * the tuner failed. */
typedef struct tuner_result {
    cJSON *parameters;
    double time_ms;
    char arguments[256];
    double seconds;
} tuner_result_t;

static void fail_usage(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    fprintf(stderr, "%s: ", PROGRAM);
    vfprintf(stderr, format, args);
    fprintf(stderr, "\nRun '%s --help' for the options.\n", PROGRAM);
    va_end(args);
    exit(EXIT_USAGE);
}

static double monotonic_seconds(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

static const char *format_duration(double seconds, char *text, size_t size)
{
    long whole = lround(seconds);
    if (whole >= 60)
        snprintf(text, size, "%ldm%02lds", whole / 60, whole % 60);
    else
        snprintf(text, size, "%.1fs", seconds);
    return text;
}

static void print_usage(void)
{
    printf("Usage: %s [OPTION]...\n"
           "Run CLBlast's tuners for the single-precision GEMM kernels that mca uses, and write\n"
           "the best parameters to one JSON file per device. Every new mca context applies\n"
           "that file. The tuner programs come from the Debian package clblast-utils.\n"
           "\n"
           "  --output FILE    file to write (default: $XDG_CACHE_HOME/mca/clblast-DEVICE.json,\n"
           "                   or ~/.cache/mca/clblast-DEVICE.json without XDG_CACHE_HOME,\n"
           "                   where contexts look; set MCA_CLBLAST_TUNING=FILE for another)\n"
           "  --platform N     OpenCL platform index (default: MCA_PLATFORM, else 0)\n"
           "  --device N       OpenCL device index (default: MCA_DEVICE, else 0)\n"
           "  --effort X       scales how many configurations the tuners test, and with it the\n"
           "                   run time, from 0.05 to %g (default 1: about 160 for Xgemm, 15\n"
           "                   minutes on a 2-core CPU; 0.25 is a quick run, 4 a thorough one)\n"
           "  --work-dir DIR   keep the tuners' logs and JSON results in DIR (default: a\n"
           "                   temporary directory, removed when the run succeeds)\n"
           "  --switch-only    keep the kernel parameters of the existing file and measure only\n"
           "                   the switch point between XgemmDirect and Xgemm (a few minutes),\n"
           "                   for example after the library started to use new GEMM shapes\n"
           "  --print-path     print the file that a run would write, which contexts on this\n"
           "                   device read, and exit\n"
           "  --help           show this help\n"
           "\n"
           "DEVICE is the OpenCL device name with every run of characters other than letters,\n"
           "digits, '.', '-' and '_' replaced by '_'. Progress goes to standard error.\n",
           PROGRAM, MAX_EFFORT);
}

static int parse_index(const char *text, const char *what)
{
    char *end = NULL;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < 0 || value > 1024)
        fail_usage("%s '%s' is not a valid index; use a number such as 0", what, text);
    return (int)value;
}

/* Returns the index from the option, else from the environment variable, else 0, as the
 * library resolves it, so that the tuners and the context use the same device. */
static int resolve_index(const char *option, const char *variable)
{
    if (option != NULL)
        return parse_index(option, "index");
    const char *text = getenv(variable);
    if (text == NULL || text[0] == '\0')
        return 0;
    return parse_index(text, variable);
}

static void parse_arguments(int argc, char **argv, settings_t *settings)
{
    enum { OPTION_OUTPUT = 256, OPTION_PLATFORM, OPTION_DEVICE, OPTION_EFFORT, OPTION_WORK_DIR,
           OPTION_SWITCH_ONLY, OPTION_PRINT_PATH, OPTION_HELP };
    static const struct option options[] = {
        {"output", required_argument, NULL, OPTION_OUTPUT},
        {"platform", required_argument, NULL, OPTION_PLATFORM},
        {"device", required_argument, NULL, OPTION_DEVICE},
        {"effort", required_argument, NULL, OPTION_EFFORT},
        {"work-dir", required_argument, NULL, OPTION_WORK_DIR},
        {"switch-only", no_argument, NULL, OPTION_SWITCH_ONLY},
        {"print-path", no_argument, NULL, OPTION_PRINT_PATH},
        {"help", no_argument, NULL, OPTION_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *platform = NULL;
    const char *device = NULL;
    memset(settings, 0, sizeof *settings);
    settings->effort = 1.0;

    opterr = 0;
    int option;
    while ((option = getopt_long(argc, argv, "", options, NULL)) != -1) {
        char *end = NULL;
        switch (option) {
        case OPTION_OUTPUT: settings->output_path = optarg; break;
        case OPTION_PLATFORM: platform = optarg; break;
        case OPTION_DEVICE: device = optarg; break;
        case OPTION_WORK_DIR: settings->work_dir = optarg; break;
        case OPTION_SWITCH_ONLY: settings->switch_only = true; break;
        case OPTION_PRINT_PATH: settings->print_path = true; break;
        case OPTION_EFFORT:
            settings->effort = strtod(optarg, &end);
            if (end == optarg || *end != '\0' || !(settings->effort >= 0.05) ||
                settings->effort > MAX_EFFORT)
                fail_usage("--effort '%s' is invalid; use a number from 0.05 to %g", optarg,
                           MAX_EFFORT);
            break;
        case OPTION_HELP: print_usage(); exit(EXIT_SUCCESS);
        default: fail_usage("unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        fail_usage("unexpected argument '%s'", argv[optind]);
    settings->platform_index = resolve_index(platform, "MCA_PLATFORM");
    settings->device_index = resolve_index(device, "MCA_DEVICE");
}

/* ------------------------------------------------------------------------------------ */
/* Files and directories                                                                 */
/* ------------------------------------------------------------------------------------ */

/* Creates `path` and its missing parents, like mkdir -p. */
static int make_directories(const char *path)
{
    char partial[4096];
    if (snprintf(partial, sizeof partial, "%s", path) >= (int)sizeof partial) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *slash = strchr(partial + 1, '/');; slash = strchr(slash + 1, '/')) {
        if (slash != NULL)
            *slash = '\0';
        if (mkdir(partial, 0777) != 0 && errno != EEXIST)
            return -1;
        if (slash == NULL)
            return 0;
        *slash = '/';
    }
}

static int remove_entry(const char *path, const struct stat *info, int type, struct FTW *ftw)
{
    (void)info;
    (void)type;
    (void)ftw;
    return remove(path);
}

static void remove_tree(const char *path)
{
    if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        mca_tune_progress("warning: could not remove '%s' completely: %s", path, strerror(errno));
}

/* Parses a JSON file of any size, or returns NULL. */
static cJSON *read_json_file(const char *path)
{
    FILE *file = fopen(path, "rb");
    if (file == NULL)
        return NULL;
    size_t capacity = 65536, length = 0;
    char *text = malloc(capacity);
    while (text != NULL) {
        length += fread(text + length, 1, capacity - length - 1, file);
        if (length < capacity - 1)
            break;
        char *grown = realloc(text, 2 * capacity);
        if (grown == NULL) {
            free(text);
            text = NULL;
            break;
        }
        text = grown;
        capacity *= 2;
    }
    bool failed = ferror(file) != 0;
    fclose(file);
    if (text == NULL || failed) {
        free(text);
        return NULL;
    }
    text[length] = '\0';
    cJSON *root = cJSON_Parse(text);
    free(text);
    return root;
}

/* Writes the document through a temporary file in the same directory and renames it, so
 * that a context never reads a half-written file. */
static int write_json_file(const char *path, const cJSON *document)
{
    char directory[4096];
    snprintf(directory, sizeof directory, "%s", path);
    char *slash = strrchr(directory, '/');
    if (slash != NULL && slash != directory) {
        *slash = '\0';
        if (make_directories(directory) != 0) {
            mca_tune_progress("error: cannot create the directory '%s': %s", directory,
                              strerror(errno));
            return -1;
        }
    }

    char temporary[4200];
    snprintf(temporary, sizeof temporary, "%s.tmp-XXXXXX", path);
    int descriptor = mkstemp(temporary);
    if (descriptor < 0) {
        mca_tune_progress("error: cannot create a temporary file next to '%s': %s", path,
                          strerror(errno));
        return -1;
    }
    char *text = cJSON_Print(document);
    FILE *file = fdopen(descriptor, "w");
    bool written = text != NULL && file != NULL && fputs(text, file) >= 0 &&
                   fputc('\n', file) != EOF;
    if (file != NULL)
        written = fclose(file) == 0 && written;
    else
        close(descriptor);
    cJSON_free(text);
    if (!written || chmod(temporary, 0644) != 0 || rename(temporary, path) != 0) {
        mca_tune_progress("error: writing '%s' failed: %s", path, strerror(errno));
        remove(temporary);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* Tuners                                                                                */
/* ------------------------------------------------------------------------------------ */

/* Runs `argv` in `directory` with its output in directory/tuner.log and returns its exit
 * status, or -1 when it could not be started or was killed by a signal. Each tuner gets its
 * own PoCL cache, which PoCL deletes after each configuration (POCL_KERNEL_CACHE=0), so that
 * thousands of tuning kernels do not fill the user's cache. */
static int run_program(char *const argv[], const char *directory)
{
    char log_path[4300];
    char cache_path[4300];
    snprintf(log_path, sizeof log_path, "%s/tuner.log", directory);
    snprintf(cache_path, sizeof cache_path, "%s/pocl-cache", directory);

    pid_t child = fork();
    if (child < 0) {
        mca_tune_progress("error: fork failed: %s", strerror(errno));
        return -1;
    }
    if (child == 0) {
        int log = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int null = open("/dev/null", O_RDONLY);
        if (log < 0 || null < 0 || chdir(directory) != 0 || dup2(null, STDIN_FILENO) < 0 ||
            dup2(log, STDOUT_FILENO) < 0 || dup2(log, STDERR_FILENO) < 0)
            _exit(127);
        setenv("POCL_CACHE_DIR", cache_path, 1);
        setenv("POCL_KERNEL_CACHE", "0", 1);
        execvp(argv[0], argv);
        fprintf(stderr, "%s: cannot run %s: %s\n", PROGRAM, argv[0], strerror(errno));
        _exit(127);
    }

    int status = 0;
    while (waitpid(child, &status, 0) < 0) {
        if (errno != EINTR)
            return -1;
    }
    if (WIFSIGNALED(status))
        mca_tune_progress("error: %s was killed by signal %d", argv[0], WTERMSIG(status));
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Returns whether `program` is an executable file in a directory of PATH. An empty entry
 * of PATH is the current directory. */
static bool program_in_path(const char *program)
{
    const char *search_path = getenv("PATH");
    if (search_path == NULL)
        search_path = "/usr/bin:/bin";
    char candidate[4200];
    for (const char *start = search_path;; ) {
        const char *end = strchr(start, ':');
        int length = end != NULL ? (int)(end - start) : (int)strlen(start);
        snprintf(candidate, sizeof candidate, "%.*s/%s", length > 0 ? length : 1,
                 length > 0 ? start : ".", program);
        if (access(candidate, X_OK) == 0)
            return true;
        if (end == NULL)
            return false;
        start = end + 1;
    }
}

static bool tuners_installed(void)
{
    for (size_t i = 0; i < TUNER_COUNT; i++) {
        if (!program_in_path(tuners[i].program)) {
            fprintf(stderr, "%s: %s is not in PATH; install the Debian package clblast-utils "
                    "(tools/setup does)\n", PROGRAM, tuners[i].program);
            return false;
        }
    }
    return true;
}

/* Copies the parameters of one tuner result without PRECISION, which the tuners record but
 * CLBlast's database does not take. */
static cJSON *database_parameters(const cJSON *parameters)
{
    cJSON *copy = cJSON_CreateObject();
    const cJSON *item = NULL;
    cJSON_ArrayForEach(item, parameters) {
        if (strcmp(item->string, "PRECISION") != 0 && cJSON_IsNumber(item))
            cJSON_AddNumberToObject(copy, item->string, item->valuedouble);
    }
    return copy;
}

/* Returns whether a configuration may be used. The GEMMK=1 Xgemm kernel of CLBlast 1.5.3
 * passes the tuner's test but can compute wrong results inside CLBlastSgemm. The known case
 * is MWG != NWG, fixed upstream in May 2024 (CLBlast pull request 543). With PoCL 3.1 a
 * configuration with MWG = NWG = 64 also gave wrong batched results, so only GEMMK=0
 * configurations are used. */
static bool usable_configuration(const cJSON *parameters)
{
    const cJSON *gemmk = cJSON_GetObjectItemCaseSensitive(parameters, "GEMMK");
    return gemmk == NULL || (cJSON_IsNumber(gemmk) && gemmk->valuedouble == 0.0);
}

/* Scans every clblast_*.json that a tuner wrote into `directory` (one per tuning group) for
 * the fastest usable configuration. Returns false when there is none. */
static bool find_best(const char *directory, tuner_result_t *result)
{
    DIR *listing = opendir(directory);
    if (listing == NULL)
        return false;
    struct dirent *entry;
    while ((entry = readdir(listing)) != NULL) {
        size_t length = strlen(entry->d_name);
        if (strncmp(entry->d_name, "clblast_", 8) != 0 || length < 5 ||
            strcmp(entry->d_name + length - 5, ".json") != 0)
            continue;
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", directory, entry->d_name);
        cJSON *root = read_json_file(path);
        const cJSON *results = cJSON_GetObjectItemCaseSensitive(root, "results");
        const cJSON *item = NULL;
        cJSON_ArrayForEach(item, results) {
            const cJSON *time = cJSON_GetObjectItemCaseSensitive(item, "time");
            const cJSON *parameters = cJSON_GetObjectItemCaseSensitive(item, "parameters");
            if (!cJSON_IsNumber(time) || !cJSON_IsObject(parameters) ||
                !(time->valuedouble > 0.0) || !isfinite(time->valuedouble) ||
                !usable_configuration(parameters))
                continue;
            if (result->parameters != NULL && time->valuedouble >= result->time_ms)
                continue;
            cJSON_Delete(result->parameters);
            result->parameters = database_parameters(parameters);
            result->time_ms = time->valuedouble;
        }
        cJSON_Delete(root);
    }
    closedir(listing);
    return result->parameters != NULL;
}

/* Returns the tuner's -fraction argument: it tests 1/fraction of its configurations, and
 * 1 tests all of them. */
static double tuner_fraction(const tuner_t *tuner, double effort)
{
    double samples = fmax(tuner->samples * effort, MIN_SAMPLES);
    return fmax(tuner->configurations / samples, 1.0);
}

/* Runs one tuner in its own subdirectory of `work_dir` and stores its best configuration. */
static bool run_tuner(const settings_t *settings, const tuner_t *tuner, const char *work_dir,
                      int number, tuner_result_t *result)
{
    char directory[4200];
    snprintf(directory, sizeof directory, "%s/%s", work_dir, tuner->program);
    if (make_directories(directory) != 0) {
        mca_tune_progress("error: cannot create '%s': %s", directory, strerror(errno));
        return false;
    }

    char platform[16], device[16], m[24], n[24], k[24], fraction[32];
    snprintf(platform, sizeof platform, "%d", settings->platform_index);
    snprintf(device, sizeof device, "%d", settings->device_index);
    snprintf(m, sizeof m, "%zu", tuner->m);
    snprintf(n, sizeof n, "%zu", tuner->n);
    snprintf(k, sizeof k, "%zu", tuner->k);
    snprintf(fraction, sizeof fraction, "%g", tuner_fraction(tuner, settings->effort));
    char *argv[16] = {(char *)tuner->program, "-platform", platform, "-device", device,
                      "-precision", "32", "-fraction", fraction};
    int count = 9;
    if (tuner->m > 0) {
        char *shape[] = {"-m", m, "-n", n, "-k", k};
        memcpy(argv + count, shape, sizeof shape);
        count += 6;
    }
    argv[count] = NULL;

    int used = 0;
    for (int i = 1; i < count; i++)
        used += snprintf(result->arguments + used, sizeof result->arguments - (size_t)used,
                         "%s%s", i > 1 ? " " : "", argv[i]);
    mca_tune_progress("[%d/%zu] running %s %s (log: %s/tuner.log)", number, TUNER_COUNT + 1,
                      tuner->program, result->arguments, directory);

    double start = monotonic_seconds();
    int status = run_program(argv, directory);
    result->seconds = monotonic_seconds() - start;
    char duration[32];
    format_duration(result->seconds, duration, sizeof duration);
    if (status != 0) {
        mca_tune_progress("error: %s failed (exit status %d) after %s; see %s/tuner.log",
                          tuner->program, status, duration, directory);
        return false;
    }
    if (!find_best(directory, result)) {
        mca_tune_progress("error: %s wrote no results after %s; see %s/tuner.log", tuner->program,
                          duration, directory);
        return false;
    }
    mca_tune_progress("%s finished in %s: fastest %s configuration took %.3f ms", tuner->program,
                      duration, tuner->kernel, result->time_ms);
    return true;
}

/* ------------------------------------------------------------------------------------ */
/* Output file                                                                           */
/* ------------------------------------------------------------------------------------ */

static cJSON *create_document(const char *device_name)
{
    char created[32];
    time_t now = time(NULL);
    struct tm utc;
    gmtime_r(&now, &utc);
    strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", &utc);

    cJSON *document = cJSON_CreateObject();
    cJSON_AddStringToObject(document, "format", MCA_TUNING_FORMAT);
    cJSON_AddNumberToObject(document, "version", MCA_TUNING_VERSION);
    cJSON_AddStringToObject(document, "device", device_name);
    cJSON_AddStringToObject(document, "created", created);
    cJSON_AddItemToObject(document, "kernels", cJSON_CreateArray());
    return document;
}

/* Appends a kernel entry and takes ownership of `parameters`. */
static cJSON *add_kernel(cJSON *document, const char *kernel, cJSON *parameters)
{
    cJSON *entry = cJSON_CreateObject();
    cJSON_AddStringToObject(entry, "kernel", kernel);
    cJSON_AddNumberToObject(entry, "precision", 32);
    cJSON_AddItemToObject(entry, "parameters", parameters);
    cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(document, "kernels"), entry);
    return entry;
}

static void add_tuner_result(cJSON *document, const tuner_t *tuner, tuner_result_t *result)
{
    cJSON *entry = add_kernel(document, tuner->kernel, result->parameters);
    result->parameters = NULL;
    cJSON_AddStringToObject(entry, "tuner", tuner->program);
    cJSON_AddStringToObject(entry, "tuner_arguments", result->arguments);
    cJSON_AddNumberToObject(entry, "time_ms", result->time_ms);
}

/* Removes the document's entry for `kernel` and returns whether it existed. */
static bool remove_kernel_entry(cJSON *document, const char *kernel)
{
    cJSON *kernels = cJSON_GetObjectItemCaseSensitive(document, "kernels");
    int index = 0;
    const cJSON *entry = NULL;
    cJSON_ArrayForEach(entry, kernels) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(entry, "kernel");
        if (cJSON_IsString(name) && strcmp(name->valuestring, kernel) == 0) {
            cJSON_DeleteItemFromArray(kernels, index);
            return true;
        }
        index++;
    }
    return false;
}

/* Reads an existing tuning file for --switch-only and removes its GemmRoutine entry, which
 * the run measures again. Returns NULL with a message when the file is missing or not a
 * tuning file. */
static cJSON *read_kernel_parameters(const char *path, const char *device_name)
{
    cJSON *document = read_json_file(path);
    const cJSON *format = cJSON_GetObjectItemCaseSensitive(document, "format");
    const cJSON *device = cJSON_GetObjectItemCaseSensitive(document, "device");
    cJSON *kernels = cJSON_GetObjectItemCaseSensitive(document, "kernels");
    if (!cJSON_IsString(format) || strcmp(format->valuestring, MCA_TUNING_FORMAT) != 0 ||
        !cJSON_IsArray(kernels)) {
        fprintf(stderr, "%s: --switch-only needs an existing tuning file, but '%s' is missing "
                "or not one; run %s without --switch-only first\n", PROGRAM, path, PROGRAM);
        cJSON_Delete(document);
        return NULL;
    }
    if (!cJSON_IsString(device) || strcmp(device->valuestring, device_name) != 0) {
        fprintf(stderr, "%s: --switch-only keeps the kernel parameters of '%s', but they were "
                "tuned for device '%s', not '%s'; run %s without --switch-only\n", PROGRAM,
                path, cJSON_IsString(device) ? device->valuestring : "(none)", device_name,
                PROGRAM);
        cJSON_Delete(document);
        return NULL;
    }
    remove_kernel_entry(document, "GemmRoutine");
    return document;
}

/* ------------------------------------------------------------------------------------ */
/* Switch point between XgemmDirect and Xgemm                                            */
/* ------------------------------------------------------------------------------------ */

/* Removes the XgemmDirect entry, so that CLBlast keeps its default parameters for the direct
 * kernel. Tuned ones can make CLBlast's GEMM programs much slower to compile: 52 s against
 * 8 s for the first GEMM of a process with PoCL 3.1 on a 2-core AMD EPYC. That is not worth
 * paying for a kernel that runs only GEMMs smaller than every library shape measured here. */
static void drop_direct_parameters(cJSON *document)
{
    if (remove_kernel_entry(document, "XgemmDirect"))
        mca_tune_progress("  no measured shape runs XgemmDirect, so the file keeps CLBlast's "
                          "default XgemmDirect parameters, which compile faster");
}

/* Applies the tuned kernels (written to `draft_path`), times and checks the library's GEMM
 * shapes with each kernel and adds a GemmRoutine entry with the best switch point. */
static bool tune_switch_point(mca_context_t *context, const char *draft_path, cJSON *document,
                              int number)
{
    mca_tune_progress("[%d/%zu] timing GEMM shapes with XgemmDirect and with Xgemm to choose "
                      "XGEMM_MIN_INDIRECT_SIZE",
                      number, TUNER_COUNT + 1);
    double start = monotonic_seconds();
    if (write_json_file(draft_path, document) != 0)
        return false;
    int status = mca_tuning_apply(context, draft_path);
    if (status != MCA_SUCCESS) {
        mca_tune_progress("error: applying the tuned parameters failed: %s", mca_last_error());
        return false;
    }

    size_t value = 0;
    bool runs_direct = false;
    if (!mca_tune_switch_point(context, &value, &runs_direct))
        return false;
    if (!runs_direct)
        drop_direct_parameters(document);
    cJSON *parameters = cJSON_CreateObject();
    cJSON_AddNumberToObject(parameters, "XGEMM_MIN_INDIRECT_SIZE", (double)value);
    cJSON *entry = add_kernel(document, "GemmRoutine", parameters);
    cJSON_AddStringToObject(entry, "tuner", PROGRAM);
    char duration[32];
    mca_tune_progress("switch point chosen in %s",
                      format_duration(monotonic_seconds() - start, duration, sizeof duration));
    return true;
}

/* ------------------------------------------------------------------------------------ */
/* Main                                                                                  */
/* ------------------------------------------------------------------------------------ */

static void log_to_stderr(mca_log_level_t level, const char *message, void *user_data)
{
    (void)user_data;
    if (level >= MCA_LOG_WARNING)
        fprintf(stderr, "%s: %s\n", PROGRAM, message);
}

/* Creates a context without tuned parameters, so that a stale file cannot break tuning. */
static mca_context_t *create_context(const settings_t *settings)
{
    mca_context_options_t options;
    mca_context_options_init(&options);
    options.platform_index = settings->platform_index;
    options.device_index = settings->device_index;
    options.log = log_to_stderr;
    options.tuning_file = MCA_TUNING_NONE;
    mca_context_t *context = NULL;
    int status = mca_context_create(&options, &context);
    if (status != MCA_SUCCESS) {
        fprintf(stderr, "%s: cannot open OpenCL device %d:%d: %s\n", PROGRAM,
                settings->platform_index, settings->device_index, mca_last_error());
        return NULL;
    }
    return context;
}

static bool prepare_work_dir(const settings_t *settings, char *work_dir, size_t size)
{
    if (settings->work_dir != NULL) {
        if (strlen(settings->work_dir) > 3000) {
            fprintf(stderr, "%s: --work-dir is longer than 3000 bytes; use a shorter path\n",
                    PROGRAM);
            return false;
        }
        snprintf(work_dir, size, "%s", settings->work_dir);
        if (make_directories(work_dir) == 0)
            return true;
        fprintf(stderr, "%s: cannot create '%s': %s\n", PROGRAM, work_dir, strerror(errno));
        return false;
    }
    const char *temporary = getenv("TMPDIR");
    snprintf(work_dir, size, "%s/mca-tune-XXXXXX",
             temporary != NULL && temporary[0] == '/' ? temporary : "/tmp");
    if (mkdtemp(work_dir) != NULL)
        return true;
    fprintf(stderr, "%s: cannot create a temporary directory: %s\n", PROGRAM, strerror(errno));
    return false;
}

int main(int argc, char **argv)
{
    settings_t settings;
    parse_arguments(argc, argv, &settings);
    if (!settings.print_path && !tuners_installed())
        return EXIT_RUN_FAILURE;

    mca_context_t *context = create_context(&settings);
    if (context == NULL)
        return EXIT_RUN_FAILURE;
    const char *device_name = mca_context_device_name(context);
    char output_path[4096];
    if (settings.output_path != NULL) {
        snprintf(output_path, sizeof output_path, "%s", settings.output_path);
    } else if (mca_tuning_default_path(device_name, output_path, sizeof output_path) != 0) {
        fprintf(stderr, "%s: %s; or pass --output FILE\n", PROGRAM, mca_last_error());
        mca_context_destroy(context);
        return EXIT_RUN_FAILURE;
    }
    if (settings.print_path) {
        puts(output_path);
        mca_context_destroy(context);
        return EXIT_SUCCESS;
    }
    char work_dir[4096];
    if (!prepare_work_dir(&settings, work_dir, sizeof work_dir)) {
        mca_context_destroy(context);
        return EXIT_RUN_FAILURE;
    }
    mca_tune_progress("tuning CLBlast for '%s' (platform %d, device %d) at effort %g; writing %s",
                      device_name, settings.platform_index, settings.device_index, settings.effort,
                      output_path);

    double start = monotonic_seconds();
    cJSON *document = settings.switch_only ? read_kernel_parameters(output_path, device_name)
                                           : create_document(device_name);
    if (document == NULL) {
        mca_context_destroy(context);
        if (settings.work_dir == NULL)
            remove_tree(work_dir);
        return EXIT_RUN_FAILURE;
    }
    int failures = 0;
    for (size_t i = 0; i < TUNER_COUNT && !settings.switch_only; i++) {
        tuner_result_t result = {0};
        if (run_tuner(&settings, &tuners[i], work_dir, (int)i + 1, &result))
            add_tuner_result(document, &tuners[i], &result);
        else
            failures++;
        cJSON_Delete(result.parameters);
    }

    char draft_path[4200];
    snprintf(draft_path, sizeof draft_path, "%s/draft.json", work_dir);
    bool checked = tune_switch_point(context, draft_path, document, (int)TUNER_COUNT + 1);

    /* Parameters whose GEMMs were not checked are not written. */
    int status = EXIT_RUN_FAILURE;
    char duration[32];
    format_duration(monotonic_seconds() - start, duration, sizeof duration);
    if (checked && write_json_file(output_path, document) == 0) {
        mca_tune_progress("wrote %s after %s%s", output_path, duration,
                          failures > 0 ? ", without the kernels whose tuning failed" : "");
        status = failures > 0 ? EXIT_RUN_FAILURE : EXIT_SUCCESS;
    } else if (!checked) {
        mca_tune_progress("error: wrote nothing after %s because the GEMM checks did not pass",
                          duration);
    }
    if (status != EXIT_SUCCESS && settings.work_dir == NULL)
        mca_tune_progress("the tuners' logs and results are kept in %s", work_dir);

    cJSON_Delete(document);
    mca_context_destroy(context);
    if (status == EXIT_SUCCESS && settings.work_dir == NULL)
        remove_tree(work_dir);
    return status;
}
