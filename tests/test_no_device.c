/* Context creation on a machine without OpenCL platforms. meson runs this test with
 * OCL_ICD_VENDORS pointing at an empty directory, so the ICD loader finds no platform. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "mca.h"

static void no_platform_gives_no_device(void **state)
{
    (void)state;
    mca_context_t *context = NULL;
    assert_int_equal(mca_context_create(NULL, &context), MCA_ERROR_NO_DEVICE);
    assert_null(context);
    assert_non_null(strstr(mca_last_error(), "no OpenCL platform found"));
    assert_non_null(strstr(mca_last_error(), "pocl-opencl-icd"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(no_platform_gives_no_device),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
