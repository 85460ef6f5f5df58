#!/bin/sh
# Side by side with the peer: intel/auto-round (CPU torch, build/venv) and ar
# quantize the same model on the same calibration windows, with the same
# threads, scheme, iterations, samples, sequence length and seed; ar-eval then
# scores both outputs on the same held-out text. Prints one table row per
# scheme: both quantization times, their ratio, both peak RSS, both PPLs.
#
#   ar-calib  makes the windows (NSAMPLES x SEQLEN tokens at seeded random
#             offsets of CALIB_TXT) -> calib.ars
#   AutoRound tests/bench/peer_autoround.py reads calib.ars's input_ids and
#             passes them to AutoRound as its dataset; quantize_and_save(FORMAT)
#   ar        ar-tune -i calib.ars ... | ar-pack --format FORMAT
#   ar-eval   both folders, HELDOUT, EVAL_WINDOWS windows of EVAL_SEQLEN
#
# Times: "AutoRound s" is AutoRound's own quantize_and_save wall time in the
# process (calibration caching, tuning, packing, saving; model loading and
# Python imports excluded, they are shown as "AR proc s", the whole process);
# "ar s" is ar-tune + ar-pack wall time (ar-calib's embedding pass is shared
# and shown once). ratio = AutoRound s / ar s (> 1: ar is faster).
# CPU s: user + system seconds of all threads: AutoRound's around
# quantize_and_save (getrusage in the process), ar's of ar-tune + ar-pack
# (/usr/bin/time -v); cpu_ratio = AutoRound CPU s / ar CPU s.
# Peak RSS: /usr/bin/time -v of each process (ar: the larger of ar-tune and
# ar-pack). AutoRound runs with its defaults otherwise (amp, torch.compile,
# low_gpu_mem_usage ...); its amp decision on this CPU is printed.
#
# Not part of `make test`; `make bench` runs it only with AR_BENCH_PEER=1.
# By hand:
#   AR_BIN=$PWD/bin AR_SHARED=/work/shared sh tests/bench/peer.sh
# Environment (defaults in brackets):
#   MODEL        model folder [$AR_SHARED/models/tiny-llama]
#   SCHEME       space-separated schemes [W4A16 W2A16G64]
#   NSAMPLES [8]  SEQLEN [256]  ITERS [20]  SEED [42]  BATCH [8]
#   THREADS      threads for both (OMP/MKL/OpenBLAS, torch.set_num_threads,
#                ar-tune --threads) [all cores]
#   FORMAT       what both save and ar-eval reads [auto_round]
#   CALIB_TXT    calibration text [first 3 MB of the shared Gutenberg corpus]
#   CALIB_ARS    a ready calibration stream used as is by both (NSAMPLES, SEQLEN,
#                CALIB_TXT then unused) [none: ar-calib makes one]
#   HELDOUT      evaluation text [$MODEL/heldout.txt]
#   EVAL_WINDOWS [40; "all": every window]  EVAL_SEQLEN [512]
#   AR_FORMAT    what ar-pack writes for ar's side [FORMAT]
#   PEER_EXTRA   JSON of extra AutoRound keyword arguments, e.g.
#                '{"enable_torch_compile": false}' [{}]
#   AR_TUNE_ARGS extra ar-tune arguments []
#   PEER_OUT     work folder, kept [a temporary one, removed]
#   PEER_INSTALL=1  pip-install auto-round (and CPU torch) into build/venv
#                when it does not import
# Exit status: 0 when every step ran (never judged on time or PPL), 1 otherwise.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$(cd "${AR_BIN:-$ROOT/bin}" && pwd) || exit 1
SHARED=${AR_SHARED:-$ROOT/../shared}
MODEL=${MODEL:-$SHARED/models/tiny-llama}
SCHEMES=${SCHEME:-W4A16 W2A16G64}
NSAMPLES=${NSAMPLES:-8} SEQLEN=${SEQLEN:-256} ITERS=${ITERS:-20} SEED=${SEED:-42} BATCH=${BATCH:-8}
THREADS=${THREADS:-$(nproc)}
FORMAT=${FORMAT:-auto_round}
AR_FORMAT=${AR_FORMAT:-$FORMAT}
HELDOUT=${HELDOUT:-$MODEL/heldout.txt}
EVAL_WINDOWS=${EVAL_WINDOWS:-40} EVAL_SEQLEN=${EVAL_SEQLEN:-512}
PEER_EXTRA=${PEER_EXTRA:-'{}'}
PY=$ROOT/build/venv/bin/python
if [ -n "${PEER_OUT:-}" ]; then W=$PEER_OUT; mkdir -p "$W"
else W=$(mktemp -d); trap 'rm -rf "$W"' EXIT; fi

