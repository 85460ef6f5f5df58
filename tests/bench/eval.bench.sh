#!/bin/sh
# ar-eval throughput on tiny-llama (20 windows of 512 tokens of heldout.txt):
# tokens/s, the forward's matmul GFLOP/s, peak RSS, and the OpenBLAS sgemm
# rate measured in the same run on the forward's own shapes, with one thread
# and with the default thread count. Target: the forward reaches at least
# half the sgemm rate. Never fails on time.
: "${AR_BIN:?}" "${AR_SHARED:?}"
BENCH_BIN=${AR_BENCH_BIN:-$(dirname "$AR_BIN")/build/obj/bench}
M="$AR_SHARED/models/tiny-llama"
# OpenBLAS falls back to SSE3 kernels on CPUs it does not recognise; ar-eval
# corrects that itself, and the sgemm benchmark must run with the same kernels.
if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
  if grep -q avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX
  elif grep -q avx2 /proc/cpuinfo; then export OPENBLAS_CORETYPE=Haswell; fi
fi

# run_pair LABEL: ar-eval then sgemm_bench under the current thread settings.
run_pair() {
  echo "== ar-eval tiny-llama, 20 windows x 512, threads: $1"
  out=$("$AR_BIN/ar-eval" --json --verbose --model "$M" --text "$M/heldout.txt" --windows 20 2> /tmp/ar-eval-bench.err)
  echo "$out"
  grep "peak RSS" /tmp/ar-eval-bench.err
  fwd=$(echo "$out" | sed -n 's/.*"gflops_per_second": *\([0-9.]*\).*/\1/p')
  tps=$(echo "$out" | sed -n 's/.*"tokens_per_second": *\([0-9.]*\).*/\1/p')
  if [ ! -x "$BENCH_BIN/sgemm_bench" ]; then echo "sgemm_bench not built ($BENCH_BIN/sgemm_bench)"; return; fi
  "$BENCH_BIN/sgemm_bench" 0.5 > /tmp/ar-sgemm-bench.out
  grep -v '^sgemm_gflops' /tmp/ar-sgemm-bench.out
  sg=$(sed -n 's/^sgemm_gflops //p' /tmp/ar-sgemm-bench.out)
  awk -v f="$fwd" -v s="$sg" -v t="$tps" -v l="$1" 'BEGIN { printf "eval (%s): %.0f tokens/s, forward %.1f GFLOP/s = %.0f%% of sgemm %.1f GFLOP/s (target >= 50%%)\n", l, t, f, 100 * f / s, s }'
}

OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 run_pair 1
run_pair "${OMP_NUM_THREADS:-default}"
