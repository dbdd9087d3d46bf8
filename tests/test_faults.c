/* Fault injection: every host allocation and every device buffer creation of context
 * creation, layer creation, forward passes and the host-only file readers fails in turn.
 * Each failure must return a clean status with a message, leave the objects destroyable
 * and, for a forward pass, the layer usable. The sanitizer build checks that no failure
 * path leaks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <unistd.h>

#include "config.h"
#include "fault.h"
#include "safetensors.h"
#include "test_util.h"
#include "tokenizer.h"

/* Far above the largest walk, so that a call whose allocations never end fails the test
 * instead of hanging it. */
#define MAX_FAULT_POINTS 1000

#define HIDDEN 64
#define HEADS 4
#define BATCH 2
#define TOKENS 16

static const int lengths[BATCH] = {16, 11};

static const char *const kind_names[MCA_FAULT_KIND_COUNT] = {"host allocation",
                                                             "buffer creation"};

/* One call under test. `prepare` and `check` run with no fault set, `call` with call n of
 * the walked kind failing. `check` receives the status of `call`. */
typedef struct fault_walk {
    const char *name;
    void *state;
    void (*prepare)(void *state);
    int (*call)(void *state);
    void (*check)(void *state, int status);
} fault_walk_t;

/* Makes call n = 1, 2, ... of `kind` fail until the call under test makes fewer than n such
 * calls, and returns the number of failure points walked. */
static long walk_faults(const fault_walk_t *walk, mca_fault_kind_t kind)
{
    for (long n = 1; n <= MAX_FAULT_POINTS; n++) {
        walk->prepare(walk->state);
        mca_fault_set(kind, n);
        int status = walk->call(walk->state);
        long calls = mca_fault_calls(kind);
        mca_fault_clear();

        if (calls < n) {
            if (status != MCA_SUCCESS)
                fprintf(stderr, "%s without a fault: %s: %s\n", walk->name,
                        mca_status_string(status), mca_last_error());
            assert_int_equal(status, MCA_SUCCESS);
            walk->check(walk->state, status);
            printf("%s: %ld %s points walked\n", walk->name, n - 1, kind_names[kind]);
            return n - 1;
        }

        printf("%s, %s %ld: %s: %s\n", walk->name, kind_names[kind], n,
               mca_status_string(status), mca_last_error());
        if (status == MCA_SUCCESS)
            fprintf(stderr, "%s returned success although %s %ld failed\n", walk->name,
                    kind_names[kind], n);
        assert_int_not_equal(status, MCA_SUCCESS);
        assert_true(mca_last_error()[0] != '\0');
        walk->check(walk->state, status);
    }
    fail_msg("%s made more than %d %s calls", walk->name, MAX_FAULT_POINTS, kind_names[kind]);
    return -1;
}

static void walk_both_kinds(const fault_walk_t *walk, long *host_points, long *buffer_points)
{
    *host_points = walk_faults(walk, MCA_FAULT_HOST_ALLOCATION);
    *buffer_points = walk_faults(walk, MCA_FAULT_BUFFER_CREATION);
}

static void prepare_nothing(void *state)
{
    (void)state;
}

/* ------------------------------------------------------------------------------------ */
/* Context creation                                                                      */
/* ------------------------------------------------------------------------------------ */

typedef struct context_state {
    mca_context_options_t options;
    mca_context_t *created;
} context_state_t;

static int create_context(void *state)
{
    context_state_t *s = state;
    s->created = NULL;
    return mca_context_create(&s->options, &s->created);
}

static int create_context_from_queue(void *state)
{
    context_state_t *s = state;
    s->created = NULL;
    return mca_context_create_from_queue(mca_context_queue(context), &s->options, &s->created);
}

static void check_context(void *state, int status)
{
    context_state_t *s = state;
    if (status != MCA_SUCCESS) {
        assert_null(s->created);
        return;
    }
    assert_non_null(s->created);
    mca_context_destroy(s->created);
    s->created = NULL;
}