if ! "$PY" -c 'import auto_round, torch' 2>/dev/null; then
  if [ "${PEER_INSTALL:-0}" = 1 ]; then
    [ -x "$PY" ] || python3 -m venv "$ROOT/build/venv" || exit 1
    "$PY" -c 'import torch' 2>/dev/null ||
      "$PY" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu || exit 1
    "$PY" -m pip install -q auto-round transformers accelerate safetensors || exit 1
  else
    echo "peer.sh: build/venv lacks auto_round/torch; rerun with PEER_INSTALL=1" >&2; exit 1
  fi
fi

export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# peak RSS in MiB from a /usr/bin/time -v log
rss() { awk -F': *' '/Maximum resident set size/ { printf "%.0f", $2 / 1024 }' "$1"; }
# user + system CPU seconds from /usr/bin/time -v logs, summed
cpu() { awk -F': *' '/(User|System) time \(seconds\)/ { s += $2 } END { printf "%.1f", s }' "$@"; }
ppl() { # FOLDER LOGNAME -> perplexity, or ? (the log goes to the work folder)
  wargs="--windows $EVAL_WINDOWS"; [ "$EVAL_WINDOWS" = all ] && wargs=
  # shellcheck disable=SC2086
  "$BIN/ar-eval" --model "$1" --text "$HELDOUT" --seqlen "$EVAL_SEQLEN" $wargs \
      --threads "$THREADS" --json 2> "$W/$2.eval.log" | sed -n 's/.*"ppl": *\([0-9.]*\).*/\1/p' | grep . || echo '?'
}

t0=$(now)
if [ -n "${CALIB_ARS:-}" ]; then
  cp "$CALIB_ARS" "$W/calib.ars" || exit 1
  # the stream's own window count and length (input_ids [n, L]), for the banner
  set -- $("$BIN/ar-dump" "$W/calib.ars" 2>/dev/null | sed -n 's/.*input_ids.*\[\([0-9]*\), *\([0-9]*\)\].*/\1 \2/p' | head -1)
  NSAMPLES=${1:-?} SEQLEN=${2:-?}
else
  if [ -n "${CALIB_TXT:-}" ]; then TXT=$CALIB_TXT
  else TXT=$W/calib3m.txt
    zstd -dc "$SHARED/data/corpus/gutenberg_en_prose.txt.zst" | head -c 3000000 > "$TXT"; fi
  "$BIN/ar-calib" --model "$MODEL" --dataset "$TXT" --nsamples "$NSAMPLES" --seqlen "$SEQLEN" \
      --seed "$SEED" -o "$W/calib.ars" || exit 1
fi
calib_s=$(elapsed "$t0")
base_ppl=$(ppl "$MODEL" bf16)

echo "== peer.sh: $(basename "$MODEL"), $NSAMPLES x $SEQLEN windows, $ITERS iters, seed $SEED, batch $BATCH, $THREADS threads, format $FORMAT"
echo "   CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "   $("$PY" -c 'import auto_round, torch, transformers; print("auto-round", auto_round.__version__, "torch", torch.__version__, "transformers", transformers.__version__)' 2>/dev/null)"
echo "   ar-calib ${calib_s}s; BF16 PPL $base_ppl (ar-eval, $EVAL_WINDOWS x $EVAL_SEQLEN of $(basename "$HELDOUT"))"
status=0
printf '%-12s %-9s %9s %9s %7s %7s %9s %9s %9s %9s %-6s %9s %9s %9s\n' model scheme AutoRound_s AR_proc_s ar_s ratio \
    AR_rss_MiB ar_rss_MiB AR_ppl ar_ppl AR_amp AR_cpu_s ar_cpu_s cpu_ratio > "$W/table"
