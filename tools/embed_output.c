/* Part of mca-embed: the .npy output file, written to a temporary file and renamed. */
#include "embed_output.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PROGRAM "mca-embed"

/* Signals whose default action ends the program and that a user or a job runner sends to
 * stop it. Their handler removes the temporary file first. */
static const int cleanup_signals[] = {SIGHUP, SIGINT, SIGTERM};
#define CLEANUP_SIGNAL_COUNT (sizeof cleanup_signals / sizeof cleanup_signals[0])

/* The temporary file that exists now, for the signal handler. Both are only changed while
 * the cleanup signals are blocked. */
static const char *temporary_path;
static volatile sig_atomic_t temporary_exists;

/* A temporary file beside the output and the signal actions to restore after it. */
typedef struct temporary_file {
    char *path;
    int descriptor;
    struct sigaction previous[CLEANUP_SIGNAL_COUNT];
} temporary_file_t;

/* Removes the temporary file, then lets the signal take its default action, so that the
 * exit status still shows which signal ended the program. unlink, signal and raise are
 * async-signal-safe. The raised signal stays pending until the handler returns. */
static void remove_temporary_and_raise(int signal_number)
{
    if (temporary_exists)
        unlink(temporary_path);
    signal(signal_number, SIG_DFL);
    raise(signal_number);
}

static void block_cleanup_signals(sigset_t *previous_mask)
{
    sigset_t mask;
    sigemptyset(&mask);
    for (size_t i = 0; i < CLEANUP_SIGNAL_COUNT; ++i)
        sigaddset(&mask, cleanup_signals[i]);
    sigprocmask(SIG_BLOCK, &mask, previous_mask);
}

/* Creates PATH.tmp.XXXXXX with the handler for the cleanup signals in place. A signal that
 * the program ignores, as under nohup, stays ignored. Returns false after printing why. */
static bool create_temporary(const char *path, temporary_file_t *file)
{
    size_t length = strlen(path) + sizeof ".tmp.XXXXXX";
    file->path = malloc(length);
    file->descriptor = -1;
    if (file->path == NULL) {
        fprintf(stderr, PROGRAM ": writing %s failed: out of memory\n", path);
        return false;
    }
    snprintf(file->path, length, "%s.tmp.XXXXXX", path);

    sigset_t previous_mask;
    block_cleanup_signals(&previous_mask);
    struct sigaction action = {.sa_handler = remove_temporary_and_raise};
    sigfillset(&action.sa_mask);
    for (size_t i = 0; i < CLEANUP_SIGNAL_COUNT; ++i) {
        sigaction(cleanup_signals[i], NULL, &file->previous[i]);
        if (file->previous[i].sa_handler != SIG_IGN)
            sigaction(cleanup_signals[i], &action, NULL);
    }
    file->descriptor = mkstemp(file->path);
    int error = errno;
    temporary_path = file->path;
    temporary_exists = file->descriptor >= 0;
    sigprocmask(SIG_SETMASK, &previous_mask, NULL);
    if (file->descriptor >= 0)
        return true;

    /* The message names the directory part of `path`, because mkstemp has replaced the X's
     * of the file name. */
    const char *directory = ".";
    int directory_length = 1;
    const char *slash = strrchr(path, '/');
    if (slash != NULL) {
        directory = path;
        directory_length = slash == path ? 1 : (int)(slash - path);
    }
    fprintf(stderr,
            PROGRAM ": cannot write --output %s: creating a file in directory %.*s failed: %s; "
                    "choose an existing directory that you can write to\n",
            path, directory_length, directory, strerror(error));
    for (size_t i = 0; i < CLEANUP_SIGNAL_COUNT; ++i)
        sigaction(cleanup_signals[i], &file->previous[i], NULL);
    free(file->path);
    file->path = NULL;
    return false;
}

/* Renames the temporary file to `path` when `keep` is true, else removes it, and restores
 * the previous signal actions. A cleanup signal that arrived meanwhile is handled after. */
