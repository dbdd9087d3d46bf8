/*
 * Threads: several threads, each with its own context, run the same attention layers and
 * encoder as one thread does, with the same seeds, and get bit-identical results. The last
 * error message of one thread never shows up in another.
 *
 * cmocka's assertions jump out of the failing test with longjmp, so worker threads only
 * record what they saw and the main thread checks it after joining them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <stdbool.h>
#include <threads.h>
#include <unistd.h>

#include "test_util.h"

#define THREADS 4
#define RUNS 3
#define MESSAGE_SIZE 1024

/* Attention shape: 4 heads of width 16 and sequences of mixed length. */
#define WIDTH 64
#define HEADS 4
#define BATCH 3
#define TOKENS 12
#define COUNT ((size_t)BATCH * TOKENS * WIDTH)

static const int lengths[BATCH] = {12, 7, 3};

/* Every thread waits here until all have arrived, so that their work overlaps. */
typedef struct barrier {
    mtx_t lock;
    cnd_t changed;
    int count, waiting, generation;
} barrier_t;

static void barrier_init(barrier_t *barrier, int count)
{
    assert_int_equal(mtx_init(&barrier->lock, mtx_plain), thrd_success);
    assert_int_equal(cnd_init(&barrier->changed), thrd_success);
    barrier->count = count;
    barrier->waiting = 0;
    barrier->generation = 0;
}

static void barrier_destroy(barrier_t *barrier)
{
    cnd_destroy(&barrier->changed);
    mtx_destroy(&barrier->lock);
}

static void barrier_wait(barrier_t *barrier)
{
    mtx_lock(&barrier->lock);
    int generation = barrier->generation;
    if (++barrier->waiting == barrier->count) {
        barrier->waiting = 0;
        barrier->generation++;
        cnd_broadcast(&barrier->changed);
    } else {
        while (generation == barrier->generation)
            cnd_wait(&barrier->changed, &barrier->lock);
    }
    mtx_unlock(&barrier->lock);
}

/* Creates a context on the default device without a log callback. */
static int create_context(mca_context_t **created)
{
    mca_context_options_t options;
    mca_context_options_init(&options);
    return mca_context_create(&options, created);
}

/* ------------------------------------------------------------------------------------ */
/* Attention                                                                             */
/* ------------------------------------------------------------------------------------ */

/* Results of RUNS passes: run r writes its exact output at outputs[2r] and its MCA output
 * at outputs[2r + 1], each COUNT floats. */
typedef struct attention_results {
    float *outputs;
    uint64_t samples[RUNS];
    double value_flops[RUNS];
} attention_results_t;

/* Runs the fixed sequence of exact and MCA passes on a new layer of `owner`. Run r reads
 * hidden + r * COUNT and uses seed 1000 + r and layer index r. */
static int run_attention(mca_context_t *owner, const mca_attention_weights_t *weights,
                         const float *hidden, attention_results_t *results,
                         char message[MESSAGE_SIZE])
{
    mca_attention_t *layer = NULL;
    int status = mca_attention_create(owner, weights, &layer);
    for (int run = 0; run < RUNS && status == MCA_SUCCESS; run++) {
        const float *input = hidden + (size_t)run * COUNT;
        float *exact = results->outputs + (size_t)(2 * run) * COUNT;
        float *sampled = exact + COUNT;

        mca_forward_options_t options;
        mca_forward_options_init(&options);
        status = mca_attention_forward(layer, &options, BATCH, TOKENS, lengths, input, exact,
                                       NULL);
        if (status != MCA_SUCCESS)
            break;

        options.mode = MCA_MODE_MCA;
        options.alpha = 0.1f;
        options.seed = 1000 + (uint64_t)run;
        options.layer_index = (uint32_t)run;
        mca_forward_stats_t stats;
        mca_forward_stats_reset(&stats);
        status = mca_attention_forward(layer, &options, BATCH, TOKENS, lengths, input, sampled,
                                       &stats);
        results->samples[run] = stats.samples_drawn;
        results->value_flops[run] = stats.value_flops;
    }
    if (status != MCA_SUCCESS)
        snprintf(message, MESSAGE_SIZE, "%s (%d)", mca_last_error(), status);
    mca_attention_destroy(layer);
    return status;
}

typedef struct attention_worker {
    const mca_attention_weights_t *weights;
    const float *hidden;
    barrier_t *start;
    attention_results_t results;
    int status;
    char message[MESSAGE_SIZE];
} attention_worker_t;

static int attention_thread(void *argument)
{
    attention_worker_t *worker = argument;
    mca_context_t *own = NULL;
    barrier_wait(worker->start);
    worker->status = create_context(&own);
    if (worker->status != MCA_SUCCESS) {
        snprintf(worker->message, MESSAGE_SIZE, "%s", mca_last_error());
        return 0;
    }
    worker->status = run_attention(own, worker->weights, worker->hidden, &worker->results,
                                   worker->message);
    mca_context_destroy(own);
    return 0;
}

