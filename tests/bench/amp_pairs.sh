#!/bin/sh
# amp_pairs.sh FAMILY SCHEME SEED... — ar's bf16 AMP against --disable_amp on a
# trained tiny MoE model (docs/moe.md §14): per seed, ar-tune twice (50
# iterations, batch 8, 1 thread, defaults otherwise, --amp then
# --disable_amp) on the family's calibration stream (calib_stream.py, as
# moe_peer.sh), ar-pack auto_round, ar-eval perplexity over all 155 windows
# of 256 tokens of heldout.txt. One line per seed:
#   FAMILY SCHEME SEED | --amp PPL | --disable_amp PPL
# Env: MODELS [build/moe], AR_BIN [bin], OUT (work folder) [build/amp-pairs].
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MODELS=${MODELS:-$ROOT/build/moe} BIN=${AR_BIN:-$ROOT/bin} OUT=${OUT:-$ROOT/build/amp-pairs}
PY=$ROOT/build/venv/bin/python
fam=$1 sch=$2; shift 2
M=$MODELS/$fam; mkdir -p "$OUT"; cd "$OUT"
[ -f "$fam.calib.ars" ] || OMP_NUM_THREADS=1 "$PY" "$ROOT/tests/fixtures/moe/calib_stream.py" "$fam" \
    "$fam.calib.ars" --models "$MODELS" >/dev/null
for s in "$@"; do
  line="$fam $sch $s"
  for amp in --amp --disable_amp; do
    o=$fam.$sch.$s$amp
    "$BIN/ar-tune" -i "$fam.calib.ars" --model "$M" --scheme "$sch" --iters 50 --batch_size 8 --seed "$s" \
        --threads 1 $amp --quiet -o "$o.ars"
    rm -rf "$o"; "$BIN/ar-pack" --quiet -i "$o.ars" --model "$M" --format auto_round -o "$o"
    p=$("$BIN/ar-eval" --model "$o" --text "$MODELS/heldout.txt" --seqlen 256 --threads 1 --json |
        "$PY" -c 'import json, sys; print(json.load(sys.stdin)["ppl"])')
    line="$line | $amp $p"; rm -rf "$o" "$o.ars"
  done
  echo "$line"
done
