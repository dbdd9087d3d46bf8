/* Part of mca-embed: writes the embeddings as a .npy file, so that the output path contains
 * either its old content or the whole new file, never a partial one. */
#ifndef MCA_EMBED_OUTPUT_H
#define MCA_EMBED_OUTPUT_H

#include <stdbool.h>

/*
 * Checks, before the slow steps of a run, that `path` can be written: it must not be a
 * directory, and a temporary file must be creatable beside it (the file is removed again).
 * Prints why to standard error and returns false otherwise. The real write can still fail
 * later, for example when the disk fills up.
 */
bool check_output_path(const char *path);

/*
 * Writes `rows` x `columns` float32 values as a .npy file to PATH.tmp.XXXXXX, then renames
 * it to `path`. On failure, prints why and removes the temporary file. SIGINT, SIGTERM and
 * SIGHUP during the write also remove it before the program dies of the signal. SIGKILL
 * cannot be caught, so it leaves the temporary file when it lands between its creation and
 * the rename. Returns true on success.
 */
bool write_npy(const char *path, const float *data, int rows, int columns);

#endif /* MCA_EMBED_OUTPUT_H */
