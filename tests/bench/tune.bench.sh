#!/bin/sh
# ar-tune (SignRound, CPU) on tiny-llama, W4A16 default recipe: 128 samples of
# 512 tokens, batch 8, 200 iterations per block. Prints wall time, peak RSS,
# per block the forward / backward / quantizer seconds, ms per iteration and
# the block's GFLOP/s against the OpenBLAS sgemm rate measured before and
# after in the same run (the machine is shared), and, when perf may profile,
# the share of CPU time in OpenBLAS, in OpenMP's runtime (waiting threads) and
# in the kernel. Never fails on time.
# AR_BENCH_TUNE_ITERS shortens the run (default 200 = the recipe; a full run
# is 1200 block iterations, ~0.1 s each on 16 cores, 1-4 s on 2 busy cores).
: "${AR_BIN:?}" "${AR_SHARED:?}"
BENCH_BIN=${AR_BENCH_BIN:-$(dirname "$AR_BIN")/build/obj/bench}
ITERS=${AR_BENCH_TUNE_ITERS:-200}
M="$AR_SHARED/models/tiny-llama"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

sgemm() {
  [ -x "$BENCH_BIN/sgemm_bench" ] || { echo "sgemm_bench not built"; return; }
  "$BENCH_BIN/sgemm_bench" 0.5 | sed -n 's/^sgemm_gflops //p'
}

zstd -dc "$AR_SHARED/data/corpus/gutenberg_en_prose.txt.zst" | head -c 3000000 > "$W/calib.txt"
"$AR_BIN/ar-calib" --model "$M" --dataset "$W/calib.txt" --nsamples 128 --seqlen 512 -o "$W/calib.ars" || exit 0
sg1=$(sgemm)
echo "== ar-tune tiny-llama W4A16, 128 x 512, batch 8, $ITERS iterations per block, $(nproc) cores"
PERF=""
if command -v perf > /dev/null && perf record -q -o "$W/probe.data" true > /dev/null 2>&1; then
  PERF="perf record -q -F 99 -o $W/perf.data --"
fi
# shellcheck disable=SC2086
/usr/bin/time -f '%e %M' -o "$W/time" $PERF "$AR_BIN/ar-tune" -i "$W/calib.ars" --device cpu --scheme W4A16 \
  --iters "$ITERS" --progress -o "$W/q.ars" 2> "$W/log" || { tail -3 "$W/log"; exit 0; }
sg2=$(sgemm)
read -r wall rss_kb < "$W/time"

# FLOPs of one iteration (batch 8 x 512 tokens) for tiny-llama's shapes:
# forward = 7 linears + causal attention; backward = dW of all 7 linears,
# dX of all but q/k/v (the block input needs no gradient), 2x attention.
awk -v iters="$ITERS" -v sg1="$sg1" -v sg2="$sg2" -v wall="$wall" -v rss="$rss_kb" '
BEGIN { C = 512; F = 1280; NH = 8; NKV = 2; HD = 64; B = 8; T = 512; BT = B * T
        nk = C * NH * HD + 2 * C * NKV * HD + NH * HD * C + 3 * C * F
        L = 2 * BT * nk; Lqkv = 2 * BT * C * (NH + 2 * NKV) * HD
        A = B * 4 * NH * HD * T * (T + 1) / 2
        fwd = L + A; bwd = L + (L - Lqkv) + 2 * A
        printf "  FLOPs per iteration: forward %.1f G, backward %.1f G\n", fwd / 1e9, bwd / 1e9 }
/ar-tune: block [0-9]+\/[0-9]+ / {
  for (i = 1; i <= NF; i++) { if ($i == "fwd") f = $(i + 1); if ($i == "bwd") b = $(i + 1); if ($i == "quant") q = $(i + 1) }
  sub("s", "", f); sub("s", "", b); sub("s", "", q)
  printf "  block %-5s fwd %6.1fs bwd %6.1fs quant %5.1fs  %6.0f ms/iter  fwd %5.1f GFLOP/s  bwd %5.1f GFLOP/s\n", \
         $3, f, b, q, 1000 * (f + b + q) / iters, fwd * iters / f / 1e9, bwd * iters / b / 1e9
  tf += f; tb += b; tq += q; nb++ }
END { if (!nb) exit
      printf "  total: wall %.0fs, peak RSS %.0f MiB, %.0f ms/iter (fwd %.0f, bwd %.0f, quantizer %.0f)\n", \
             wall, rss / 1024, 1000 * (tf + tb + tq) / (iters * nb), 1000 * tf / (iters * nb), \
             1000 * tb / (iters * nb), 1000 * tq / (iters * nb)
      printf "  block fwd+bwd %.1f GFLOP/s; OpenBLAS sgemm %s GFLOP/s before, %s after\n", \
             (fwd + bwd) * iters * nb / (tf + tb) / 1e9, sg1, sg2 }' "$W/log"
if [ -n "$PERF" ] && [ -s "$W/perf.data" ]; then
  perf report -q -i "$W/perf.data" --sort dso 2> /dev/null |
    awk '$1 ~ /%/ { d = $2; p = $1; sub("%", "", p)
                    if (d ~ /openblas/) blas += p; else if (d ~ /gomp/) omp += p
                    else if (d ~ /kernel/) k += p; else if (d ~ /ar-tune/) own += p; else other += p }
         END { printf "  CPU time: OpenBLAS %.0f%%, ar code %.0f%%, OpenMP runtime %.0f%%, kernel %.0f%%, other %.0f%%\n", \
               blas, own, omp, k, other }'
fi
exit 0