static void context_create_faults(void **state)
{
    (void)state;
    context_state_t s;
    mca_context_options_init(&s.options);
    s.options.log = test_log;
    s.options.log_level = MCA_LOG_WARNING;
    s.options.tuning_file = ""; /* CLBlast's defaults, whatever the machine has */
    long host = 0, buffers = 0;

    fault_walk_t walk = {"mca_context_create", &s, prepare_nothing, create_context,
                         check_context};
    walk_both_kinds(&walk, &host, &buffers);
    assert_true(host >= 1);

    fault_walk_t from_queue = {"mca_context_create_from_queue", &s, prepare_nothing,
                               create_context_from_queue, check_context};
    walk_both_kinds(&from_queue, &host, &buffers);
    assert_true(host >= 1);
}

/* Tuned parameters for the test device: Xgemm and XgemmDirect parameters that
 * clblast_tuner_xgemm and clblast_tuner_xgemm_direct of CLBlast 1.5.3 found on PoCL 3.1, the
 * same file that the tuning tests apply. */
static const char tuning_text[] =
    "{\"format\": \"mca-clblast-tuning\", \"version\": 1, \"device\": \"%s\", \"kernels\": ["
    "{\"kernel\": \"Xgemm\", \"precision\": 32, \"parameters\": {"
    "\"GEMMK\": 0, \"KREG\": 1, \"KWG\": 32, \"KWI\": 2, \"MDIMA\": 8, \"MDIMC\": 16, "
    "\"MWG\": 128, \"NDIMB\": 8, \"NDIMC\": 8, \"NWG\": 64, \"SA\": 0, \"SB\": 0, "
    "\"STRM\": 1, \"STRN\": 1, \"VWM\": 4, \"VWN\": 4}},"
    "{\"kernel\": \"XgemmDirect\", \"precision\": 32, \"parameters\": {"
    "\"KWID\": 2, \"MDIMAD\": 8, \"MDIMCD\": 32, \"NDIMBD\": 32, \"NDIMCD\": 8, "
    "\"PADA\": 1, \"PADB\": 1, \"VWMD\": 2, \"VWND\": 2, \"WGD\": 64}},"
    "{\"kernel\": \"GemmRoutine\", \"precision\": 32, "
    "\"parameters\": {\"XGEMM_MIN_INDIRECT_SIZE\": 40}}]}";

/* Context creation that reads, applies and checks a file of tuned CLBlast parameters, which
 * adds the file's parse and the GEMM check to the walk. Runs last, because the parameters
 * stay installed for the device in the whole process. */
static void context_create_tuned_faults(void **state)
{
    (void)state;
    char directory[] = "/tmp/mca-test-faults-XXXXXX";
    assert_non_null(mkdtemp(directory));
    char path[64];
    snprintf(path, sizeof path, "%s/tuning.json", directory);
    FILE *file = fopen(path, "w");
    assert_non_null(file);
    assert_true(fprintf(file, tuning_text, mca_context_device_name(context)) > 0);
    assert_int_equal(fclose(file), 0);

    context_state_t s;
    mca_context_options_init(&s.options);
    s.options.log = test_log;
    s.options.log_level = MCA_LOG_ERROR; /* the file names the device, so no warning */
    s.options.tuning_file = path;
    long host = 0, buffers = 0;
    fault_walk_t walk = {"mca_context_create with tuned parameters", &s, prepare_nothing,
                         create_context, check_context};
    walk_both_kinds(&walk, &host, &buffers);
    assert_true(host >= 1);
    assert_true(buffers >= 1);

    assert_int_equal(unlink(path), 0);
    assert_int_equal(rmdir(directory), 0);
}

/* ------------------------------------------------------------------------------------ */
/* Layer creation                                                                        */
/* ------------------------------------------------------------------------------------ */

typedef struct layer_state {
    test_weights_t weights;
    mca_attention_t *layer;
} layer_state_t;

static int create_layer(void *state)
{
    layer_state_t *s = state;
    s->layer = NULL;
    return mca_attention_create(context, &s->weights.w, &s->layer);
}

