/* Tuned CLBlast parameters: the per-device file name, reading and validating the file, and
 * handing each kernel's parameters to CLBlastOverrideParameters. */
#include "tuning.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <clblast_c.h>

#include "gemm.h"
#include "json.h"

#define SANITIZED_NAME_MAX 128

/* JSON numbers are doubles, so integers from 2^53 on may have been rounded while parsing. */
#define MAX_EXACT_INTEGER 9007199254740991.0

/* One kernel entry of the file, validated and ready for CLBlastOverrideParameters. The
 * strings point into the parsed JSON tree. */
typedef struct tuning_entry {
    const char *kernel;
    size_t count;
    const char **names;
    size_t *values;
} tuning_entry_t;

typedef struct tuning_file {
    cJSON *root;
    tuning_entry_t *entries;
    size_t entry_count;
} tuning_file_t;

static bool is_name_character(char c)
{
    return isalnum((unsigned char)c) || c == '.' || c == '-' || c == '_';
}

void mca_tuning_sanitize_device_name(const char *device_name, char *sanitized, size_t size)
{
    if (size == 0)
        return;
    size_t limit = size - 1 < SANITIZED_NAME_MAX ? size - 1 : SANITIZED_NAME_MAX;
    size_t length = 0;
    bool pending_separator = false;
    for (const char *c = device_name; *c != '\0'; c++) {
        if (!is_name_character(*c)) {
            pending_separator = length > 0;
            continue;
        }
        if (length + (pending_separator ? 2 : 1) > limit)
            break;
        if (pending_separator)
            sanitized[length++] = '_';
        pending_separator = false;
        sanitized[length++] = *c;
    }
    sanitized[length] = '\0';
    if (length == 0)
        snprintf(sanitized, size, "unknown-device");
}

int mca_tuning_default_path(const char *device_name, char *path, size_t size)
{
    char name[SANITIZED_NAME_MAX + 1];
    mca_tuning_sanitize_device_name(device_name, name, sizeof name);

    const char *cache_home = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    int written = 0;
    if (cache_home != NULL && cache_home[0] == '/')
        written = snprintf(path, size, "%s/mca/clblast-%s.json", cache_home, name);
    else if (home != NULL && home[0] != '\0')
        written = snprintf(path, size, "%s/.cache/mca/clblast-%s.json", home, name);
    else
        return mca_error(MCA_ERROR_IO,
                         "neither an absolute XDG_CACHE_HOME nor HOME is set, so there is no "
                         "default file of tuned CLBlast parameters; set %s to name one",
                         MCA_TUNING_ENVIRONMENT);
    if (written < 0 || (size_t)written >= size)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "the default file of tuned CLBlast parameters for '%s' needs a path "
                         "longer than %zu bytes; set %s to a shorter path",
                         device_name, size - 1, MCA_TUNING_ENVIRONMENT);
    return MCA_SUCCESS;
}

/* Writes the message of an errno value, with strerror_r because strerror is not
 * thread-safe. */
static void describe_error(int error_number, char *reason, size_t size)
{
    if (strerror_r(error_number, reason, size) != 0)
        snprintf(reason, size, "error %d", error_number);
}

/* Reads the whole file into a NUL-terminated buffer. A file that does not exist gives
 * MCA_ERROR_IO with *missing set and records no error, because whether that is an error
 * depends on where the path came from. */
