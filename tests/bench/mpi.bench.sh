#!/bin/sh
# Data-parallel ranks (docs/mpi.md): ar-tune on tiny-llama (W4A16, 8 samples
# of 128 tokens, AR_BENCH_MPI_ITERS iterations a block, dp chunks of 1
# sample, one thread a rank) as one process and as `mpirun -np 2`; prints
# the wall time of both, the measured gradient exchange (MiB received and ms
# per iteration, rank 0) against the volume the chunk tree predicts, and from
# measured iteration times the projected tuning time of an 8B and a
# 235B-A22B model on 1, 8 and 32 GPUs, with its assumptions. Then expert
# parallel (docs/mpi.md, "Expert parallel"): a random 2-layer Qwen3-MoE of 64
# experts (tests/bench/make_ep_model.py, needs build/venv) tuned as one
# process and as `mpirun -np 2` and `-np 4 --expert_parallel`: peak RSS a
# rank, the measured exchange against 2·(N−1)/N·R·K·H·4 bytes, and the
# DeepSeek-V3 arithmetic of tests/bench/ep_memory.py. Skips without mpirun
# or MPI. Never fails on time; fails (FAIL line, exit 1) when a command
# fails, the exchange line is missing or -np 2 changes the bytes.
set -eu
: "${AR_BIN:?}" "${AR_SHARED:?}"
ITERS=${AR_BENCH_MPI_ITERS:-10}
M="$AR_SHARED/models/tiny-llama"
command -v mpirun > /dev/null || { echo "== mpi: skipped, no mpirun (make deps)"; exit 0; }
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
over=""; [ "$(nproc)" -ge 2 ] || over=--oversubscribe
die() { echo "FAIL mpi bench: $*"; exit 1; }

"$AR_BIN/ar-calib" --model "$M" --dataset "$AR_SHARED/data/tinystories/TinyStories-validation-head.txt" \
  --nsamples 8 --seqlen 128 -o "$W/c.ars" --quiet || die "ar-calib failed"
A="-i $W/c.ars --iters $ITERS --threads 1 --disable_amp --dp_chunk 1"
echo "== mpi: ar-tune tiny-llama W4A16, 8 x 128, $ITERS iterations a block, dp_chunk 1, 1 thread a rank, $(nproc) cores"
echo "   load before: $(uptime | sed 's/.*load average: //')"
t0=$(date +%s.%N)
"$AR_BIN/ar-tune" $A --quiet -o "$W/one.ars" || die "ar-tune (one process) failed"
t1=$(date +%s.%N)
if ! mpirun $over --bind-to none -np 2 "$AR_BIN/ar-tune" $A --progress -o "$W/two.ars" 2> "$W/two.err"; then
  grep -q "has no MPI" "$W/two.err" && { echo "   skipped: ar-tune built without MPI"; exit 0; }
  tail -3 "$W/two.err"; die "mpirun -np 2 ar-tune failed"
fi
t2=$(date +%s.%N)
echo "   load after: $(uptime | sed 's/.*load average: //')"
cmp -s "$W/one.ars" "$W/two.ars" || die "-np 2 wrote different bytes from one process"
same="byte-identical"
line=$(grep "gradient exchange" "$W/two.err") || die "no gradient exchange line from rank 0"
mib=$(echo "$line" | sed 's/.*exchange \([0-9.]*\) MiB.*/\1/')
ms=$(echo "$line" | sed 's/.* and \([0-9.]*\) ms per iteration.*/\1/')
# the block's trainable weights: q, k, v, o, gate, up, down of tiny-llama
G=$(awk 'BEGIN { h = 512; kv = 2 * 64; f = 1280; print h * h * 2 + h * kv * 2 + 3 * h * f }')
awk -v t0="$t0" -v t1="$t1" -v t2="$t2" -v n="$((ITERS * 6))" -v mib="$mib" \
    -v ms="$ms" -v G="$G" -v same="$same" 'BEGIN {
  t2 -= t1; t1 -= t0
  printf "   one process: %.1f s wall (%.1f ms per iteration, everything included)\n", t1, 1e3 * t1 / n
  printf "   mpirun -np 2: %.1f s wall (%.1f ms per iteration), output %s\n", t2, 1e3 * t2 / n, same
  printf "   exchange per iteration (rank 0): %.3f MiB received in %.2f ms; the tree predicts %.3f MiB\n", mib, ms,
         (G * 4 + 4 * 8) / 1048576
  printf "     (8 chunks, 2 ranks, reduce-scatter: half of the other rank node, then the other half of the\n       finished gradient, G = %d floats; plus 4 loss parts)\n", G
}'