static void check_layer(void *state, int status)
{
    layer_state_t *s = state;
    if (status != MCA_SUCCESS) {
        assert_null(s->layer);
        return;
    }
    assert_non_null(s->layer);
    mca_attention_destroy(s->layer);
    s->layer = NULL;
}

static void layer_create_faults(void **state)
{
    (void)state;
    layer_state_t s = {.layer = NULL};
    test_weights_random(&s.weights, HIDDEN, HEADS, 51, 0.2f);
    long host = 0, buffers = 0;

    fault_walk_t walk = {"mca_attention_create", &s, prepare_nothing, create_layer, check_layer};
    walk_both_kinds(&walk, &host, &buffers);
    assert_true(host >= 1);
    assert_true(buffers >= 1);
    free(s.weights.storage);
}

/* ------------------------------------------------------------------------------------ */
/* Forward pass                                                                          */
/* ------------------------------------------------------------------------------------ */

typedef struct forward_state {
    test_weights_t weights;
    mca_forward_options_t options;
    bool with_stats;
    size_t count;      /* floats in hidden and output */
    float *hidden;
    float *output;
    float *expected;   /* output of a layer that never saw a fault */
    mca_attention_t *layer;
    mca_forward_stats_t stats;
} forward_state_t;

/* Bit pattern written to the output before a faulted call: a host forward that fails must
 * leave it unchanged. */
static const uint32_t untouched_bits = 0x7fc0dead;

static int run_forward(forward_state_t *s, float *output)
{
    return mca_attention_forward(s->layer, &s->options, BATCH, TOKENS, lengths, s->hidden,
                                 output, s->with_stats ? &s->stats : NULL);
}

/* A fresh layer for each point, because a layer keeps its workspace after a forward pass
 * and would skip the allocations that the walk must reach. */
static void prepare_forward(void *state)
{
    forward_state_t *s = state;
    s->layer = NULL;
    assert_int_equal(mca_attention_create(context, &s->weights.w, &s->layer), MCA_SUCCESS);
    for (size_t i = 0; i < s->count; i++)
        memcpy(&s->output[i], &untouched_bits, sizeof untouched_bits);
    mca_forward_stats_reset(&s->stats);
}

static int call_forward(void *state)
{
    return run_forward(state, ((forward_state_t *)state)->output);
}

static void check_forward(void *state, int status)
{
    forward_state_t *s = state;
    if (status != MCA_SUCCESS) {
        for (size_t i = 0; i < s->count; i++)
            assert_memory_equal(&s->output[i], &untouched_bits, sizeof untouched_bits);
        mca_forward_stats_t zero;
        mca_forward_stats_reset(&zero);
        assert_memory_equal(&s->stats, &zero, sizeof zero);

        /* The same layer, with the fault cleared, must give the result of a clean layer. */
        int retry = run_forward(s, s->output);
        if (retry != MCA_SUCCESS)
            fprintf(stderr, "forward after a fault: %s: %s\n", mca_status_string(retry),
                    mca_last_error());
        assert_int_equal(retry, MCA_SUCCESS);
    }
    assert_memory_equal(s->output, s->expected, s->count * sizeof *s->output);
    mca_attention_destroy(s->layer);
    s->layer = NULL;
}

