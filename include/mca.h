/*
 * mca.h: Monte-Carlo Attention on OpenCL.
 *
 * Monte-Carlo Attention (Kim and Ko, "Fast Monte-Carlo Approximation of the Attention
 * Mechanism", AAAI 2022) computes the attention probabilities exactly and approximates only
 * the value projection V = X W_V^T + b_V. Each key token j of head h gets a sample count
 * r[h,j] that grows with the largest attention any query gives it. The token's value row is
 * then estimated from r columns of W_V drawn with probability proportional to their squared
 * norms, or computed exactly when r reaches the model width D.
 *
 * Limitations:
 *   - float32 only; hidden states and weights are converted to float32 at load time.
 *   - Self-attention of an encoder only: no causal mask and no cross-attention.
 *   - Only the value projection is approximated; Q, K, the softmax, A*V and every dense
 *     layer are exact (CLBlast GEMMs or plain kernels).
 *   - Head width d = D / H must be at most MCA_MAX_HEAD_WIDTH.
 *   - A context and every object created from it may be used by one thread at a time.
 *     Separate contexts may run in separate threads; the library serializes its CLBlast
 *     calls internally, because CLBlast 1.5 has a race in its kernel cache.
 *
 * Conventions:
 *   - Every fallible function returns mca_status_t; MCA_SUCCESS is 0. OpenCL and CLBlast
 *     codes pass through unchanged (both are negative); the library's own codes are
 *     positive and listed below. mca_status_string() names every code, and
 *     mca_last_error() returns a sentence about the last failure in the calling thread
 *     that names the offending value.
 *   - The library never prints, exits or aborts. Messages go to the log callback of the
 *     context, if one is set.
 *   - Output arguments are written only on success.
 *   - Matrices are row-major float32 with no padding between rows unless a leading
 *     dimension is given. Weights use the (out, in) layout of PyTorch's Linear layer.
 *   - "Borrowed" pointers and handles stay owned by the caller and must outlive the call;
 *     "owned" ones are released by the matching destroy function.
 */
#ifndef MCA_H
#define MCA_H

#include <stddef.h>
#include <stdint.h>

#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MCA_VERSION_MAJOR 0
#define MCA_VERSION_MINOR 1

/* Largest supported head width d = D / H. The sparse accumulation keeps one head's row in
 * private memory, so the bound is a compile-time constant of the kernels. */
#define MCA_MAX_HEAD_WIDTH 256

/* ------------------------------------------------------------------------------------ */
/* Status codes                                                                          */
/* ------------------------------------------------------------------------------------ */

typedef enum mca_status {
    MCA_SUCCESS = 0,
    /* Negative values are OpenCL (-1 .. -72) and CLBlast (-1024 .. -2050) status codes. */
    MCA_ERROR_INVALID_ARGUMENT = 1000, /* NULL pointer, size out of range, bad option */
    MCA_ERROR_OUT_OF_HOST_MEMORY = 1001,
    MCA_ERROR_NO_DEVICE = 1002,        /* no OpenCL platform or device at that index */
    MCA_ERROR_BUILD_FAILED = 1003,     /* an OpenCL program failed to compile */
    MCA_ERROR_IO = 1004,               /* a file could not be opened, read or written */
    MCA_ERROR_CORRUPT_FILE = 1005,     /* malformed or truncated model or data file */
    MCA_ERROR_MISSING_TENSOR = 1006,   /* a tensor the model needs is not in the file */
    MCA_ERROR_UNSUPPORTED_DTYPE = 1007,
    MCA_ERROR_SHAPE_MISMATCH = 1008,
    MCA_ERROR_INVALID_CONFIG = 1009,   /* config.json has a missing or invalid field */
    MCA_ERROR_INPUT_TOO_LONG = 1010,   /* more tokens than the model or device allows */
    MCA_ERROR_NOT_IMPLEMENTED = 1011,
    MCA_ERROR_DEVICE_LIMIT = 1012,     /* the device cannot run this request */
    MCA_ERROR_INVALID_TEXT = 1013      /* input text is not valid UTF-8 */
} mca_status_t;

/* Returns a static, human-readable name for any status: the library's, OpenCL's or
 * CLBlast's. Unknown codes give "unknown status". */
const char *mca_status_string(int status);

/* Returns a sentence describing the last error raised in the calling thread, naming the
 * value that caused it, or "" if none was raised. Valid until the next library call in
 * the same thread. */
const char *mca_last_error(void);

/* ------------------------------------------------------------------------------------ */
/* Context                                                                               */
/* ------------------------------------------------------------------------------------ */