/* THREADS threads create their contexts at the same moment and run the same passes as the
 * main thread ran alone. Every output must be bit-identical. */
static void attention_threads_match_serial(void **state)
{
    (void)state;
    test_weights_t weights;
    test_weights_random(&weights, WIDTH, HEADS, 301, 0.2f);
    float *hidden = malloc(RUNS * COUNT * sizeof *hidden);
    assert_non_null(hidden);
    test_rng_t rng = {302};
    test_fill(&rng, hidden, RUNS * COUNT, 1.0f);

    attention_results_t serial = {.outputs = malloc(2 * RUNS * COUNT * sizeof(float))};
    assert_non_null(serial.outputs);
    char message[MESSAGE_SIZE] = "";
    int status = run_attention(context, &weights.w, hidden, &serial, message);
    if (status != MCA_SUCCESS)
        fail_msg("single-threaded run failed: %s", message);

    barrier_t start;
    barrier_init(&start, THREADS);
    attention_worker_t workers[THREADS];
    thrd_t threads[THREADS];
    for (int i = 0; i < THREADS; i++) {
        workers[i] = (attention_worker_t){.weights = &weights.w, .hidden = hidden, .start = &start};
        workers[i].results.outputs = malloc(2 * RUNS * COUNT * sizeof(float));
        assert_non_null(workers[i].results.outputs);
        assert_int_equal(thrd_create(&threads[i], attention_thread, &workers[i]), thrd_success);
    }
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(thrd_join(threads[i], NULL), thrd_success);
    barrier_destroy(&start);

    for (int i = 0; i < THREADS; i++) {
        if (workers[i].status != MCA_SUCCESS)
            fail_msg("thread %d failed: %s", i, workers[i].message);
        for (int run = 0; run < RUNS; run++) {
            for (int mode = 0; mode < 2; mode++) {
                size_t offset = (size_t)(2 * run + mode) * COUNT;
                if (memcmp(workers[i].results.outputs + offset, serial.outputs + offset,
                           COUNT * sizeof(float)) != 0)
                    fail_msg("thread %d, run %d, %s mode differs from the single-threaded run",
                             i, run, mode == 0 ? "exact" : "MCA");
            }
            assert_int_equal(workers[i].results.samples[run], serial.samples[run]);
            assert_true(workers[i].results.value_flops[run] == serial.value_flops[run]);
        }
        free(workers[i].results.outputs);
    }
    free(serial.outputs);
    free(hidden);
    free(weights.storage);
}

/* ------------------------------------------------------------------------------------ */
/* Encoder                                                                               */
/* ------------------------------------------------------------------------------------ */

static const char *const sentences[] = {
    "A man is playing a guitar.",
    "The new movie is awesome and everybody loves it.",
    "Two dogs run across a field of grass.",
};

#define SENTENCES ((int)(sizeof sentences / sizeof sentences[0]))

/* Embeddings of every sentence in exact mode, then in MCA mode with seed 77. */
static int run_encoder(mca_context_t *owner, const char *model_dir, float **embeddings,
                       int *width, char message[MESSAGE_SIZE])
{
    mca_encoder_t *encoder = NULL;
    int status = mca_encoder_load(owner, model_dir, &encoder);
    if (status == MCA_SUCCESS) {
        *width = mca_encoder_hidden_size(encoder);
        *embeddings = malloc(2 * (size_t)SENTENCES * (size_t)*width * sizeof **embeddings);
        if (*embeddings == NULL)
            status = MCA_ERROR_OUT_OF_HOST_MEMORY;
    }
    mca_forward_options_t options;
    mca_forward_options_init(&options);
    if (status == MCA_SUCCESS)
        status = mca_encoder_embed(encoder, &options, SENTENCES, sentences, *embeddings, NULL,
                                   NULL);
    options.mode = MCA_MODE_MCA;
    options.alpha = 0.05f;
    options.seed = 77;
    if (status == MCA_SUCCESS)
        status = mca_encoder_embed(encoder, &options, SENTENCES, sentences,
                                   *embeddings + (size_t)SENTENCES * (size_t)*width, NULL, NULL);
    if (status != MCA_SUCCESS)
        snprintf(message, MESSAGE_SIZE, "%s (%d)", mca_last_error(), status);
    mca_encoder_destroy(encoder);
    return status;
}

typedef struct encoder_worker {
    const char *model_dir;
    barrier_t *start;
    float *embeddings;
    int width;
    int status;
    char message[MESSAGE_SIZE];
} encoder_worker_t;

