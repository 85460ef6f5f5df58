#!/bin/sh
# A mixture-of-experts block's SignRound iteration time and peak RSS against a
# dense block with the same active parameters (tests/bench/moe_bench.c: C=512,
# dense F=1280; MoE E experts top-K of I=1280/K), each in its own process, and
# their ratio (issue 17's target: <= 1.5x). Prints figures; never fails on time.
# AR_BENCH_MOE="n T iters E K reps" overrides the default "8 512 4 8 2 1" (4,096 tokens
# a step; at 8 x 128 the quantizer passes over all experts' weights weigh more). Each side
# also prints its quantizer share (the report's sec_quant over its total, wall clock).
BENCH_BIN=${AR_BENCH_BIN:-$(cd "$(dirname "$0")/../.." && pwd)/build/obj/bench}
[ -x "$BENCH_BIN/moe_bench" ] || { echo "moe_bench not built (make bench)"; exit 0; }
ARGS=${AR_BENCH_MOE:-8 512 4 8 2 1}
echo "== MoE vs dense block, SignRound iteration, $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"
# shellcheck disable=SC2086
d=$("$BENCH_BIN/moe_bench" dense $ARGS) || exit 0
# shellcheck disable=SC2086
m=$("$BENCH_BIN/moe_bench" moe $ARGS) || exit 0
printf '%s\n%s\n' "$d" "$m"
td=$(echo "$d" | sed -n 's/.*: \([0-9.]*\) ms per SignRound.*/\1/p')
tm=$(echo "$m" | sed -n 's/.*: \([0-9.]*\) ms per SignRound.*/\1/p' | head -1)
rd=$(echo "$d" | sed -n 's/.*peak RSS \([0-9]*\) MiB.*/\1/p')
rm_=$(echo "$m" | sed -n 's/.*peak RSS \([0-9]*\) MiB.*/\1/p')
awk -v d="$td" -v m="$tm" -v rd="$rd" -v rm="$rm_" 'BEGIN { if (d > 0 && rd > 0)
  printf "  MoE / dense: iteration time %.2fx (target <= 1.5x), peak RSS %.2fx\n", m / d, rm / rd }'
exit 0