/*
 * Threads: a context and every object created from it (attention layers, encoders) are used
 * by one thread at a time. They share the context's command queue, its kernel objects, whose
 * arguments each call sets, and workspace buffers that each call reuses. Different contexts
 * may run at once in different threads, also on the same device. The library serializes its
 * CLBlast calls and JSON parsing with process-wide locks, so threads wait for each other
 * there. Its only other process-wide state is the tuned CLBlast parameters of each device
 * (see tuning_file). mca_last_error() and the log callback belong to the calling thread.
 */

typedef enum mca_log_level {
    MCA_LOG_DEBUG = 0,
    MCA_LOG_INFO = 1,
    MCA_LOG_WARNING = 2,
    MCA_LOG_ERROR = 3
} mca_log_level_t;

/* Receives every message at or above the context's log level. `message` is valid only
 * during the call. Called from the thread that made the library call. */
typedef void (*mca_log_fn)(mca_log_level_t level, const char *message, void *user_data);

typedef struct mca_context_options {
    /* Platform and device index. A negative value reads MCA_PLATFORM or MCA_DEVICE from the
     * environment and falls back to 0. Ignored by mca_context_create_from_queue. */
    int platform_index;
    int device_index;
    mca_log_fn log;           /* may be NULL */
    void *log_user_data;      /* borrowed, passed to `log` */
    mca_log_level_t log_level;
    /* File of tuned CLBlast parameters. NULL reads MCA_CLBLAST_TUNING, then the per-device
     * default written by tools/tune. An empty string applies none. CLBlast keeps tuned
     * parameters per device for the whole process, so they reach every context there. */
    const char *tuning_file;
} mca_context_options_t;

typedef struct mca_context mca_context_t;

/* Fills *options with the defaults: indices from the environment, no log callback, level
 * MCA_LOG_INFO. */
void mca_context_options_init(mca_context_options_t *options);

/* Creates a context on the chosen platform and device with an in-order queue with
 * profiling, and builds the library's OpenCL programs. `options` may be NULL. */
mca_status_t mca_context_create(const mca_context_options_t *options, mca_context_t **context);

/* Creates a context on the caller's queue, which is borrowed and must be in-order. The
 * queue's context and device are used; the queue is retained and released on destroy. */
mca_status_t mca_context_create_from_queue(cl_command_queue queue,
                                           const mca_context_options_t *options,
                                           mca_context_t **context);

/* Releases everything the context owns. Accepts NULL. Objects created from the context
 * must be destroyed first. */
void mca_context_destroy(mca_context_t *context);

/* Returns the device name, valid for the life of the context. */
const char *mca_context_device_name(const mca_context_t *context);

/* Returns the context's queue (borrowed: do not release it). */
cl_command_queue mca_context_queue(const mca_context_t *context);

/* ------------------------------------------------------------------------------------ */
/* Forward options and statistics                                                        */
/* ------------------------------------------------------------------------------------ */

typedef enum mca_mode {
    MCA_MODE_EXACT = 0, /* ordinary attention: V = X W_V^T + b_V for every token */
    MCA_MODE_MCA = 1    /* Monte-Carlo approximation of V */
} mca_mode_t;

/* Rule for the value rows that MCA mode computes exactly. In both rules, tokens whose every
 * head reaches r = D run as whole rows in one (tokens, D, D) GEMM. */
typedef enum mca_exact_rows {
    /* Only the (token, head) pairs whose sample count reaches D, as the paper does. The
     * other exact pairs run in one batched GEMM over per-head groups. The default. */
    MCA_EXACT_PAIRS = 0,
    /* Whole value rows of every token that has such a pair in some head, when the whole-row
     * GEMM is expected to be faster than the per-head one. The choice is made per sequence.
     * The other heads of those tokens become exact too, so no error bound is higher than
     * with MCA_EXACT_PAIRS. On encoder models most tokens draw the full count in at least
     * one head, so this mode usually computes V exactly at about the cost of exact mode. */
    MCA_EXACT_WHOLE_ROWS = 1
} mca_exact_rows_t;