static int encoder_thread(void *argument)
{
    encoder_worker_t *worker = argument;
    mca_context_t *own = NULL;
    barrier_wait(worker->start);
    worker->status = create_context(&own);
    if (worker->status != MCA_SUCCESS) {
        snprintf(worker->message, MESSAGE_SIZE, "%s", mca_last_error());
        return 0;
    }
    worker->status = run_encoder(own, worker->model_dir, &worker->embeddings, &worker->width,
                                 worker->message);
    mca_context_destroy(own);
    return 0;
}

/* Loading parses config.json and the safetensors header in every thread at once, then each
 * thread embeds in exact and MCA mode. Skips without the model files. */
static void encoder_threads_match_serial(void **state)
{
    (void)state;
    const char *model_dir = getenv("MCA_MODEL_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", model_dir != NULL ? model_dir : "");
    if (model_dir == NULL || access(path, R_OK) != 0)
        skip();

    float *serial = NULL;
    int width = 0;
    char message[MESSAGE_SIZE] = "";
    if (run_encoder(context, model_dir, &serial, &width, message) != MCA_SUCCESS)
        fail_msg("single-threaded run failed: %s", message);

    barrier_t start;
    barrier_init(&start, THREADS);
    encoder_worker_t workers[THREADS];
    thrd_t threads[THREADS];
    for (int i = 0; i < THREADS; i++) {
        workers[i] = (encoder_worker_t){.model_dir = model_dir, .start = &start};
        assert_int_equal(thrd_create(&threads[i], encoder_thread, &workers[i]), thrd_success);
    }
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(thrd_join(threads[i], NULL), thrd_success);
    barrier_destroy(&start);

    size_t bytes = 2 * (size_t)SENTENCES * (size_t)width * sizeof *serial;
    for (int i = 0; i < THREADS; i++) {
        if (workers[i].status != MCA_SUCCESS)
            fail_msg("thread %d failed: %s", i, workers[i].message);
        assert_int_equal(workers[i].width, width);
        if (memcmp(workers[i].embeddings, serial, bytes) != 0)
            fail_msg("thread %d embeddings differ from the single-threaded run", i);
        free(workers[i].embeddings);
    }
    free(serial);
}

/* ------------------------------------------------------------------------------------ */
/* Error messages                                                                        */
/* ------------------------------------------------------------------------------------ */

#define ERROR_ROUNDS 200

typedef struct error_worker {
    int index;
    barrier_t *step;
    int wrong_messages; /* rounds in which the thread saw a message other than its own */
    char seen[MESSAGE_SIZE];
} error_worker_t;

/* Each round, every thread fails a call with its own invalid log level, waits until all
 * threads have failed theirs, and then reads its message. A rejected call of another kind
 * must then replace it. */
static int error_thread(void *argument)
{
    error_worker_t *worker = argument;
    char expected[64];
    int level = 100 + worker->index;
    snprintf(expected, sizeof expected, "log level %d is invalid", level);
    for (int round = 0; round < ERROR_ROUNDS; round++) {
        mca_context_options_t options;
        mca_context_options_init(&options);
        options.log_level = (mca_log_level_t)level;
        mca_context_t *created = NULL;
        int status = mca_context_create(&options, &created);
        barrier_wait(worker->step);
        if (status != MCA_ERROR_INVALID_ARGUMENT ||
            strstr(mca_last_error(), expected) == NULL) {
            if (worker->wrong_messages++ == 0)
                snprintf(worker->seen, MESSAGE_SIZE, "%s", mca_last_error());
        }
        barrier_wait(worker->step);

        /* A rejected call of another kind replaces the message in this thread only. */
        status = mca_attention_forward(NULL, NULL, 0, 0, NULL, NULL, NULL, NULL);
        if (status != MCA_ERROR_INVALID_ARGUMENT || strstr(mca_last_error(), expected) != NULL)
            worker->wrong_messages++;
    }
    return 0;
}

static void error_messages_stay_per_thread(void **state)
{
    (void)state;
    barrier_t step;
    barrier_init(&step, THREADS);
    error_worker_t workers[THREADS];
    thrd_t threads[THREADS];
    for (int i = 0; i < THREADS; i++) {
        workers[i] = (error_worker_t){.index = i, .step = &step};
        assert_int_equal(thrd_create(&threads[i], error_thread, &workers[i]), thrd_success);
    }
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(thrd_join(threads[i], NULL), thrd_success);
    barrier_destroy(&step);

    for (int i = 0; i < THREADS; i++) {
        if (workers[i].wrong_messages != 0)
            fail_msg("thread %d saw %d wrong messages, first \"%s\"", i,
                     workers[i].wrong_messages, workers[i].seen);
    }
    /* The main thread made no failing call, so its message is still empty. */
    assert_string_equal(mca_last_error(), "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(error_messages_stay_per_thread),
        cmocka_unit_test(attention_threads_match_serial),
        cmocka_unit_test(encoder_threads_match_serial),
    };
    return cmocka_run_group_tests(tests, test_group_setup, test_group_teardown);
}