static int read_text(const mca_context_t *context, const char *path, char **text, bool *missing)
{
    *missing = false;
    char reason[256];
    FILE *file = fopen(path, "rb");
    if (file == NULL) {
        int error_number = errno;
        if (error_number == ENOENT) {
            *missing = true;
            return MCA_ERROR_IO;
        }
        describe_error(error_number, reason, sizeof reason);
        return mca_context_error(context, MCA_ERROR_IO,
                                 "cannot open the tuned CLBlast parameters '%s': %s", path,
                                 reason);
    }

    char *buffer = mca_malloc(MCA_TUNING_MAX_FILE_BYTES + 1);
    if (buffer == NULL) {
        fclose(file);
        return mca_context_error(context, MCA_ERROR_OUT_OF_HOST_MEMORY,
                                 "cannot allocate %d bytes to read '%s'",
                                 MCA_TUNING_MAX_FILE_BYTES + 1, path);
    }
    errno = 0;
    size_t length = fread(buffer, 1, MCA_TUNING_MAX_FILE_BYTES + 1, file);
    int read_error = ferror(file) ? (errno != 0 ? errno : EIO) : 0;
    fclose(file);

    if (read_error != 0) {
        free(buffer);
        describe_error(read_error, reason, sizeof reason);
        return mca_context_error(context, MCA_ERROR_IO,
                                 "reading the tuned CLBlast parameters '%s' failed: %s", path,
                                 reason);
    }
    if (length > MCA_TUNING_MAX_FILE_BYTES) {
        free(buffer);
        return mca_context_error(context, MCA_ERROR_CORRUPT_FILE,
                                 "'%s' is larger than %d bytes, so it is not a file of tuned "
                                 "CLBlast parameters; rerun tools/tune to write it again",
                                 path, MCA_TUNING_MAX_FILE_BYTES);
    }
    buffer[length] = '\0';
    *text = buffer;
    return MCA_SUCCESS;
}

static void tuning_file_free(tuning_file_t *file)
{
    for (size_t i = 0; i < file->entry_count; i++) {
        free(file->entries[i].names);
        free(file->entries[i].values);
    }
    free(file->entries);
    cJSON_Delete(file->root);
    memset(file, 0, sizeof *file);
}

/* Converts one parameter value. It must be a non-negative integer that fits size_t and that
 * a double represents exactly. */
static int parse_value(const mca_context_t *context, const char *path, const char *kernel,
                       const cJSON *item, size_t *value)
{
    double number = cJSON_IsNumber(item) ? item->valuedouble : -1.0;
    double max_value = (double)SIZE_MAX < MAX_EXACT_INTEGER ? (double)SIZE_MAX
                                                             : MAX_EXACT_INTEGER;
    bool valid = cJSON_IsNumber(item) && number >= 0.0 && number <= max_value &&
                 floor(number) == number;
    if (!valid)
        return mca_context_error(context, MCA_ERROR_CORRUPT_FILE,
                                 "'%s': parameter %s of kernel '%s' must be an integer from 0 "
                                 "to %.0f; rerun tools/tune to write the file again",
                                 path, item->string, kernel, max_value);
    *value = (size_t)number;
    return MCA_SUCCESS;
}

/* Fills `entry` from the "parameters" object of one kernel entry. */
static int parse_parameters(const mca_context_t *context, const char *path, const char *kernel,
                            const cJSON *parameters, tuning_entry_t *entry)
{
    if (!cJSON_IsObject(parameters) || cJSON_GetArraySize(parameters) == 0)
        return mca_context_error(context, MCA_ERROR_CORRUPT_FILE,
                                 "'%s': kernel '%s' needs a non-empty \"parameters\" object of "
                                 "names and integer values",
                                 path, kernel);

    size_t count = (size_t)cJSON_GetArraySize(parameters);
    entry->names = mca_calloc(count, sizeof *entry->names);
    entry->values = mca_calloc(count, sizeof *entry->values);
    if (entry->names == NULL || entry->values == NULL)
        return mca_context_error(context, MCA_ERROR_OUT_OF_HOST_MEMORY,
                                 "cannot allocate %zu parameters of kernel '%s'", count, kernel);

    const cJSON *item = NULL;
    cJSON_ArrayForEach(item, parameters) {
        int status = parse_value(context, path, kernel, item, &entry->values[entry->count]);
        if (status != MCA_SUCCESS)
            return status;
        entry->names[entry->count] = item->string;
        entry->count++;
    }
    return MCA_SUCCESS;
}