# Projection. t_iter(1 GPU) = the H100 7B-block iteration of docs/gpu-results.md (89.1 ms, default path,
# 8 samples x 2048 tokens), scaled by the active parameters of a block (Llama-2-7B block: 202.4M).
# N ranks split the 8 chunks of an iteration (dp_chunk 1), so at most 8 ranks have work: 32 GPUs
# are 4 groups of 8 ranks tuning different blocks at once (block parallelism, docs/parallel.md), an
# ideal 4x. The exchange is the reduce-scatter of the ranks' tree nodes in f32 (reduce.h; with one
# node a rank, as here): each rank receives 2 x G x 4 x (N - 1) / N bytes, G the block's trainable
# weights, at 350 GB/s (NCCL bus bandwidth within one 8-GPU NVLink node; the all-gather of whole
# nodes this replaced received (N - 1) x G x 4). Chain forwards (2 x 128 x 2048 tokens a block, on
# every rank) at 300 TFLOP/s.
# 200 iterations a block. Neither model was run.
awk 'function proj(name, layers, G, act,   t, i, n, busy, groups, tc, tx, chain, tot) {
  t = 89.1e-3 * act / 202.4e6
  chain = 2 * 128 * 2048 * 2 * act / 300e12
  for (i = 1; i <= 3; i++) {
    n = i == 1 ? 1 : i == 2 ? 8 : 32
    busy = n < 8 ? n : 8
    groups = n / busy
    tc = t / busy
    tx = busy > 1 ? 2 * G * 4 * (busy - 1) / busy / 350e9 : 0
    tot = layers * (200 * (tc + tx) + chain) / groups
    printf "   %-10s %2d GPUs (%d x %d): %5.1f ms compute + %6.1f ms exchange an iteration: %6.1f min\n",
           name, n, groups, busy, 1e3 * tc, 1e3 * tx, tot / 60
  }
}
BEGIN {
  print "   projection (assumptions in tests/bench/mpi.bench.sh and docs/mpi.md; not measured on GPUs):"
  # Llama-3-8B block: q 4096x4096, k/v 1024x4096, o 4096x4096, gate/up/down 14336x4096
  g8 = 4096 * 4096 * 2 + 1024 * 4096 * 2 + 3 * 14336 * 4096
  proj("8B", 32, g8, g8)
  # Qwen3-235B-A22B block: q 8192x4096, k/v 512x4096, o 4096x8192, 128 experts of 3 x 1536x4096, 8 active
  att = 8192 * 4096 * 2 + 512 * 4096 * 2
  proj("235B-A22B", 94, att + 128 * 3 * 1536 * 4096, att + 8 * 3 * 1536 * 4096)
}'

# ---- expert parallel -----------------------------------------------------------
PY=$(dirname "$0")/../../build/venv/bin/python
if ! OMP_NUM_THREADS=1 "$PY" "$(dirname "$0")/make_ep_model.py" "$W/big" 64 > /dev/null 2>&1; then
  echo "== expert parallel: skipped, no build/venv with transformers to make the model"; exit 0
fi
"$AR_BIN/ar-calib" --quiet --model "$W/big" --dataset "$AR_SHARED/data/tinystories/TinyStories-validation-head.txt" \
  --nsamples 8 --seqlen 64 -o "$W/big.ars" || die "ar-calib of the expert-parallel model failed"
EA="--model $W/big -i $W/big.ars --iters $ITERS --threads 1"
echo "== expert parallel: random Qwen3-MoE, 2 MoE layers, hidden 256, 64 experts of 512, top-4 (25.2 M routed"
echo "   parameters a block), 8 x 64 tokens, $ITERS iterations a block, 1 thread a rank, $(nproc) cores"
echo "   load before: $(uptime | sed 's/.*load average: //')"
/usr/bin/time -f "%e %M" -o "$W/one.time" "$AR_BIN/ar-tune" $EA --quiet -o "$W/big.one.ars" || die "ar-tune of the expert-parallel model (one process) failed"
echo "   one process: $(awk '{ printf "%.1f s wall, peak RSS %.0f MiB", $1, $2 / 1024 }' "$W/one.time")"
for n in 2 4; do
  o=""; [ "$n" -le "$(nproc)" ] || o=--oversubscribe
  mpirun $o --bind-to none -np $n sh -c '/usr/bin/time -f "%e %M" -o "$0.$OMPI_COMM_WORLD_RANK" "$@"' "$W/ep$n.time" \
    "$AR_BIN/ar-tune" $EA --expert_parallel --progress -o "$W/big.ep$n.ars" 2> "$W/ep$n.err" || { tail -2 "$W/ep$n.err"; die "mpirun -np $n --expert_parallel failed"; }
  cmp -s "$W/big.one.ars" "$W/big.ep$n.ars" || die "-np $n --expert_parallel wrote different bytes from one process"
  same="byte-identical"
  line=$(grep "expert exchange" "$W/ep$n.err") || die "no expert exchange line from rank 0 at -np $n"
  rss=$(cat "$W/ep$n.time".* | awk '{ printf "%s%.0f", (NR > 1 ? " / " : ""), $2 / 1024 }')
  wall=$(cat "$W/ep$n.time".* | awk '$1 > m { m = $1 } END { printf "%.1f", m }')
  echo "$line" | awk -v n=$n -v rss="$rss" -v wall="$wall" -v same="$same" '{
    mib = $0; sub(/.*exchange /, "", mib); sub(/ MiB.*/, "", mib)
    ms = $0; sub(/.* and /, "", ms); sub(/ ms per.*/, "", ms)
    pred = 2 * (n - 1) / n * 8 * 64 * 4 * 256 * 4 / 1048576
    printf "   -np %d --expert_parallel: %s s wall, peak RSS a rank %s MiB, output %s\n", n, wall, rss, same
    printf "     exchange per iteration (rank 0): %s MiB received in %s ms; an even split predicts %.3f MiB\n", mib, ms, pred
  }'
done
echo "   DeepSeek-V3 block, 8 ranks (arithmetic, tests/bench/ep_memory.py):"
python3 "$(dirname "$0")/ep_memory.py" 8 2048 | sed 's/^/     /'
exit 0
