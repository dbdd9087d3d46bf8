/* Internal error reporting: the thread-local message behind mca_last_error(). */
#ifndef MCA_ERROR_H
#define MCA_ERROR_H

#include "mca.h"

#if defined(__GNUC__)
#define MCA_PRINTF(fmt_index, first_arg) __attribute__((format(printf, fmt_index, first_arg)))
#else
#define MCA_PRINTF(fmt_index, first_arg)
#endif

/* Stores a printf-style message as the calling thread's last error and returns `status`,
 * so that a guard reads `return mca_error(MCA_ERROR_INVALID_ARGUMENT, "...", value);`. */
int mca_error(int status, const char *format, ...) MCA_PRINTF(2, 3);

/* Clears the calling thread's last error. */
void mca_error_clear(void);

#endif /* MCA_ERROR_H */
