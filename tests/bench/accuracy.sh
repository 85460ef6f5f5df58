#!/bin/sh
# Accuracy of ar-tune on tiny-llama against AutoRound's published figures
# ($AR_SHARED/models/tiny-llama/README.md), end to end:
#   ar-calib (128 windows x 512 tokens of the first 3 MB of the training
#   corpus, seed 42) -> ar-tune -> ar-pack --format fake -> ar-eval
#   (heldout.txt, 200 windows of 512).
# Prints one table row per configuration. Long (each 200-iteration run is
# 1200 block iterations: ~20+ min on 2 cores, minutes on 16), so it is not
# part of `make bench`; run it by hand:
#   AR_BIN=$PWD/bin AR_SHARED=/work/shared sh tests/bench/accuracy.sh
# Environment:
#   AR_ACC_CONFIGS   which rows, default "optrtn w4 w2" (also: rtn w4light)
#   AR_ACC_TUNE_ARGS extra ar-tune arguments, e.g. "--device cpu --threads 16"
#   AR_ACC_MODEL     model folder (default $AR_SHARED/models/tiny-llama)
#   AR_ACC_CALIB_TXT calibration text (default: cut from $AR_SHARED/data/corpus)
#   AR_ACC_HELDOUT   evaluation text (default $AR_ACC_MODEL/heldout.txt)
#   AR_ACC_OUT       work folder (default a temporary one, removed at the end)
# Exit status 0 when every row meets its target, 1 otherwise (never on time).
: "${AR_BIN:?AR_BIN not set}"
SHARED=${AR_SHARED:-/work/shared}
M=${AR_ACC_MODEL:-$SHARED/models/tiny-llama}
HELDOUT=${AR_ACC_HELDOUT:-$M/heldout.txt}
CONFIGS=${AR_ACC_CONFIGS:-optrtn w4 w2}
if [ -n "${AR_ACC_OUT:-}" ]; then W=$AR_ACC_OUT; mkdir -p "$W"
else W=$(mktemp -d); trap 'rm -rf "$W"' EXIT; fi

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

if [ -n "${AR_ACC_CALIB_TXT:-}" ]; then cp "$AR_ACC_CALIB_TXT" "$W/calib3m.txt"
else zstd -dc "$SHARED/data/corpus/gutenberg_en_prose.txt.zst" | head -c 3000000 > "$W/calib3m.txt"; fi
"$AR_BIN/ar-calib" --model "$M" --dataset "$W/calib3m.txt" --nsamples 128 --seqlen 512 -o "$W/calib.ars" || exit 1

# config -> "ar-tune arguments|target PPL|AutoRound PPL"
row() {
  case $1 in
    rtn)     echo "--scheme W4A16 --iters 0 --disable_opt_rtn|39.57|39.565" ;;
    optrtn)  echo "--scheme W4A16 --iters 0|39.28|39.278" ;;
    w4)      echo "--scheme W4A16 --iters 200|39.00|38.998" ;;
    w4light) echo "--scheme W4A16 --recipe light|39.30|-" ;;
    w2)      echo "--scheme W2A16G64 --iters 200|42.8|42.705" ;;
    *)       echo "" ;;
  esac
}

printf '%-8s %-42s %9s %9s %8s %9s %s\n' config ar-tune tune_s ppl target autoround result > "$W/table"
status=0
for cfg in $CONFIGS; do
  spec=$(row "$cfg")
  [ -n "$spec" ] || { echo "accuracy.sh: unknown configuration $cfg" >&2; status=1; continue; }
  args=${spec%%|*}; rest=${spec#*|}; target=${rest%%|*}; ref=${rest#*|}
  t0=$(now)
  # shellcheck disable=SC2086
  if ! "$AR_BIN/ar-tune" -i "$W/calib.ars" --model "$M" $args ${AR_ACC_TUNE_ARGS:-} --progress \
        -o "$W/$cfg.ars" 2> "$W/$cfg.tune.log"; then
    tail -3 "$W/$cfg.tune.log"; status=1; continue
  fi
  tune_s=$(elapsed "$t0")
  grep 'block .*/' "$W/$cfg.tune.log" | sed "s/^/  $cfg: /"
  rm -rf "$W/$cfg.fake"
  "$AR_BIN/ar-pack" -i "$W/$cfg.ars" --model "$M" --format fake -o "$W/$cfg.fake" || { status=1; continue; }
  ppl=$("$AR_BIN/ar-eval" --model "$W/$cfg.fake" --text "$HELDOUT" --seqlen 512 --windows 200 --json |
        sed -n 's/.*"ppl": *\([0-9.]*\).*/\1/p')
  res=$(awk -v p="$ppl" -v t="$target" 'BEGIN { print (p != "" && p + 0 <= t + 0) ? "ok" : "MISS" }')
  [ "$res" = ok ] || status=1
  printf '%-8s %-42s %9s %9s %8s %9s %s\n' "$cfg" "$args" "$tune_s" "${ppl:-?}" "$target" "$ref" "$res" >> "$W/table"
  cat "$W/table" | tail -1
done
echo "== accuracy (heldout.txt, 200 x 512; BF16 38.787)"
cat "$W/table"
exit $status