typedef struct mca_forward_options {
    mca_mode_t mode;
    /* Precision knob, finite and > 0: r[h,j] = min(D, floor((n_b * m[h,j] / alpha)^2)).
     * Smaller alpha draws more samples. Ignored in exact mode. */
    float alpha;
    /* Key of the Philox4x32-10 generator. The same seed gives the same samples on every
     * run and work-group size of a device. Another device draws the same uniforms, but its
     * exp() and division may round differently (OpenCL allows a few ulp), which can move
     * a sample count or an index that sits on a CDF boundary. */
    uint64_t seed;
    /* n_b in the formula above. 0 uses each sequence's valid length; a fixed value such as
     * 128 reproduces the paper's GLUE runs. At most MCA_MAX_BUDGET_LENGTH. */
    int budget_length;
    /* Lower bound on r for valid tokens, 0 .. D. The default 1 keeps the estimator unbiased;
     * 0 reproduces the published code, which reduces tokens with r = 0 to their bias. */
    int min_samples;
    /* Counter fields that keep draws of different layers and sequences independent:
     * sequence b of the batch draws from sequence number first_sequence + b. */
    uint32_t layer_index;
    uint32_t first_sequence;
    /* Rows computed exactly: MCA_EXACT_PAIRS (the default) or MCA_EXACT_WHOLE_ROWS. */
    mca_exact_rows_t exact_rows;
} mca_forward_options_t;

#define MCA_MAX_BUDGET_LENGTH 1048576

/* Fills *options with the defaults: exact mode, alpha 0.02, seed 0, budget length 0 (the
 * valid length), minimum samples 1, layer 0, first sequence 0. On all-MiniLM-L6-v2 with
 * sentences of about 20 tokens, alpha 0.02 kept the mean embedding cosine to exact at
 * 0.9985; the paper's alpha 0.2 needs its fixed budget length of 128 for similar results. */
void mca_forward_options_init(mca_forward_options_t *options);

/* Histogram bins of sample counts over valid (sequence, head, token) triples:
 * bin 0 counts r = 0, bin k (1 .. 14) counts 2^(k-1) <= r < 2^k for sampled tokens (bin 14
 * also takes larger counts, possible only when D > 16384), and bin MCA_HISTOGRAM_BINS - 1
 * counts tokens computed exactly (r = D). */
#define MCA_HISTOGRAM_BINS 16

/*
 * Statistics of one or more forward passes. A forward pass adds its counts to the raw
 * counters and recomputes the derived fields, so one struct can sum a whole encoder or a
 * corpus. mca_forward_stats_reset starts over.
 */
typedef struct mca_forward_stats {
    /* Raw counters. */
    uint64_t valid_tokens;          /* sum of valid lengths */
    uint64_t padded_positions;      /* batch * tokens, padding included */
    double value_flops;             /* value-projection FLOPs executed for valid tokens */
    double exact_value_flops;       /* 2 * n * D * D summed over sequences */
    double paper_ratio_sum;         /* sum of r / D over heads and all positions */
    uint64_t paper_ratio_count;     /* heads * positions, padding included */
    uint64_t uniforms_drawn;        /* 32-bit Philox words generated, four per call */
    uint64_t search_steps;          /* r * ceil(log2 D): what a binary search would take; the
                                     * guided search usually takes one or two steps a draw */
    uint64_t samples_drawn;         /* sum of r over sampled tokens */
    uint64_t distinct_columns;      /* weight columns read after merging equal indices */
    uint64_t histogram[MCA_HISTOGRAM_BINS];
    double error_bound_sum;         /* sum of the per-row bound over valid query rows */
    uint64_t error_bound_rows;      /* valid (sequence, head, query) rows */
    double error_bound_max;

    /* Derived from the counters. */
    double flops_fraction;          /* value_flops / exact_value_flops */
    double flops_fraction_paper;    /* paper_ratio_sum / paper_ratio_count */
    double error_bound_mean;        /* error_bound_sum / error_bound_rows */
} mca_forward_stats_t;

/* Zeroes every field. */
void mca_forward_stats_reset(mca_forward_stats_t *stats);

/* Adds the raw counters of `other` to `total` and recomputes the derived fields. */
void mca_forward_stats_add(mca_forward_stats_t *total, const mca_forward_stats_t *other);

/* ------------------------------------------------------------------------------------ */
/* Attention layer                                                                       */
/* ------------------------------------------------------------------------------------ */

typedef struct mca_attention_weights {
    int hidden_size; /* D */
    int heads;       /* H; D must be divisible by H */
    /* Borrowed host arrays, copied at creation: (D, D) weights in (out, in) layout and (D)
     * biases. */
    const float *query_weight, *query_bias;
    const float *key_weight, *key_bias;
    const float *value_weight, *value_bias;
} mca_attention_weights_t;

typedef struct mca_attention mca_attention_t;

