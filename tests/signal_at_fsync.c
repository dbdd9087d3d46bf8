/*
 * LD_PRELOAD module for tests/test_cli.sh: sends the process a signal when it calls fsync
 * on a temporary output file of mca-embed, whose name contains ".npy.tmp.". At that moment
 * the file is complete but not yet renamed, which is the widest window in which an
 * interrupted run could leave something behind.
 *
 * MCA_TEST_SIGNAL_AT_FSYNC contains the signal number. When it is unset or 0, the module
 * only passes fsync through.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int fsync(int descriptor)
{
    const char *signal_text = getenv("MCA_TEST_SIGNAL_AT_FSYNC");
    int signal_number = signal_text != NULL ? atoi(signal_text) : 0;
    if (signal_number > 0) {
        char link[64], target[4096];
        snprintf(link, sizeof link, "/proc/self/fd/%d", descriptor);
        ssize_t length = readlink(link, target, sizeof target - 1);
        if (length > 0) {
            target[length] = '\0';
            if (strstr(target, ".npy.tmp.") != NULL)
                raise(signal_number);
        }
    }

    int (*next_fsync)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return next_fsync != NULL ? next_fsync(descriptor) : -1;
}
