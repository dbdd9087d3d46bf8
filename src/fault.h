/* Fault injection for tests: makes the n-th host allocation or the n-th device buffer
 * creation fail, so that tests can walk every failure point of a call.
 *
 * Every host allocation in src/ goes through mca_malloc, mca_calloc, mca_realloc or
 * mca_strdup, and every clCreateBuffer call through mca_buffer_create. Allocations made
 * inside CLBlast, cJSON, utf8proc, the OpenCL ICD loader and PoCL do not, so these hooks
 * cannot make them fail.
 *
 * The hooks are process-wide and counted with C11 atomics, so threads may allocate while a
 * test has a fault set, but the n-th call is then the n-th across all threads. Unset, each
 * wrapper costs one relaxed atomic load. Not part of the public header. */
#ifndef MCA_FAULT_H
#define MCA_FAULT_H

#include <stdbool.h>
#include <stddef.h>

typedef enum mca_fault_kind {
    MCA_FAULT_HOST_ALLOCATION, /* mca_malloc, mca_calloc, mca_realloc, mca_strdup */
    MCA_FAULT_BUFFER_CREATION, /* clCreateBuffer in mca_buffer_create */
    MCA_FAULT_KIND_COUNT
} mca_fault_kind_t;

/* Starts counting the calls of `kind` from zero and makes call number `n` (from 1) fail.
 * n = 0 only counts. Calls after the n-th succeed again. */
void mca_fault_set(mca_fault_kind_t kind, long n);

/* Stops counting and injecting faults of every kind. */
void mca_fault_clear(void);

/* Number of calls of `kind` since mca_fault_set, including the failed one. */
long mca_fault_calls(mca_fault_kind_t kind);

/* Counts one call of `kind` and returns true when it must fail. */
bool mca_fault_inject(mca_fault_kind_t kind);

/* malloc, calloc, realloc and strdup that fail with errno = ENOMEM when injected. A failed
 * mca_realloc leaves the old block allocated, as realloc does. */
void *mca_malloc(size_t size);
void *mca_calloc(size_t count, size_t size);
void *mca_realloc(void *pointer, size_t size);
char *mca_strdup(const char *text);

#endif /* MCA_FAULT_H */