static void check_forward_faults(const char *name, mca_mode_t mode, bool with_stats)
{
    forward_state_t s = {.with_stats = with_stats, .layer = NULL};
    test_weights_random(&s.weights, HIDDEN, HEADS, 61, 0.5f);
    mca_forward_options_init(&s.options);
    s.options.mode = mode;
    /* With alpha 0.5 and D = 64, a key is computed exactly when its largest attention is at
     * least 4 / n_b and sampled otherwise. Weights of scale 0.5 give peaked enough attention
     * for both value paths to run, which the reference run checks. */
    s.options.alpha = 0.5f;
    s.options.seed = 62;
    s.count = (size_t)BATCH * TOKENS * HIDDEN;
    s.hidden = malloc(s.count * sizeof *s.hidden);
    s.output = malloc(s.count * sizeof *s.output);
    s.expected = malloc(s.count * sizeof *s.expected);
    test_rng_t rng = {63};
    test_fill(&rng, s.hidden, s.count, 1.0f);

    /* Reference output of a layer that never saw a fault. */
    prepare_forward(&s);
    mca_forward_stats_t stats;
    mca_forward_stats_reset(&stats);
    assert_int_equal(mca_attention_forward(s.layer, &s.options, BATCH, TOKENS, lengths, s.hidden,
                                           s.expected, &stats),
                     MCA_SUCCESS);
    if (mode == MCA_MODE_MCA) {
        assert_true(stats.samples_drawn > 0);
        assert_true(stats.histogram[MCA_HISTOGRAM_BINS - 1] > 0);
    }
    mca_attention_destroy(s.layer);
    s.layer = NULL;

    fault_walk_t walk = {name, &s, prepare_forward, call_forward, check_forward};
    long host = 0, buffers = 0;
    walk_both_kinds(&walk, &host, &buffers);
    /* A walk of zero points would mean the hooks are not reached. */
    assert_true(host >= 1);
    assert_true(buffers >= 1);

    free(s.weights.storage);
    free(s.hidden);
    free(s.output);
    free(s.expected);
}

static void forward_exact_faults(void **state)
{
    (void)state;
    check_forward_faults("forward exact", MCA_MODE_EXACT, false);
}

static void forward_exact_stats_faults(void **state)
{
    (void)state;
    check_forward_faults("forward exact with stats", MCA_MODE_EXACT, true);
}

static void forward_mca_faults(void **state)
{
    (void)state;
    check_forward_faults("forward MCA", MCA_MODE_MCA, false);
}

static void forward_mca_stats_faults(void **state)
{
    (void)state;
    check_forward_faults("forward MCA with stats", MCA_MODE_MCA, true);
}

/* ------------------------------------------------------------------------------------ */
/* Host-only readers                                                                     */
/* ------------------------------------------------------------------------------------ */

typedef struct reader_state {
    const unsigned char *bytes;
    size_t size;
    char vocab_path[64];
    const char *text;
    int32_t ids[512];
    int count;
} reader_state_t;

/* Opens the in-memory safetensors file and reads both of its tensors. */
static int read_safetensors(void *state)
{
    reader_state_t *s = state;
    mca_safetensors_t *file = NULL;
    int status = mca_safetensors_open_memory(s->bytes, s->size, "faults.safetensors", &file);
    if (status != MCA_SUCCESS) {
        assert_null(file);
        return status;
    }
    const int64_t matrix[2] = {2, 3};
    const int64_t vector[1] = {4};
    float values[6];
    status = mca_safetensors_read_f32(file, "matrix", 2, matrix, values);
    if (status == MCA_SUCCESS)
        status = mca_safetensors_read_f32(file, "vector", 1, vector, values);
    mca_safetensors_close(file);
    return status;
}

static int parse_config(void *state)
{
    reader_state_t *s = state;
    mca_bert_config_t config;
    return mca_bert_config_parse((const char *)s->bytes, s->size, "faults/config.json",
                                 &config);
}

/* Loads the vocab and encodes text with more pieces than the first piece array holds. */
static int load_and_encode(void *state)
{
    reader_state_t *s = state;
    mca_tokenizer_t *tokenizer = NULL;
    int status = mca_tokenizer_load(s->vocab_path, &tokenizer);
    if (status != MCA_SUCCESS) {
        assert_null(tokenizer);
        return status;
    }
    status = mca_tokenizer_encode(tokenizer, s->text, strlen(s->text), 512, s->ids, &s->count,
                                  NULL);
    mca_tokenizer_destroy(tokenizer);
    return status;
}

static void check_nothing(void *state, int status)
{
    (void)state;
    (void)status;
}

