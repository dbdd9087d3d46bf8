/* Internal layout of an attention layer, shared with the tests that inspect its tables. */
#ifndef MCA_ATTENTION_H
#define MCA_ATTENTION_H

#include "context.h"
#include "sampling.h"

/* A device buffer that grows on demand and is reused by later forward passes. */
typedef struct mca_workspace_buffer {
    cl_mem buffer;
    size_t capacity;
} mca_workspace_buffer_t;

typedef struct mca_attention_workspace {
    mca_workspace_buffer_t hidden;        /* (B*T, D) copy of host input */
    mca_workspace_buffer_t output;        /* (B*T, D) result for host output */
    mca_workspace_buffer_t projections;   /* (B*T, 3D): Q | K | V */
    mca_workspace_buffer_t probabilities; /* (B, H, T, T) */
    mca_workspace_buffer_t lengths;       /* (B) int */
    mca_workspace_buffer_t counts;        /* (B, H, T) uint */
    mca_workspace_buffer_t norms;         /* (B*T) float */
    mca_workspace_buffer_t bounds;        /* (B, H, T) float */
    mca_workspace_buffer_t pairs;         /* (pairs) cl_uint4 */
    mca_workspace_buffer_t columns;       /* (samples) uint */
    mca_workspace_buffer_t weights;       /* (samples) float */
    mca_workspace_buffer_t distinct;      /* (pairs) uint */
    mca_workspace_buffer_t exact_rows;    /* (H * m) uint, rows of the exact pairs by head */
    mca_workspace_buffer_t exact_hidden;  /* (H * m, D) */
    mca_workspace_buffer_t exact_values;  /* (H * m, d) */
} mca_attention_workspace_t;

/* Host copies of per-forward data, grown like the device workspace. */
typedef struct mca_attention_host {
    cl_uint *counts;
    float *bounds;
    cl_uint *pairs; /* 4 entries per pair */
    cl_uint *distinct;
    cl_uint *exact_rows;   /* (H * m): head h's exact rows in slots h * m .. h * m + m - 1 */
    size_t *gemm_offsets;  /* 3 * B * H */
    size_t counts_capacity, bounds_capacity, pairs_capacity, distinct_capacity;
    size_t rows_capacity, offsets_capacity;
} mca_attention_host_t;

/* Stages of a forward pass, timed with OpenCL markers when a layer's `profile` is set.
 * Planning is the host round trip of MCA mode (reading the counts back and listing the
 * pairs); the published strategy's fused kernel is timed as accumulation. */
typedef enum mca_stage {
    MCA_STAGE_QK_PROJECTION,
    MCA_STAGE_SCORES,       /* scores, softmax, column maxima and sample counts */
    MCA_STAGE_STATISTICS,   /* token norms and error bounds */
    MCA_STAGE_PLANNING,
    MCA_STAGE_EXACT_VALUES, /* the V GEMM in exact mode; gather, GEMM, scatter in MCA mode */
    MCA_STAGE_SAMPLING,
    MCA_STAGE_ACCUMULATION,
    MCA_STAGE_ATTEND,       /* A * V */
    MCA_STAGE_COUNT
} mca_stage_t;

extern const char *const mca_stage_names[MCA_STAGE_COUNT];

/* Seconds per stage of the last profiled forward pass, and from its first stage's start
 * to its last stage's end. */
typedef struct mca_stage_times {
    double seconds[MCA_STAGE_COUNT];
    double total;
} mca_stage_times_t;

/* How MCA mode computes sampled value rows. */
typedef enum mca_value_strategy {
    MCA_VALUES_MERGED,   /* sample_columns + accumulate_samples */
    MCA_VALUES_PUBLISHED /* published_sample_accumulate */
} mca_value_strategy_t;

struct mca_attention {
    mca_context_t *context;
    int hidden_size;
    int heads;
    int head_width;
    cl_mem projection_weight;       /* (3D, D): W_Q, W_K, W_V stacked in (out, in) layout */
    cl_mem projection_bias;         /* (3D) */
    cl_mem value_bias;              /* (D), a copy of the last third of projection_bias */
    cl_mem value_weight_transposed; /* (D, D) = W_V^T, so that a sampled column is contiguous */
    mca_sampling_tables_t tables;
    mca_attention_workspace_t workspace;
    mca_attention_host_t host;

    /* Set by benchmarks and tests; NULL and MCA_VALUES_MERGED otherwise. */
    mca_stage_times_t *profile;
    mca_value_strategy_t value_strategy;
    cl_event stage_events[MCA_STAGE_COUNT][2]; /* begin and end markers while profiling */
};

#endif /* MCA_ATTENTION_H */
