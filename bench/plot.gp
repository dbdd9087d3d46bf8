# Plots of the benchmark results, drawn by gnuplot 5. tools/plot prepares the data files
# from bench/sweep.csv and mca-bench's CSV and passes their names and labels with -e, so run
# it rather than this script.
#
# Fidelity plot, drawn when fidelity_data is set:
#   fidelity_data     one block per budget length (blocks split by two blank lines), rows
#                     sorted by FLOP fraction: honest FLOP fraction, cosine mean, cosine min,
#                     alpha
#   fidelity_output   PNG file to write
#   fidelity_title    plot title
#   fidelity_log_x    1 for a logarithmic x axis
#   budget_count      number of blocks; budget_label_1 .. budget_label_N name them
#
# Stage plot, drawn when stages_data is set:
#   stages_data       rows sorted by alpha: alpha, then 0 and the running sum after each of the
#                     stage_count stages (stage_title_1 .. stage_title_N name them), then the
#                     MCA layer total and the published strategy's total (NaN when missing)
#   reference_data    one block per horizontal line, two points each; reference_count blocks,
#                     named by reference_title_1 .. reference_title_N
#   alpha_values      the measured alphas, separated by spaces
#   stages_output, stages_title, stages_subtitle, time_unit ("ms" or "s"), have_published (0 or 1)

if (strstrt(GPVAL_TERMINALS, "pngcairo") > 0) {
    set terminal pngcairo size 1100,700 enhanced font "sans,11" linewidth 1.5
} else {
    set terminal png size 1100,700 enhanced font "sans,11"
}
set datafile missing NaN
set grid xtics ytics mxtics lc rgb "#d0d0d0"
set border 3
set tics nomirror

# Colors that stay distinct for up to eight series (Okabe-Ito, then dark gray).
array palette[8] = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", \
                    "#F0E442", "#999999"]
# Dark colors for the horizontal reference lines, so they stand out from the filled stages.
array reference_colors[3] = ["#B2182B", "#5E3C99", "#1B7837"]

if (exists("fidelity_data")) {
    set output fidelity_output
    set title fidelity_title
    set xlabel "honest FLOP fraction of the value projection (MCA / exact)"
    set ylabel "cosine similarity of MCA and exact embeddings"
    if (fidelity_log_x) {
        set logscale x
        set xtics (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1)
        set xlabel "honest FLOP fraction of the value projection (MCA / exact, log scale)"
    }
    set key bottom right box opaque
    set format x "%g"
    # Fit both ranges to the data, with margins so that end points and labels stay inside,
    # and so that the y axis does not run far past the cosine's maximum of 1.
    set autoscale xfix
    set autoscale yfix
    set offsets graph 0.06, graph 0.06, graph 0.04, graph 0.04
    plot for [i = 1:budget_count] fidelity_data index (i - 1) using 1:2 \
             with linespoints lc rgb palette[i] pt 7 ps 1.2 dt 1 \
             title sprintf("mean, %s", value(sprintf("budget_label_%d", i))), \
         for [i = 1:budget_count] fidelity_data index (i - 1) using 1:3 \
             with linespoints lc rgb palette[i] pt 6 ps 1.2 dt 2 \
             title sprintf("minimum, %s", value(sprintf("budget_label_%d", i))), \
         for [i = 1:budget_count] fidelity_data index (i - 1) using 1:2:(sprintf("α=%g", $4)) \
             with labels offset 0.8,0.7 font ",9" tc rgb palette[i] notitle
    unset logscale x
    unset output
}

if (exists("stages_data")) {
    reset
    set output stages_output
    set title stages_title . "\n" . stages_subtitle
    set xlabel "alpha (MCA precision knob, log scale)"
    set ylabel sprintf("time per layer call (%s, median)", time_unit)
    set logscale x
    set format x "%g"
    set autoscale xfix
    set offsets graph 0.03, graph 0.03, graph 0.05, 0
    # Label every measured alpha; a log axis would label only the powers of ten.
    set xtics ()
    do for [alpha in alpha_values] {
        set xtics add (alpha alpha + 0)
    }
    set yrange [0:*]
    set grid xtics ytics lc rgb "#d0d0d0"
    set border 3
    set tics nomirror
    set key outside right top box
    set style fill solid 0.75 noborder

    # Column 2 is the zero baseline, and stage s fills between columns s + 1 and s + 2. A loop
    # over 1:have_published leaves the published series out when it has no data, because
    # gnuplot stops on a series without a valid point.
    total_column = stage_count + 3
    plot for [s = 1:stage_count] stages_data using 1:(column(s + 1)):(column(s + 2)) \
             with filledcurves lc rgb palette[s] \
             title value(sprintf("stage_title_%d", s)), \
         stages_data using 1:total_column with linespoints lc rgb "black" lw 1.5 pt 7 \
             title "MCA layer total", \
         for [p = 1:have_published] stages_data using 1:(column(total_column + 1)) \
             with linespoints lc rgb "black" dt 3 pt 4 title "published strategy total", \
         for [i = 1:reference_count] reference_data index (i - 1) using 1:2 \
             with lines lw 2 dt i+1 lc rgb reference_colors[i] \
             title value(sprintf("reference_title_%d", i))
    unset output
}
