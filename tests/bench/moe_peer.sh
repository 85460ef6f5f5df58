#!/bin/sh
# SignRound on the trained tiny MoE models (tests/fixtures/moe/make_tiny_moe.py),
# ar beside AutoRound 0.16.1, through tests/bench/peer.sh: per family one
# calibration stream (tests/fixtures/moe/calib_stream.py: the 32 windows of 128
# training tokens of make_tiny_moe.calib_windows, the same input_ids for both
# tools), then per seed and scheme AutoRound and ar back to back with the same
# iterations, batch, seed and threads, both outputs scored by ar-eval on every
# 256-token window of build/moe/heldout.txt (the references' protocol).
#
# AutoRound runs with enable_torch_compile False (on this CPU its C++ builds
# take minutes per block shape) and AR_DISABLE_META_LOAD=1 (its meta-device
# loading fails on transformers 5.25's per-expert Mixtral checkpoint, docs/moe.md
# section 6); everything else is its default (amp, low_gpu_mem_usage ...).
#
# Not part of `make test`. Needs build/venv with torch + auto-round and the
# models in MODELS (make_tiny_moe.py writes them; missing ones are skipped).
#   AR_BIN=$PWD/bin AR_SHARED=/work/shared sh tests/bench/moe_peer.sh
# Environment (defaults in brackets):
#   RUNS     space-separated FAMILY:SCHEME[,SCHEME] items
#            [qwen3_moe:W4A16,W2A16G64 mixtral:W4A16,W2A16G64 deepseek_v3:W4A16,W2A16G64
#             qwen2_moe:W4A16]
#            gpt_oss:W4A16 works too (ar-pack writes gpt-oss auto_round since the
#            moe-exports merge; ar-eval scores both folders).
#   SEEDS    [42]   ITERS [50]   BATCH [8]   THREADS [2]
#   EVAL_WINDOWS  256-token windows of heldout.txt scored [all: 155]
#   MODELS   [build/moe]   OUT  work folders, kept [build/moe-peer]
# Prints peer.sh's table per family and seed, then all rows together, with
# `uptime` before and after each family (the machine is shared).
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$(cd "${AR_BIN:-$ROOT/bin}" && pwd) || exit 1
export AR_BIN=$BIN AR_SHARED=${AR_SHARED:-$ROOT/../shared}
RUNS=${RUNS:-qwen3_moe:W4A16,W2A16G64 mixtral:W4A16,W2A16G64 deepseek_v3:W4A16,W2A16G64 qwen2_moe:W4A16}
EVAL_WINDOWS=${EVAL_WINDOWS:-all}
SEEDS=${SEEDS:-42} ITERS=${ITERS:-50} BATCH=${BATCH:-8} THREADS=${THREADS:-2}
MODELS=${MODELS:-$ROOT/build/moe} OUT=${OUT:-$ROOT/build/moe-peer}
PY=$ROOT/build/venv/bin/python
mkdir -p "$OUT"
: > "$OUT/all.table"
status=0
for run in $RUNS; do
  fam=${run%%:*} schemes=$(printf '%s' "${run#*:}" | tr , ' ')
  if [ ! -f "$MODELS/$fam/config.json" ]; then
    echo "moe_peer.sh: $MODELS/$fam missing (make_tiny_moe.py --only $fam); skipped" >&2; continue
  fi
  calib=$OUT/$fam.calib.ars
  [ -f "$calib" ] || "$PY" "$ROOT/tests/fixtures/moe/calib_stream.py" "$fam" "$calib" --models "$MODELS" \
      --bin "$BIN" --shared "$AR_SHARED" || { status=1; continue; }
  for seed in $SEEDS; do
    echo "== $fam seed $seed: $(uptime)"
    MODEL=$MODELS/$fam SCHEME=$schemes CALIB_ARS=$calib ITERS=$ITERS SEED=$seed BATCH=$BATCH \
    THREADS=$THREADS HELDOUT=$MODELS/heldout.txt EVAL_SEQLEN=256 EVAL_WINDOWS=$EVAL_WINDOWS \
    PEER_EXTRA='{"enable_torch_compile": false}' AR_DISABLE_META_LOAD=1 PEER_OUT=$OUT/$fam-s$seed \
      sh "$ROOT/tests/bench/peer.sh" || status=1
    sed 1d "$OUT/$fam-s$seed/table" | sed "s/^/seed$seed /" >> "$OUT/all.table"
    echo "   after: $(uptime)"
  done
done
echo "== moe_peer.sh: $ITERS iters, $EVAL_WINDOWS eval windows, batch $BATCH, $THREADS threads (columns as peer.sh)"
cat "$OUT/all.table"
exit $status
