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
    mca_workspace_buffer_t exact_rows;    /* (m) uint */
    mca_workspace_buffer_t exact_hidden;  /* (m, D) */
    mca_workspace_buffer_t exact_values;  /* (m, D) */
} mca_attention_workspace_t;

/* Host copies of per-forward data, grown like the device workspace. */
typedef struct mca_attention_host {
    cl_uint *counts;
    float *bounds;
    cl_uint *pairs; /* 4 entries per pair */
    cl_uint *distinct;
    cl_uint *exact_rows;
    size_t *gemm_offsets; /* 3 * B * H */
    size_t counts_capacity, bounds_capacity, pairs_capacity, distinct_capacity;
    size_t rows_capacity, offsets_capacity;
} mca_attention_host_t;

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
};

#endif /* MCA_ATTENTION_H */
