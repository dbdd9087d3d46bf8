/* Fault injection for tests and the allocation wrappers that check it. */
#include "fault.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* Bit k is set while faults of kind k are counted. Set after the target and the count, with
 * release order, so that a wrapper that reads the bit set also reads both. */
static atomic_uint armed_kinds;
static atomic_long targets[MCA_FAULT_KIND_COUNT];
static atomic_long calls[MCA_FAULT_KIND_COUNT];

void mca_fault_set(mca_fault_kind_t kind, long n)
{
    if ((unsigned)kind >= MCA_FAULT_KIND_COUNT)
        return;
    atomic_fetch_and_explicit(&armed_kinds, ~(1u << kind), memory_order_relaxed);
    atomic_store_explicit(&targets[kind], n, memory_order_relaxed);
    atomic_store_explicit(&calls[kind], 0, memory_order_relaxed);
    atomic_fetch_or_explicit(&armed_kinds, 1u << kind, memory_order_release);
}

void mca_fault_clear(void)
{
    atomic_store_explicit(&armed_kinds, 0, memory_order_release);
}

long mca_fault_calls(mca_fault_kind_t kind)
{
    if ((unsigned)kind >= MCA_FAULT_KIND_COUNT)
        return 0;
    return atomic_load_explicit(&calls[kind], memory_order_relaxed);
}

bool mca_fault_inject(mca_fault_kind_t kind)
{
    /* The only cost when no test has set a fault. */
    unsigned armed = atomic_load_explicit(&armed_kinds, memory_order_relaxed);
    if ((armed & (1u << kind)) == 0)
        return false;
    atomic_thread_fence(memory_order_acquire);
    long call = atomic_fetch_add_explicit(&calls[kind], 1, memory_order_relaxed) + 1;
    return call == atomic_load_explicit(&targets[kind], memory_order_relaxed);
}

void *mca_malloc(size_t size)
{
    if (mca_fault_inject(MCA_FAULT_HOST_ALLOCATION)) {
        errno = ENOMEM;
        return NULL;
    }
    return malloc(size);
}

void *mca_calloc(size_t count, size_t size)
{
    if (mca_fault_inject(MCA_FAULT_HOST_ALLOCATION)) {
        errno = ENOMEM;
        return NULL;
    }
    return calloc(count, size);
}

void *mca_realloc(void *pointer, size_t size)
{
    if (mca_fault_inject(MCA_FAULT_HOST_ALLOCATION)) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(pointer, size);
}

char *mca_strdup(const char *text)
{
    if (mca_fault_inject(MCA_FAULT_HOST_ALLOCATION)) {
        errno = ENOMEM;
        return NULL;
    }
    return strdup(text);
}