static bool kernel_listed(const tuning_file_t *file, const char *kernel)
{
    for (size_t i = 0; i < file->entry_count; i++) {
        if (strcmp(file->entries[i].kernel, kernel) == 0)
            return true;
    }
    return false;
}

/* Validates one element of "kernels" and appends it to file->entries if its precision is 32. */
static int parse_entry(const mca_context_t *context, const char *path, const cJSON *element,
                       size_t index, tuning_file_t *file)
{
    const cJSON *kernel = cJSON_GetObjectItemCaseSensitive(element, "kernel");
    if (!cJSON_IsString(kernel) || kernel->valuestring[0] == '\0')
        return mca_context_error(context, MCA_ERROR_CORRUPT_FILE,
                                 "'%s': entry %zu of \"kernels\" has no \"kernel\" name", path,
                                 index);
    const char *name = kernel->valuestring;

    const cJSON *precision = cJSON_GetObjectItemCaseSensitive(element, "precision");
    if (!cJSON_IsNumber(precision))
        return mca_context_error(context, MCA_ERROR_CORRUPT_FILE,
                                 "'%s': kernel '%s' (entry %zu) has no numeric \"precision\"",
                                 path, name, index);
    if (precision->valuedouble != 32.0) {
        mca_log(context, MCA_LOG_DEBUG,
                "'%s': skipping kernel '%s' of precision %g because the library uses only "
                "precision 32",
                path, name, precision->valuedouble);
        return MCA_SUCCESS;
    }
    if (kernel_listed(file, name))
        return mca_context_error(context, MCA_ERROR_CORRUPT_FILE,
                                 "'%s': kernel '%s' is listed twice for precision 32", path,
                                 name);

    tuning_entry_t *entry = &file->entries[file->entry_count];
    memset(entry, 0, sizeof *entry);
    entry->kernel = name;
    file->entry_count++;
    const cJSON *parameters = cJSON_GetObjectItemCaseSensitive(element, "parameters");
    return parse_parameters(context, path, name, parameters, entry);
}

/* Checks the header fields, logs a warning when the file was tuned on another device, and
 * validates every kernel entry. */
static int parse_file(const mca_context_t *context, const char *path, const char *text,
                      tuning_file_t *file)
{
    /* cJSON_GetErrorPtr is shared by all threads, so the error position comes from the
     * parse end instead. */
    const char *error = NULL;
    file->root = mca_json_parse(text, strlen(text) + 1, &error, true);
    if (file->root == NULL) {
        long offset = error != NULL && error >= text ? (long)(error - text) : -1;
        return mca_context_error(context, MCA_ERROR_CORRUPT_FILE,
                                 "'%s' is not valid JSON (error near byte %ld); rerun "
                                 "tools/tune to write it again",
                                 path, offset);
    }

    const cJSON *format = cJSON_GetObjectItemCaseSensitive(file->root, "format");
    const cJSON *version = cJSON_GetObjectItemCaseSensitive(file->root, "version");
    if (!cJSON_IsString(format) || strcmp(format->valuestring, MCA_TUNING_FORMAT) != 0)
        return mca_context_error(context, MCA_ERROR_CORRUPT_FILE,
                                 "'%s' is not a file of tuned CLBlast parameters: \"format\" "
                                 "must be \"%s\"",
                                 path, MCA_TUNING_FORMAT);
    if (!cJSON_IsNumber(version) || version->valuedouble != MCA_TUNING_VERSION)
        return mca_context_error(context, MCA_ERROR_CORRUPT_FILE,
                                 "'%s' has an unsupported \"version\"; this library reads "
                                 "version %d, so rerun tools/tune to write it again",
                                 path, MCA_TUNING_VERSION);

    const cJSON *device = cJSON_GetObjectItemCaseSensitive(file->root, "device");
    if (cJSON_IsString(device) && strcmp(device->valuestring, context->device_name) != 0)
        mca_log(context, MCA_LOG_WARNING,
                "'%s' was tuned on device '%s' but the context uses '%s'; CLBlast may run "
                "slowly or fail with these parameters",
                path, device->valuestring, context->device_name);

    const cJSON *kernels = cJSON_GetObjectItemCaseSensitive(file->root, "kernels");
    if (!cJSON_IsArray(kernels))
        return mca_context_error(context, MCA_ERROR_CORRUPT_FILE,
                                 "'%s' has no \"kernels\" array", path);
    size_t count = (size_t)cJSON_GetArraySize(kernels);
    file->entries = mca_calloc(count > 0 ? count : 1, sizeof *file->entries);
    if (file->entries == NULL)
        return mca_context_error(context, MCA_ERROR_OUT_OF_HOST_MEMORY,
                                 "cannot allocate %zu kernel entries", count);

    size_t index = 0;
    const cJSON *element = NULL;
    cJSON_ArrayForEach(element, kernels) {
        int status = parse_entry(context, path, element, index, file);
        if (status != MCA_SUCCESS)
            return status;
        index++;
    }
    return MCA_SUCCESS;
}

