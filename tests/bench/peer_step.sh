#!/bin/sh
# One SignSGD step of one block, ar beside AutoRound 0.16.1, then
# tests/bench/peer_step_compare.py on the two results: per linear (experts
# included, and summed per projection over the experts) the share of groups
# whose |scale| / RTN scale is equal and the share of equal codes. Used for
# the MoE gradient check of docs/moe.md section 13 (the dense version of this
# check is docs/peer-benchmark.md, "The clamp boundary").
#
# Both tools: iters 2, lr = minmax_lr = 0.05, not_use_best_mse (the result is
# the tunables after the first step), every window in one batch (no sampler
# difference), seed 42, one thread. AutoRound gets every other block at 16
# bits through layer_config (its input to BLOCK is then the FP chain); ar tunes
# --blocks BLOCK, with --disable_quanted_input past block 0 (the same FP chain).
#
#   MODEL=build/moe/qwen3_moe CALIB=build/moe-peer/qwen3_moe.calib.ars sh tests/bench/peer_step.sh
# Environment (defaults in brackets):
#   MODEL, CALIB  model folder and ar-calib stream (required)
#   BLOCK [0]  SCHEME [W4A16]  BITS [4, the scheme's]  BATCH [32, the stream's windows]
#   PEER_AMP  AutoRound's amp: 1 (its default on this CPU: bf16) or 0 (f32) [1]
#   AR_ARGS   extra ar-tune arguments, e.g. --disable_amp []
#   OUT       work folder, kept [build/peer-step/MODEL-SCHEME-bBLOCK]
# Not part of `make test`; needs build/venv with torch + auto-round.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$(cd "${AR_BIN:-$ROOT/bin}" && pwd)
PY=$ROOT/build/venv/bin/python
: "${MODEL:?MODEL=model folder}" "${CALIB:?CALIB=ar-calib stream}"
B=${BLOCK:-0} SCHEME=${SCHEME:-W4A16} BITS=${BITS:-4} BATCH=${BATCH:-32} PEER_AMP=${PEER_AMP:-1}
W=${OUT:-$ROOT/build/peer-step/$(basename "$MODEL")-$SCHEME-b$B}
mkdir -p "$W"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 AR_DISABLE_META_LOAD=1 AR_LOG_LEVEL=DEBUG
EXTRA=$("$PY" -c '
import json, sys
m, b, amp = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
n = json.load(open(m + "/config.json"))["num_hidden_layers"]
print(json.dumps({"enable_torch_compile": False, "amp": amp, "lr": 0.05, "minmax_lr": 0.05,
                  "not_use_best_mse": True,
                  "layer_config": {f"model.layers.{i}": {"bits": 16} for i in range(n) if i != b}}))' \
  "$MODEL" "$B" "$PEER_AMP")
rm -rf "$W/peer"
"$PY" "$ROOT/tests/bench/peer_autoround.py" --model "$MODEL" --calib "$CALIB" --scheme "$SCHEME" --iters 2 \
    --batch_size "$BATCH" --seed 42 --threads 1 --format auto_round --extra "$EXTRA" -o "$W/peer" \
    > "$W/peer.log" 2>&1 || { tail -5 "$W/peer.log"; exit 1; }
FPIN=; [ "$B" = 0 ] || FPIN=--disable_quanted_input
# shellcheck disable=SC2086
"$BIN/ar-tune" -i "$CALIB" --model "$MODEL" --scheme "$SCHEME" --iters 2 --lr 0.05 --minmax_lr 0.05 \
    --not_use_best_mse --batch_size "$BATCH" --seed 42 --threads 1 --blocks "$B" $FPIN --verbose ${AR_ARGS:-} \
    -o "$W/ar.ars" 2> "$W/ar.log" || { tail -3 "$W/ar.log"; exit 1; }
# iteration-0 losses: ar's figure is AutoRound's times the valid positions (docs/peer-benchmark.md)
echo "AutoRound: $(sed 's/\x1b\[[0-9;]*m//g' "$W/peer.log" | grep -m1 'iter 0 loss' | sed 's/.*iter 0 loss/iter 0 loss/')"
echo "ar:        $(grep -m1 'iter 0/' "$W/ar.log" | sed 's/.*iter 0/iter 0/')"
"$PY" "$ROOT/tests/bench/peer_step_compare.py" "$W/ar.ars" "$W/peer" "$MODEL" "$BITS" "$B"
