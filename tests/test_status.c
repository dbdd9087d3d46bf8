/* Status names, the last-error message, device selection and the log callback. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_util.h"

static void status_names(void **state)
{
    (void)state;
    assert_string_equal(mca_status_string(MCA_SUCCESS), "success");
    assert_string_equal(mca_status_string(MCA_ERROR_CORRUPT_FILE), "corrupt or truncated file");
    assert_string_equal(mca_status_string(MCA_ERROR_INVALID_TEXT), "invalid UTF-8 text");
    assert_string_equal(mca_status_string(CL_OUT_OF_RESOURCES), "CL_OUT_OF_RESOURCES");
    assert_string_equal(mca_status_string(-1024), "CLBlast: routine not implemented");
    assert_string_equal(mca_status_string(-2046), "CLBlast: not enough local memory on the device");
    assert_string_equal(mca_status_string(123456), "unknown status");
    /* Every library code has its own name. */
    for (int code = MCA_ERROR_INVALID_ARGUMENT; code <= MCA_ERROR_INVALID_TEXT; code++)
        assert_string_not_equal(mca_status_string(code), "unknown status");
}

static void no_such_platform(void **state)
{
    (void)state;
    mca_context_options_t options;
    mca_context_options_init(&options);
    options.platform_index = 99;
    mca_context_t *context = NULL;
    assert_int_equal(mca_context_create(&options, &context), MCA_ERROR_NO_DEVICE);
    assert_null(context);
    assert_non_null(strstr(mca_last_error(), "platform index 99"));
    assert_non_null(strstr(mca_last_error(), "clinfo -l"));

    options.platform_index = 0;
    options.device_index = 99;
    assert_int_equal(mca_context_create(&options, &context), MCA_ERROR_NO_DEVICE);
    assert_non_null(strstr(mca_last_error(), "device index 99"));
}

static void device_from_environment(void **state)
{
    (void)state;
    mca_context_t *context = NULL;
    setenv("MCA_DEVICE", "7", 1);
    assert_int_equal(mca_context_create(NULL, &context), MCA_ERROR_NO_DEVICE);
    assert_non_null(strstr(mca_last_error(), "device index 7"));

    setenv("MCA_DEVICE", "first", 1);
    assert_int_equal(mca_context_create(NULL, &context), MCA_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(mca_last_error(), "MCA_DEVICE='first'"));
    unsetenv("MCA_DEVICE");

    setenv("MCA_DEVICE", "2000", 1);
    assert_int_equal(mca_context_create(NULL, &context), MCA_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(mca_last_error(), "MCA_DEVICE='2000'"));
    unsetenv("MCA_DEVICE");

    setenv("MCA_PLATFORM", "-3", 1);
    assert_int_equal(mca_context_create(NULL, &context), MCA_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(mca_last_error(), "MCA_PLATFORM='-3'"));

    /* A valid number past the last platform, read because the option is negative. */
    setenv("MCA_PLATFORM", "5", 1);
    mca_context_options_t options;
    mca_context_options_init(&options);
    options.platform_index = -7;
    assert_int_equal(mca_context_create(&options, &context), MCA_ERROR_NO_DEVICE);
    assert_non_null(strstr(mca_last_error(), "platform index 5 is out of range"));
    assert_non_null(strstr(mca_last_error(), "MCA_PLATFORM"));

    /* An explicit index in the options wins over the environment. */
    options.platform_index = 0;
    options.device_index = 0;
    assert_int_equal(mca_context_create(&options, &context), MCA_SUCCESS);
    mca_context_destroy(context);
    context = NULL;
    unsetenv("MCA_PLATFORM");
    assert_null(context);

    assert_int_equal(mca_context_create(NULL, &context), MCA_SUCCESS);
    assert_string_not_equal(mca_context_device_name(context), "");
    mca_context_destroy(context);
}

typedef struct log_record {
    int messages;
    int saw_device;
} log_record_t;

static void record_log(mca_log_level_t level, const char *message, void *user_data)
{
    log_record_t *record = user_data;
    record->messages++;
    if (level == MCA_LOG_INFO && strstr(message, "using OpenCL device") != NULL)
        record->saw_device = 1;
}

static void log_callback_and_queue(void **state)
{
    (void)state;
    log_record_t record = {0, 0};
    mca_context_options_t options;
    mca_context_options_init(&options);
    options.log = record_log;
    options.log_user_data = &record;
    mca_context_t *context = NULL;
    assert_int_equal(mca_context_create(&options, &context), MCA_SUCCESS);
    assert_int_equal(record.saw_device, 1);

    /* A second context on the first one's queue shares its device. */
    mca_context_t *borrowed = NULL;
    assert_int_equal(mca_context_create_from_queue(mca_context_queue(context), &options,
                                                   &borrowed),
                     MCA_SUCCESS);
    assert_string_equal(mca_context_device_name(borrowed), mca_context_device_name(context));
    assert_ptr_equal(mca_context_queue(borrowed), mca_context_queue(context));
    mca_context_destroy(borrowed);
    mca_context_destroy(context);

    options.log_level = (mca_log_level_t)9;
    assert_int_equal(mca_context_create(&options, &context), MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_context_create_from_queue(NULL, NULL, &context),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_context_create(NULL, NULL), MCA_ERROR_INVALID_ARGUMENT);
    mca_context_destroy(NULL);
}

static void stats_accumulate(void **state)
{
    (void)state;
    mca_forward_stats_t total, one;
    mca_forward_stats_reset(&total);
    mca_forward_stats_reset(&one);
    one.value_flops = 10.0;
    one.exact_value_flops = 40.0;
    one.paper_ratio_sum = 3.0;
    one.paper_ratio_count = 6;
    one.error_bound_sum = 2.0;
    one.error_bound_rows = 4;
    one.error_bound_max = 0.9;
    one.histogram[3] = 5;
    mca_forward_stats_add(&total, &one);
    one.value_flops = 30.0;
    one.error_bound_max = 0.4;
    mca_forward_stats_add(&total, &one);
    assert_true(total.flops_fraction == 0.5);
    assert_true(total.flops_fraction_paper == 0.5);
    assert_true(total.error_bound_mean == 0.5);
    assert_true(total.error_bound_max == 0.9);
    assert_int_equal(total.histogram[3], 10);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(status_names),
        cmocka_unit_test(no_such_platform),
        cmocka_unit_test(device_from_environment),
        cmocka_unit_test(log_callback_and_queue),
        cmocka_unit_test(stats_accumulate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