/* Hands every entry to CLBlast and logs the kernel names. */
/* Devices on which CLBlast keeps parameters that a context rejected: parameters that gave
 * wrong GEMM results, or that CLBlast accepted before it rejected a later entry of the same
 * file. CLBlast 1.5.3 has no call that restores its defaults (CLBlastClearCache keeps
 * overridden parameters), so every later context on such a device is refused instead of
 * computing with them. */
#define MAX_BLOCKED_DEVICES 16
static struct {
    pthread_mutex_t lock;
    size_t count;
    cl_device_id devices[MAX_BLOCKED_DEVICES];
    char paths[MAX_BLOCKED_DEVICES][4096];
} blocked = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void block_device(cl_device_id device, const char *path)
{
    pthread_mutex_lock(&blocked.lock);
    if (blocked.count < MAX_BLOCKED_DEVICES) {
        blocked.devices[blocked.count] = device;
        snprintf(blocked.paths[blocked.count], sizeof blocked.paths[0], "%s", path);
        blocked.count++;
    }
    pthread_mutex_unlock(&blocked.lock);
}

/* Returns an error when an earlier context of this process left rejected parameters on the
 * context's device. */
static int check_device_not_blocked(mca_context_t *context)
{
    char path[sizeof blocked.paths[0]] = "";
    pthread_mutex_lock(&blocked.lock);
    for (size_t i = 0; i < blocked.count && path[0] == '\0'; i++) {
        if (blocked.devices[i] == context->device)
            snprintf(path, sizeof path, "%s", blocked.paths[i]);
    }
    pthread_mutex_unlock(&blocked.lock);
    if (path[0] == '\0')
        return MCA_SUCCESS;
    return mca_context_error(context, MCA_ERROR_INVALID_CONFIG,
                             "CLBlast still holds the parameters from '%s' that were rejected "
                             "earlier in this process for device '%s', and CLBlast cannot "
                             "restore its defaults; restart the process without that file",
                             path, context->device_name);
}

/* Passes every entry to CLBlast and counts in *installed the entries that it accepted. */
static int apply_entries(mca_context_t *context, const char *path, const tuning_file_t *file,
                         size_t *installed)
{
    char kernels[512] = "";
    size_t used = 0;
    *installed = 0;
    for (size_t i = 0; i < file->entry_count; i++) {
        const tuning_entry_t *entry = &file->entries[i];
        mca_clblast_lock();
        CLBlastStatusCode code = CLBlastOverrideParameters(
            context->device, entry->kernel, CLBlastPrecisionSingle, entry->count, entry->names,
            entry->values);
        mca_clblast_unlock();
        if (code != CLBlastSuccess)
            return mca_context_error(context, code,
                                     "'%s': CLBlast rejected the parameters of kernel '%s': %s "
                                     "(%d); rerun tools/tune to write the file for this CLBlast "
                                     "version and device",
                                     path, entry->kernel, mca_status_string(code), (int)code);
        (*installed)++;
        int written = snprintf(kernels + used, sizeof kernels - used, "%s%s", i > 0 ? ", " : "",
                               entry->kernel);
        if (written > 0 && used + (size_t)written < sizeof kernels)
            used += (size_t)written;
    }
    mca_log(context, MCA_LOG_INFO, "using tuned CLBlast parameters from %s (kernels: %s)", path,
            file->entry_count > 0 ? kernels : "none");
    return MCA_SUCCESS;
}