static bool finish_temporary(temporary_file_t *file, const char *path, bool keep)
{
    sigset_t previous_mask;
    block_cleanup_signals(&previous_mask);
    bool renamed = keep && rename(file->path, path) == 0;
    int error = errno;
    if (!renamed)
        unlink(file->path);
    temporary_exists = 0;
    for (size_t i = 0; i < CLEANUP_SIGNAL_COUNT; ++i)
        sigaction(cleanup_signals[i], &file->previous[i], NULL);
    sigprocmask(SIG_SETMASK, &previous_mask, NULL);

    free(file->path);
    file->path = NULL;
    errno = error;
    return renamed;
}

bool check_output_path(const char *path)
{
    struct stat info;
    if (stat(path, &info) == 0 && S_ISDIR(info.st_mode)) {
        fprintf(stderr,
                PROGRAM ": cannot write --output %s: it is a directory; give a file path such "
                        "as %s/embeddings.npy\n",
                path, path);
        return false;
    }
    /* The rename at the end replaces whatever is at the path, so a symbolic link, device or
     * pipe there (for example /dev/null under root) would become a regular file. */
    if (lstat(path, &info) == 0 && !S_ISREG(info.st_mode)) {
        fprintf(stderr,
                PROGRAM ": cannot write --output %s: it exists and is not a regular file (a "
                        "symbolic link, device, pipe or socket), which writing would replace; "
                        "give the path of a regular file or of a new one\n",
                path);
        return false;
    }

    temporary_file_t file;
    if (!create_temporary(path, &file))
        return false;
    close(file.descriptor);
    finish_temporary(&file, path, false);
    return true;
}

/* Writes the .npy version 1.0 stream: magic, header length, a Python dict literal padded
 * with spaces to a multiple of 64 bytes, then little-endian float32 rows. */
static bool write_npy_stream(FILE *stream, const float *data, int rows, int columns)
{
    char header[128];
    int length = snprintf(header, sizeof header,
                          "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }", rows,
                          columns);
    const int prefix = 10; /* magic (6), version (2), header length (2) */
    int padded = ((prefix + length + 1 + 63) / 64) * 64 - prefix;
    while (length < padded - 1)
        header[length++] = ' ';
    header[length++] = '\n';

    const unsigned char preamble[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                                        (unsigned char)(length & 0xff),
                                        (unsigned char)(length >> 8)};
    if (fwrite(preamble, 1, sizeof preamble, stream) != sizeof preamble ||
        fwrite(header, 1, (size_t)length, stream) != (size_t)length)
        return false;

    const size_t count = (size_t)rows * (size_t)columns;
    for (size_t i = 0; i < count; ++i) {
        uint32_t bits;
        memcpy(&bits, &data[i], sizeof bits);
        const unsigned char bytes[4] = {bits & 0xff, (bits >> 8) & 0xff, (bits >> 16) & 0xff,
                                        bits >> 24};
        if (fwrite(bytes, 1, sizeof bytes, stream) != sizeof bytes)
            return false;
    }
    return true;
}

bool write_npy(const char *path, const float *data, int rows, int columns)
{
    temporary_file_t file;
    if (!create_temporary(path, &file))
        return false;

    /* mkstemp creates the file with mode 0600; give it the usual 0666 minus the umask. */
    mode_t mask = umask(0);
    umask(mask);
    bool written = fchmod(file.descriptor, 0666 & ~mask) == 0;

    FILE *stream = fdopen(file.descriptor, "wb");
    if (stream == NULL) {
        written = false;
        close(file.descriptor);
    } else {
        written = written && write_npy_stream(stream, data, rows, columns);
        written = written && fflush(stream) == 0 && fsync(fileno(stream)) == 0;
        written = fclose(stream) == 0 && written;
    }
    int error = errno;
    if (!finish_temporary(&file, path, written)) {
        fprintf(stderr, PROGRAM ": writing %s failed: %s\n", path,
                strerror(written ? errno : error));
        return false;
    }
    return true;
}