/*
 * Creates a self-attention layer: copies the weights to the device and precomputes, for
 * each head h, the sampling distribution p_h(k) = sum_c W_h[c,k]^2 / ||W_h||_F^2 over input
 * dimensions k and its prefix sum. Non-finite weights are rejected.
 */
mca_status_t mca_attention_create(mca_context_t *context, const mca_attention_weights_t *weights,
                                  mca_attention_t **attention);

/* Releases the layer. Accepts NULL. */
void mca_attention_destroy(mca_attention_t *attention);

/*
 * Runs self-attention for a batch and returns the context before the output projection:
 *
 *   out[b, i, h*d:(h+1)*d] = sum_j A_h[i,j] V_h[j,:],  A_h = softmax(Q_h K_h^T / sqrt(d) + mask)
 *
 * hidden:  (batch, tokens, D) float32, host, borrowed. Rows i >= valid_lengths[b] are padding:
 *          their content never changes a valid output and may be anything, NaN included.
 *          A NaN or infinity in a valid row is rejected with MCA_ERROR_INVALID_ARGUMENT, and
 *          the message names its index as hidden[b][i][k].
 * context: (batch, tokens, D) float32, host, written on success. Padded rows are zero.
 * valid_lengths: (batch) ints in 0 .. tokens. A zero-length sequence gives all-zero output
 *          rows, never NaN, and adds only its padded positions to the statistics.
 * stats:   may be NULL, which also skips computing the error bounds (O(H n^2) work per
 *          sequence); otherwise counts are added (see mca_forward_stats_t).
 *
 * In MCA mode the expected error of output row i of head h is at most
 *   sum_j A_h[i,j] * ||x_j|| * ||W_h||_F / sqrt(r[h,j])
 * (0 for exact tokens; ||x_j|| * ||W_h||_F for r = 0), reported in the statistics.
 */
mca_status_t mca_attention_forward(mca_attention_t *attention, const mca_forward_options_t *options,
                                   int batch, int tokens, const int *valid_lengths,
                                   const float *hidden, float *context, mca_forward_stats_t *stats);

/* As mca_attention_forward, on device buffers of the layer's context (borrowed) holding
 * (batch, tokens, D) float32 at offset 0. Work is enqueued on the context's queue and has
 * finished when the call returns. The hidden states stay on the device and are not checked:
 * a NaN in a valid row of sequence b makes every valid output row of sequence b NaN and
 * leaves the other sequences unchanged. NOTE: a failure late in the pass (a device error) can
 * leave `context` partly written, unlike the host variant. */
mca_status_t mca_attention_forward_buffers(mca_attention_t *attention,
                                           const mca_forward_options_t *options, int batch,
                                           int tokens, const int *valid_lengths, cl_mem hidden,
                                           cl_mem context, mca_forward_stats_t *stats);

/* ------------------------------------------------------------------------------------ */
/* Encoder                                                                               */
/* ------------------------------------------------------------------------------------ */

typedef struct mca_encoder mca_encoder_t;

/*
 * Loads a BERT-family sentence encoder from a directory holding config.json,
 * model.safetensors and vocab.txt (the layout of all-MiniLM-L6-v2). F16 and BF16 tensors
 * are converted to float32.
 */
mca_status_t mca_encoder_load(mca_context_t *context, const char *model_dir, mca_encoder_t **encoder);

/* Releases the encoder. Accepts NULL. */
void mca_encoder_destroy(mca_encoder_t *encoder);

/* Returns the embedding width (hidden_size of config.json). */
int mca_encoder_hidden_size(const mca_encoder_t *encoder);

/* Returns the largest sequence length in tokens, [CLS] and [SEP] included. */
int mca_encoder_max_length(const mca_encoder_t *encoder);

/*
 * Embeds `count` UTF-8 texts as one padded batch: WordPiece tokens, the encoder in the
 * mode of `options`, mean pooling over valid tokens and L2 normalization, as
 * sentence-transformers does. Texts longer than the model allows are truncated with a
 * warning through the log callback. Layer l draws from layer_index l, and text t from
 * sequence options->first_sequence + t, so embeddings do not depend on how a corpus is
 * split into batches.
 *
 * embeddings: (count, hidden_size) float32, host, written on success.
 * token_counts: (count) ints or NULL; receives each text's token count after truncation.
 */
mca_status_t mca_encoder_embed(mca_encoder_t *encoder, const mca_forward_options_t *options,
                               int count, const char *const *texts, float *embeddings,
                               int *token_counts, mca_forward_stats_t *stats);

#ifdef __cplusplus
}
#endif

#endif /* MCA_H */