for S in $SCHEMES; do
  # AutoRound
  rm -rf "$W/autoround-$S"
  t0=$(now)
  # shellcheck disable=SC2086
  /usr/bin/time -v -o "$W/autoround-$S.time" "$PY" "$ROOT/tests/bench/peer_autoround.py" \
      --model "$MODEL" --calib "$W/calib.ars" --scheme "$S" --iters "$ITERS" --batch_size "$BATCH" \
      --seed "$SEED" --threads "$THREADS" --format "$FORMAT" --extra "$PEER_EXTRA" \
      -o "$W/autoround-$S" > "$W/autoround-$S.log" 2>&1 || { tail -5 "$W/autoround-$S.log"; status=1; }
  ar_proc_s=$(elapsed "$t0")
  line=$(sed -n 's/^peer_autoround //p' "$W/autoround-$S.log")
  ar_q_s=$(printf '%s' "$line" | sed -n 's/.*"quantize_s": *\([0-9.]*\).*/\1/p')
  amp=$(printf '%s' "$line" | sed -n 's/.*"amp": *\([a-z]*\).*/\1/p')
  peer_cpu=$(printf '%s' "$line" | sed -n 's/.*"quantize_cpu_s": *\([0-9.]*\).*/\1/p')
  # the folder AutoRound wrote (it may add a subfolder)
  peer_dir=$(dirname "$(find "$W/autoround-$S" -name config.json | head -1)")
  # ar
  t0=$(now)
  # shellcheck disable=SC2086
  /usr/bin/time -v -o "$W/ar-$S.tune.time" "$BIN/ar-tune" -i "$W/calib.ars" --model "$MODEL" --scheme "$S" \
      --iters "$ITERS" --batch_size "$BATCH" --seed "$SEED" --threads "$THREADS" ${AR_TUNE_ARGS:-} \
      -o "$W/ar-$S.ars" 2> "$W/ar-$S.tune.log" || { tail -3 "$W/ar-$S.tune.log"; status=1; }
  rm -rf "$W/ar-$S"
  /usr/bin/time -v -o "$W/ar-$S.pack.time" "$BIN/ar-pack" --quiet -i "$W/ar-$S.ars" --model "$MODEL" \
      --format "$AR_FORMAT" -o "$W/ar-$S" || status=1
  ours_s=$(elapsed "$t0")
  ours_cpu=$(cpu "$W/ar-$S.tune.time" "$W/ar-$S.pack.time")
  cpu_ratio=$(awk -v a="${peer_cpu:-0}" -v b="$ours_cpu" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else print "?" }')
  r1=$(rss "$W/ar-$S.tune.time"); r2=$(rss "$W/ar-$S.pack.time")
  ours_rss=$(( ${r1:-0} > ${r2:-0} ? ${r1:-0} : ${r2:-0} ))
  ratio=$(awk -v a="${ar_q_s:-0}" -v b="$ours_s" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else print "?" }')
  printf '%-12s %-9s %9s %9s %7s %7s %9s %9s %9s %9s %-6s %9s %9s %9s\n' "$(basename "$MODEL")" "$S" "${ar_q_s:-?}" "$ar_proc_s" \
      "$ours_s" "$ratio" "$(rss "$W/autoround-$S.time")" "$ours_rss" \
      "$( [ -n "$peer_dir" ] && [ "$peer_dir" != . ] && ppl "$peer_dir" "autoround-$S" || echo '?')" "$(ppl "$W/ar-$S" "ar-$S")" \
      "${amp:-?}" "${peer_cpu:-?}" "$ours_cpu" "$cpu_ratio" >> "$W/table"
  tail -1 "$W/table"
done
echo "== peer (AutoRound s: quantize_and_save; ratio = AutoRound s / ar s; RSS: /usr/bin/time -v; cpu: user+sys s)"
cat "$W/table"
exit $status