/* Largest |C - A op(B)| of one GEMM of the given shape on deterministic data in
 * [-0.5, 0.5), against a double-precision product on the host. */
static int gemm_error(mca_context_t *context, size_t m, size_t n, size_t k, bool transpose_b,
                      double *error)
{
    float *a = mca_malloc((m * k + n * k + m * n) * sizeof *a);
    if (a == NULL)
        return mca_context_error(context, MCA_ERROR_OUT_OF_HOST_MEMORY,
                                 "cannot allocate the GEMM check of the tuned parameters");
    float *b = a + m * k, *c = b + n * k;
    for (size_t i = 0; i < m * k; i++)
        a[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
    for (size_t i = 0; i < n * k; i++)
        b[i] = (float)((i * 104729) % 1000) / 1000.0f - 0.5f;

    cl_mem buffers[3] = {NULL, NULL, NULL};
    int status = mca_buffer_create(context, m * k * sizeof *a, a, "GEMM check A", &buffers[0]);
    if (status == MCA_SUCCESS)
        status = mca_buffer_create(context, n * k * sizeof *a, b, "GEMM check B", &buffers[1]);
    if (status == MCA_SUCCESS)
        status = mca_buffer_create(context, m * n * sizeof *a, NULL, "GEMM check C",
                                   &buffers[2]);
    mca_matrix_t ma = {buffers[0], 0, k};
    mca_matrix_t mb = {buffers[1], 0, transpose_b ? k : n};
    mca_matrix_t mc = {buffers[2], 0, n};
    if (status == MCA_SUCCESS)
        status = mca_gemm(context, false, transpose_b, m, n, k, 1.0f, ma, mb, 0.0f, mc);
    if (status == MCA_SUCCESS)
        status = mca_buffer_read(context, buffers[2], 0, m * n * sizeof *c, c);

    *error = 0.0;
    for (size_t i = 0; i < m && status == MCA_SUCCESS; i++) {
        for (size_t j = 0; j < n; j++) {
            double sum = 0.0;
            for (size_t p = 0; p < k; p++)
                sum += (double)a[i * k + p] * (transpose_b ? b[j * k + p] : b[p * n + j]);
            double difference = fabs(sum - (double)c[i * n + j]);
            if (!(difference <= *error))
                *error = isnan(difference) ? INFINITY : difference;
        }
    }
    for (int i = 0; i < 3; i++)
        mca_buffer_release(&buffers[i]);
    free(a);
    return status;
}

/*
 * Runs GEMMs of the kinds the library uses with the new parameters: small shapes take
 * CLBlast's direct kernel and larger ones the indirect kernel with its copy, pad and
 * transpose helpers. CLBlast 1.5.3's own tuner has written parameters (GEMMK = 1 on PoCL)
 * whose GEMMs return garbage and write outside their buffers, so a file is used only after
 * this check passes.
 */
static int verify_tuned_gemm(mca_context_t *context, const char *path, bool *wrong_results)
{
    *wrong_results = false;
    static const size_t shapes[][4] = {
        {24, 40, 32, 1}, {200, 100, 300, 1}, {128, 384, 384, 1}, {128, 32, 128, 0}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        double error = 0.0;
        size_t m = shapes[i][0], n = shapes[i][1], k = shapes[i][2];
        int status = gemm_error(context, m, n, k, shapes[i][3] != 0, &error);
        if (status != MCA_SUCCESS)
            return status;
        /* Inputs below 0.5 in magnitude: float rounding stays under 1e-6 * k. */
        *wrong_results = !(error <= 1e-6 * (double)k);
        if (*wrong_results)
            return mca_context_error(context, MCA_ERROR_INVALID_CONFIG,
                                     "the tuned CLBlast parameters in '%s' give wrong GEMM "
                                     "results on '%s' (largest error %.3g for m=%zu, n=%zu, "
                                     "k=%zu); delete the file or run tools/tune again",
                                     path, context->device_name, error, m, n, k);
    }
    return MCA_SUCCESS;
}

int mca_tuning_apply(mca_context_t *context, const char *path)
{
    int blocked_status = check_device_not_blocked(context);
    if (blocked_status != MCA_SUCCESS)
        return blocked_status;
    if (path != NULL && path[0] == '\0') {
        mca_log(context, MCA_LOG_INFO,
                "not applying tuned CLBlast parameters because the tuning file is \"\"; "
                "GEMMs use CLBlast's defaults");
        return MCA_SUCCESS;
    }

    /* Source of an explicit path, named in error messages. */
    const char *source = "the tuning_file option";
    if (path == NULL) {
        path = getenv(MCA_TUNING_ENVIRONMENT);
        source = MCA_TUNING_ENVIRONMENT;
    }
    bool explicit_file = path != NULL && path[0] != '\0';

    char default_path[4096];
    if (!explicit_file) {
        int status = mca_tuning_default_path(context->device_name, default_path,
                                             sizeof default_path);
        char reason[1024];
        snprintf(reason, sizeof reason, "%s", mca_last_error());
        if (status == MCA_ERROR_IO) {
            mca_log(context, MCA_LOG_INFO,
                    "no tuned CLBlast parameters for device '%s' (%s); GEMMs use CLBlast's "
                    "defaults",
                    context->device_name, reason);
            mca_error_clear();
            return MCA_SUCCESS;
        }
        if (status != MCA_SUCCESS)
            return mca_context_error(context, status, "%s", reason);
        path = default_path;
    }

    char *text = NULL;
    bool missing = false;
    int status = read_text(context, path, &text, &missing);
    if (missing && !explicit_file) {
        mca_log(context, MCA_LOG_INFO,
                "no tuned CLBlast parameters for device '%s' (looked for %s); GEMMs use "
                "CLBlast's defaults, run tools/tune",
                context->device_name, path);
        return MCA_SUCCESS;
    }
    if (missing)
        return mca_context_error(context, MCA_ERROR_IO,
                                 "the file of tuned CLBlast parameters '%s', named by %s, does "
                                 "not exist; run tools/tune --output '%s' to write it",
                                 path, source, path);
    if (status != MCA_SUCCESS)
        return status;

    /* Every entry is validated before any is passed to CLBlast, so a malformed file changes
     * nothing.
     * NOTE: when CLBlast rejects an entry, the entries before it stay applied. */
    tuning_file_t file = {0};
    status = parse_file(context, path, text, &file);
    size_t installed = 0;
    bool wrong_results = false;
    if (status == MCA_SUCCESS)
        status = apply_entries(context, path, &file, &installed);
    bool partly_installed = status != MCA_SUCCESS && installed > 0;
    if (status == MCA_SUCCESS)
        status = verify_tuned_gemm(context, path, &wrong_results);
    /* Programs compiled with rejected parameters are dropped, but the parameters stay, so
     * the device is blocked for the rest of the process. A check that failed for another
     * reason (out of memory) does not count against the parameters. */
    if (status != MCA_SUCCESS && installed > 0) {
        mca_clblast_lock();
        CLBlastClearCache();
        mca_clblast_unlock();
    }
    if (wrong_results || partly_installed)
        block_device(context->device, path);
    tuning_file_free(&file);
    free(text);
    return status;
}
