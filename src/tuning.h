/*
 * Tuned CLBlast parameters: the per-device file that tools/tune writes and every new context
 * applies.
 *
 * File format (JSON, version 1):
 *
 *   {
 *     "format": "mca-clblast-tuning",
 *     "version": 1,
 *     "device": "pthread-haswell-AMD EPYC",
 *     "kernels": [
 *       {"kernel": "Xgemm", "precision": 32, "parameters": {"GEMMK": 0, "KWG": 32, ...}},
 *       ...
 *     ]
 *   }
 *
 * "kernel" is a kernel name of CLBlast's parameter database (Xgemm, XgemmDirect, Copy, Pad,
 * Transpose, Padtranspose, GemmRoutine, ...). "precision" is CLBlast's precision in bits. Only
 * 32 is applied, and entries of other precisions are skipped. "parameters" must name every
 * parameter that CLBlast's database has for the kernel, as non-negative integers. "device" is
 * CL_DEVICE_NAME of the tuned device. Other fields, such as the tuner's shape and time that
 * tools/tune records, are ignored.
 */
#ifndef MCA_TUNING_H
#define MCA_TUNING_H

#include <stddef.h>

#include "context.h"

/* Environment variable that names the file when the caller gives none. */
#define MCA_TUNING_ENVIRONMENT "MCA_CLBLAST_TUNING"

/* tuning_file value that applies no parameters, so that CLBlast keeps its defaults. */
#define MCA_TUNING_NONE ""

/* Value of the "format" field and the only supported "version". */
#define MCA_TUNING_FORMAT "mca-clblast-tuning"
#define MCA_TUNING_VERSION 1

/* Largest accepted file. Real files hold a few kernels and take about 2 KiB. */
#define MCA_TUNING_MAX_FILE_BYTES (1024 * 1024)

/*
 * Writes the device name as a file-name component. Every run of characters other than ASCII
 * letters, digits, '.', '-' and '_' becomes one '_', or nothing at the start and end of the
 * name. The result is cut to at most 128 bytes and to `size` - 1, and a name with nothing
 * left becomes "unknown-device". For example "pthread-haswell-AMD EPYC" becomes
 * "pthread-haswell-AMD_EPYC". This is the one implementation of the rule, and tools/tune
 * calls it too.
 */
void mca_tuning_sanitize_device_name(const char *device_name, char *sanitized, size_t size);

/*
 * Writes the default file for a device: $XDG_CACHE_HOME/mca/clblast-NAME.json, where NAME is
 * the sanitized device name, or $HOME/.cache/mca/clblast-NAME.json when XDG_CACHE_HOME is
 * unset, empty or relative (as the XDG Base Directory Specification requires). Returns
 * MCA_ERROR_IO when neither variable gives a directory and MCA_ERROR_INVALID_ARGUMENT when
 * the path does not fit in `size` bytes, with the reason in mca_last_error().
 */
int mca_tuning_default_path(const char *device_name, char *path, size_t size);

/*
 * Applies tuned CLBlast parameters to the context's device with CLBlastOverrideParameters.
 * CLBlast keeps them for that device for the rest of the process, so later contexts on the
 * same device use them too. The parameters are then checked with a few GEMMs against a
 * host product. A file that fails the check gives MCA_ERROR_INVALID_CONFIG, and CLBlast's
 * caches are cleared to drop its parameters again, which also drops parameters applied
 * earlier for other devices.
 *
 * `path` MCA_TUNING_NONE ("") applies nothing. NULL reads the file named by
 * MCA_CLBLAST_TUNING, or the device's default file when that variable is unset or empty. A
 * missing default file is not an error: the function logs at MCA_LOG_INFO that GEMMs use
 * CLBlast's defaults and returns MCA_SUCCESS. A file that exists, or was named by `path` or
 * the environment, must be valid. Missing or unreadable gives MCA_ERROR_IO, malformed gives
 * MCA_ERROR_CORRUPT_FILE, and parameters that CLBlast rejects give CLBlast's status. The
 * error message names the file and the kernel entry.
 */
int mca_tuning_apply(mca_context_t *context, const char *path);

#endif /* MCA_TUNING_H */
