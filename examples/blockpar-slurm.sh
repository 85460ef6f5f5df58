#!/bin/sh
# Block-parallel tuning on a Slurm cluster (docs/parallel.md): one array task
# per range of BLOCKS_PER_TASK blocks (ar-calib --upto-block A, then ar-tune
# --blocks A-B --disable_quanted_input), then one job, started when every task
# has succeeded, that merges the ranges with ar-pack. The result is the model
# one whole `ar-tune --disable_quanted_input` run makes, byte for byte.
#
#   MODEL=/shared/llama DATA=/shared/calib.txt OUT=/shared/run1 sh examples/blockpar-slurm.sh
#
# submits the jobs (sbatch) and prints their ids. MODEL, DATA, OUT and AR_BIN
# must be paths every node reads (OUT: also writes). Settings, with defaults:
#   BLOCKS_PER_TASK=4  SCHEME=W4A16  ITERS=200  NSAMPLES=128  SEQLEN=2048
#   BATCH=8  SEED=42  THREADS=16 (cores per task: every task uses the same,
#   since sums depend on it)  FORMAT=auto_round  SBATCH_ARGS="" (e.g.
#   "--partition=cpu --time=12:00:00")
# The script is also what each job runs: "task" (SLURM_ARRAY_TASK_ID picks the
# range) and "merge".
set -eu
: "${MODEL:?MODEL not set}" "${DATA:?DATA not set}" "${OUT:?OUT not set}"
AR_BIN=${AR_BIN:-$(cd "$(dirname "$0")/.." && pwd)/bin}
BLOCKS_PER_TASK=${BLOCKS_PER_TASK:-4}
SCHEME=${SCHEME:-W4A16}; ITERS=${ITERS:-200}; NSAMPLES=${NSAMPLES:-128}; SEQLEN=${SEQLEN:-2048}
BATCH=${BATCH:-8}; SEED=${SEED:-42}; THREADS=${THREADS:-16}; FORMAT=${FORMAT:-auto_round}
export MODEL DATA OUT AR_BIN BLOCKS_PER_TASK SCHEME ITERS NSAMPLES SEQLEN BATCH SEED THREADS FORMAT

# num_hidden_layers of config.json (of text_config for a vision-language model: the last one found)
nblocks=$(sed -n 's/.*"num_hidden_layers": *\([0-9][0-9]*\).*/\1/p' "$MODEL/config.json" | tail -1)
[ -n "$nblocks" ] || { echo "blockpar-slurm.sh: $MODEL/config.json: no num_hidden_layers" >&2; exit 1; }
ntasks=$(( (nblocks + BLOCKS_PER_TASK - 1) / BLOCKS_PER_TASK ))
# range T: "A-B"
range() {
  a=$(( $1 * BLOCKS_PER_TASK )); b=$(( a + BLOCKS_PER_TASK - 1 ))
  [ "$b" -lt "$nblocks" ] || b=$(( nblocks - 1 ))
  echo "$a-$b"
}
fp="--batch_size $BATCH --threads $THREADS"

case ${1:-submit} in
submit)
  mkdir -p "$OUT"
  self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
  # shellcheck disable=SC2086
  job=$(sbatch --parsable ${SBATCH_ARGS:-} --job-name=ar-blockpar --cpus-per-task="$THREADS" \
        --array=0-$((ntasks - 1)) --output="$OUT/task-%a.log" --export=ALL "$self" task)
  job=${job%%;*}
  # shellcheck disable=SC2086
  merge=$(sbatch --parsable ${SBATCH_ARGS:-} --job-name=ar-blockpar-merge --dependency=afterok:"$job" \
          --output="$OUT/merge.log" --export=ALL "$self" merge)
  echo "blockpar-slurm.sh: $nblocks blocks in $ntasks tasks: array job $job, merge job ${merge%%;*}"
  ;;
task)
  r=$(range "${SLURM_ARRAY_TASK_ID:?not an array task}"); a=${r%-*}
  calib=$OUT/calib-$r.ars
  if [ "$a" = 0 ]; then
    "$AR_BIN/ar-calib" --model "$MODEL" --dataset "$DATA" --nsamples "$NSAMPLES" --seqlen "$SEQLEN" --seed "$SEED" \
        --quiet -o "$calib"
  else   # shellcheck disable=SC2086
    "$AR_BIN/ar-calib" --model "$MODEL" --dataset "$DATA" --nsamples "$NSAMPLES" --seqlen "$SEQLEN" --seed "$SEED" \
        --upto-block "$a" $fp --quiet -o "$calib"
  fi
  # shellcheck disable=SC2086
  "$AR_BIN/ar-tune" -i "$calib" --blocks "$r" --scheme "$SCHEME" --iters "$ITERS" --seed "$SEED" \
      --disable_quanted_input $fp --quiet -o "$OUT/blocks-$r.ars"
  rm -f "$calib"
  ;;
merge)
  set --
  t=0
  while [ "$t" -lt "$ntasks" ]; do set -- "$@" -i "$OUT/blocks-$(range $t).ars"; t=$((t + 1)); done
  rm -rf "$OUT/model"
  "$AR_BIN/ar-pack" "$@" --format "$FORMAT" -o "$OUT/model" --quiet
  echo "blockpar-slurm.sh: wrote $OUT/model"
  ;;
*) echo "usage: sh blockpar-slurm.sh [submit|task|merge]" >&2; exit 2 ;;
esac