static void readers_faults(void **state)
{
    (void)state;
    reader_state_t s = {.bytes = NULL};
    long host = 0, buffers = 0;

    /* A safetensors file of an F32 matrix and an F16 vector: an 8-byte little-endian header
     * length, the JSON header, then 24 + 8 bytes of data. */
    static const char header[] =
        "{\"matrix\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
        "\"vector\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[24,32]},"
        "\"__metadata__\":{\"format\":\"pt\"}}";
    unsigned char safetensors[8 + sizeof header + 32] = {0};
    size_t header_length = sizeof header - 1;
    for (int i = 0; i < 8; i++)
        safetensors[i] = (unsigned char)(header_length >> (8 * i));
    memcpy(safetensors + 8, header, header_length);
    s.bytes = safetensors;
    s.size = 8 + header_length + 32;
    fault_walk_t tensors = {"mca_safetensors_open_memory and read", &s, prepare_nothing,
                            read_safetensors, check_nothing};
    walk_both_kinds(&tensors, &host, &buffers);
    assert_true(host >= 1);
    assert_int_equal(buffers, 0);

    static const char config[] =
        "{\"hidden_act\": \"gelu\", \"hidden_size\": 64, \"intermediate_size\": 128, "
        "\"layer_norm_eps\": 1e-12, \"max_position_embeddings\": 64, "
        "\"num_attention_heads\": 4, \"num_hidden_layers\": 2, \"pad_token_id\": 0, "
        "\"position_embedding_type\": \"absolute\", \"type_vocab_size\": 2, "
        "\"vocab_size\": 100}";
    s.bytes = (const unsigned char *)config;
    s.size = sizeof config - 1;
    fault_walk_t config_walk = {"mca_bert_config_parse", &s, prepare_nothing, parse_config,
                                check_nothing};
    walk_both_kinds(&config_walk, &host, &buffers);
    assert_int_equal(buffers, 0);

    /* A vocab of more than 64 KiB, the first read buffer, and text of more than 64 pieces,
     * the first piece array, so that both grow. */
    char directory[] = "/tmp/mca-test-faults-XXXXXX";
    assert_non_null(mkdtemp(directory));
    snprintf(s.vocab_path, sizeof s.vocab_path, "%s/vocab.txt", directory);
    FILE *file = fopen(s.vocab_path, "w");
    assert_non_null(file);
    fputs("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nword\n##s\n", file);
    for (int i = 0; i < 10000; i++)
        fprintf(file, "filler%05d\n", i);
    assert_int_equal(fclose(file), 0);
    char text[1024] = "";
    for (int i = 0; i < 100; i++)
        strcat(text, "words ");
    s.text = text;
    fault_walk_t tokenizer = {"mca_tokenizer_load and encode", &s, prepare_nothing,
                              load_and_encode, check_nothing};
    walk_both_kinds(&tokenizer, &host, &buffers);
    assert_true(host >= 4);
    assert_int_equal(buffers, 0);
    assert_int_equal(s.count, 202); /* [CLS], 100 times word ##s, [SEP] */

    assert_int_equal(unlink(s.vocab_path), 0);
    assert_int_equal(rmdir(directory), 0);
}

/* The hook itself: the n-th call fails, others succeed, and a cleared hook counts nothing. */
static void fault_hook_counts_calls(void **state)
{
    (void)state;
    mca_fault_set(MCA_FAULT_HOST_ALLOCATION, 2);
    void *first = mca_malloc(16);
    void *second = mca_calloc(1, 16);
    void *third = mca_realloc(NULL, 16);
    assert_int_equal(mca_fault_calls(MCA_FAULT_HOST_ALLOCATION), 3);
    assert_non_null(first);
    assert_null(second);
    assert_non_null(third);
    mca_fault_clear();
    char *copy = mca_strdup("text");
    assert_non_null(copy);
    assert_int_equal(mca_fault_calls(MCA_FAULT_HOST_ALLOCATION), 3);
    free(first);
    free(third);
    free(copy);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fault_hook_counts_calls),
        cmocka_unit_test(context_create_faults),
        cmocka_unit_test(layer_create_faults),
        cmocka_unit_test(forward_exact_faults),
        cmocka_unit_test(forward_exact_stats_faults),
        cmocka_unit_test(forward_mca_faults),
        cmocka_unit_test(forward_mca_stats_faults),
        cmocka_unit_test(readers_faults),
        cmocka_unit_test(context_create_tuned_faults),
    };
    return cmocka_run_group_tests(tests, test_group_setup, test_group_teardown);
}
