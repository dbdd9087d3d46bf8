/* Forward-pass statistics: raw counters and the fractions derived from them. */
#include <string.h>

#include "mca.h"

static void derive(mca_forward_stats_t *stats)
{
    stats->flops_fraction =
        stats->exact_value_flops > 0 ? stats->value_flops / stats->exact_value_flops : 0.0;
    stats->flops_fraction_paper =
        stats->paper_ratio_count > 0 ? stats->paper_ratio_sum / (double)stats->paper_ratio_count
                                     : 0.0;
    stats->error_bound_mean =
        stats->error_bound_rows > 0 ? stats->error_bound_sum / (double)stats->error_bound_rows
                                    : 0.0;
}

void mca_forward_stats_reset(mca_forward_stats_t *stats)
{
    if (stats != NULL)
        memset(stats, 0, sizeof *stats);
}

void mca_forward_stats_add(mca_forward_stats_t *total, const mca_forward_stats_t *other)
{
    if (total == NULL || other == NULL)
        return;
    total->valid_tokens += other->valid_tokens;
    total->padded_positions += other->padded_positions;
    total->value_flops += other->value_flops;
    total->exact_value_flops += other->exact_value_flops;
    total->paper_ratio_sum += other->paper_ratio_sum;
    total->paper_ratio_count += other->paper_ratio_count;
    total->uniforms_drawn += other->uniforms_drawn;
    total->search_steps += other->search_steps;
    total->samples_drawn += other->samples_drawn;
    total->distinct_columns += other->distinct_columns;
    for (int i = 0; i < MCA_HISTOGRAM_BINS; i++)
        total->histogram[i] += other->histogram[i];
    total->error_bound_sum += other->error_bound_sum;
    total->error_bound_rows += other->error_bound_rows;
    if (other->error_bound_max > total->error_bound_max)
        total->error_bound_max = other->error_bound_max;
    derive(total);
}
