#!/bin/sh
# auto-round: AutoRound's flags reach the right tools (--dry_run), usage
# errors exit 2 with a message, a failing stage is named and sets the exit
# status, RTN needs no data, and the piped run and the --keep_streams run
# write byte-identical models (the driver adds nothing of its own).
set -eu
: "${AR_BIN:?}" "${AR_SHARED:?}"
M="$AR_SHARED/models/stories260K"
DATA="$AR_SHARED/data/tinystories/TinyStories-validation-head.txt"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0
ok() { echo "ok   $1"; }
bad() { echo "FAIL $1"; fail=1; }

# expect_rc RC PATTERN NAME -- ARGS: auto-round ARGS exits RC and prints PATTERN (stdout+stderr)
expect_rc() {
  rc=$1 pat=$2 name=$3; shift 4
  set +e; out=$("$AR_BIN/auto-round" "$@" 2>&1); got=$?; set -e
  if [ "$got" = "$rc" ] && printf '%s' "$out" | grep -q -- "$pat"; then ok "$name"
  else bad "$name: exit $got (want $rc), output: $out"; fi
}

# ---- flag mapping ------------------------------------------------------------
cmd=$("$AR_BIN/auto-round" "$M" --dataset "$DATA" --scheme W2A16G64 --asym --iters 7 --lr 0.01 --minmax_lr 0.02 \
      --nsamples 9 --seqlen 33 --batch_size 3 --gradient_accumulate_steps 2 --seed 5 --format auto_gptq \
      --output_dir "$tmp/o" --device cpu --low_gpu_mem_usage --disable_eval --dry_run)
line() { printf '%s\n' "$cmd" | grep "/$1 "; }
has() { printf '%s\n' "$2" | grep -q -- "$3" && ok "$1" || bad "$1: '$3' missing in: $2"; }
has "calib gets model" "$(line ar-calib)" "--model $M"
has "calib gets data" "$(line ar-calib)" "--dataset $DATA --nsamples 9 --seqlen 33 --seed 5 -o -"
has "tune gets scheme" "$(line ar-tune)" "-i - --model $M --scheme W2A16G64 --asym"
has "tune gets tuning" "$(line ar-tune)" "--iters 7 --lr 0.01 --minmax_lr 0.02 --nsamples 9 --batch_size 3 --gradient_accumulate_steps 2 --seed 5"
has "pack gets format" "$(line ar-pack)" "-i - --format auto_gptq -o $tmp/o"
[ "$(printf '%s\n' "$cmd" | wc -l)" = 3 ] && ok "three stages" || bad "three stages: $cmd"

cmd=$("$AR_BIN/auto-round" --model "$M" --iters 0 --disable_opt_rtn --dry_run)
case "$cmd" in *ar-calib*) bad "RTN runs ar-calib: $cmd";; *"ar-tune --model $M --iters 0 --disable_opt_rtn -o -"*) ok "RTN: no calibration";;
  *) bad "RTN command: $cmd";; esac
cmd=$("$AR_BIN/auto-round" --model "$M" --format gguf:q4_k_m --iters 0 --disable_opt_rtn --dry_run)
has "gguf format sets the scheme" "$cmd" "--scheme GGUF:Q4_K_M"
cmd=$("$AR_BIN/auto-round" --model "$M" --dataset "$DATA" --keep_streams "$tmp/s" --dry_run)
has "keep_streams: calib file" "$cmd" "-o $tmp/s/calib.ars &&"
has "keep_streams: tune file" "$cmd" "-i $tmp/s/calib.ars --model $M -o $tmp/s/tune.ars &&"
has "keep_streams: pack file" "$cmd" "ar-pack -i $tmp/s/tune.ars"

# A GGUF format beside another scheme's formats gets a stream tuned for its own
# scheme from the same calibration stream (a temporary file, or --keep_streams).
# --layout plain: ar's own paths (OUT/<format>); the default, AutoRound's layout,
# leaves the naming to ar-pack --layout autoround with the whole format list.
cmd=$("$AR_BIN/auto-round" "$M" --dataset "$DATA" --scheme W4A16 --format auto_round,gguf:q4_k_m,fake --output_dir "$tmp/o" --layout plain --dry_run)
has "multi-pass: calibration to a file" "$cmd" "ar-calib .*-o $tmp/o.streams.[0-9]*/calib.ars &&"
has "multi-pass: HF formats from W4A16" "$(printf '%s' "$cmd" | tr -d '\n')" "scheme W4A16 -o - |.*ar-pack -i - --format auto_round,fake -o $tmp/o &&"
has "multi-pass: gguf from GGUF:Q4_K_M" "$(printf '%s' "$cmd" | tr -d '\n')" "scheme GGUF:Q4_K_M -o - |  .*ar-pack -i - --format gguf:q4_k_m -o $tmp/o/gguf-q4_k_m"
case "$cmd" in *--layout*) bad "--layout plain passes a layout to ar-pack: $cmd";; *) ok "--layout plain: ar-pack's defaults";; esac
cmd=$("$AR_BIN/auto-round" "$M" --dataset "$DATA" --scheme W4A16 --format auto_round,gguf:q4_k_m,fake --output_dir "$tmp/o" --dry_run)
has "AutoRound layout: HF pass" "$(printf '%s' "$cmd" | tr -d '\n')" "ar-pack -i - --format auto_round,fake -o $tmp/o --layout autoround --layout_formats auto_round,gguf:q4_k_m,fake &&"
has "AutoRound layout: gguf pass" "$(printf '%s' "$cmd" | tr -d '\n')" "ar-pack -i - --format gguf:q4_k_m -o $tmp/o --layout autoround --layout_formats auto_round,gguf:q4_k_m,fake\$"
has "AutoRound layout: one pass, no format list" "$("$AR_BIN/auto-round" "$M" --iters 0 --disable_opt_rtn --output_dir "$tmp/o" --dry_run)" "ar-pack -i - --format auto_round -o $tmp/o --layout autoround\$"
expect_rc 2 "layout: 'flat' is not autoround or plain" "bad --layout" -- "$M" --layout flat

# Recipes by program name (a symlink anywhere: the tools are found through /proc/self/exe).
for r in best light rtn opt-rtn; do ln -s "$AR_BIN/auto-round" "$tmp/auto-round-$r"; done
has "best recipe" "$("$tmp/auto-round-best" "$M" --dataset "$DATA" --dry_run)" "--recipe best --nsamples 512"
has "light recipe" "$("$tmp/auto-round-light" "$M" --dataset "$DATA" --dry_run)" "--recipe light"
has "rtn recipe" "$("$tmp/auto-round-rtn" "$M" --dry_run)" "ar-tune --model $M --iters 0 --disable_opt_rtn"
has "opt-rtn recipe" "$("$tmp/auto-round-opt-rtn" "$M" --dataset "$DATA" --dry_run)" "ar-tune -i - --model $M --iters 0 -o"

# ---- usage errors --------------------------------------------------------------
expect_rc 2 "dataset FILE is required" "tuning without --dataset" -- --model "$M"
expect_rc 2 "dataset FILE is required" "opt-RTN without --dataset" -- --model "$M" --iters 0
expect_rc 2 "give the model" "no model" -- --iters 0
expect_rc 2 "unknown argument '--frobnicate'" "unknown flag" -- "$M" --frobnicate
expect_rc 2 "AutoRound option not supported yet; evaluation is a separate tool" "--tasks" -- "$M" --tasks lambada
expect_rc 2 "iters: 'x' is not an integer" "bad --iters" -- "$M" --iters x
expect_rc 2 "recipe: 'fast'" "bad --recipe" -- "$M" --recipe fast
if ! "$AR_BIN/ar-tune" --help | grep -q -- --enable_alg_ext; then
  expect_rc 2 "enable_alg_ext: not supported yet" "--enable_alg_ext" -- "$M" --dataset "$DATA" --enable_alg_ext --dry_run
fi
if ! "$AR_BIN/ar-tune" --help | grep -q -- --device; then
  expect_rc 2 "device cuda: not supported yet" "--device cuda" -- "$M" --dataset "$DATA" --device cuda --dry_run
else
  has "--device N is cuda:N" "$("$AR_BIN/auto-round" "$M" --dataset "$DATA" --device 1 --dry_run)" "--device cuda:1 -o"
  has "--device cpu passed on" "$("$AR_BIN/auto-round" "$M" --dataset "$DATA" --device cpu --dry_run)" "--device cpu -o"
fi

# ---- runs ----------------------------------------------------------------------
# A stage's failure: its own message, then auto-round names it; its exit status carries over.
expect_rc 1 "ar-calib failed (exit status 1)" "missing dataset file" -- "$M" --dataset "$tmp/none.txt" \
  --output_dir "$tmp/x" --quiet
expect_rc 2 "ar-tune failed (exit status 2)" "ar-tune usage error" -- "$M" --bits 99 --iters 0 --disable_opt_rtn \
  --output_dir "$tmp/x" --quiet
[ ! -e "$tmp/x" ] && ok "no output after a failure" || bad "output left after a failure"

# Plain RTN without data, two formats, --layout plain: OUT/<format> each, loadable by ar-eval.
"$AR_BIN/auto-round" --model "$M" --iters 0 --disable_opt_rtn --format auto_round,fake --output_dir "$tmp/rtn" --quiet \
  --layout plain
for f in auto_round fake; do
  ppl=$("$AR_BIN/ar-eval" --quiet --json --threads 1 --model "$tmp/rtn/$f" --text "$DATA" --seqlen 128 --windows 4 |
        sed -n 's/.*"ppl": *\([0-9.]*\).*/\1/p')
  if awk -v p="$ppl" 'BEGIN { exit !(p > 1 && p < 20) }'; then ok "RTN $f: ppl $ppl"; else bad "RTN $f: ppl '$ppl'"; fi
done

# The same with RTN for real: both outputs, both measured by ar-eval.
"$AR_BIN/auto-round" --model "$M" --iters 0 --disable_opt_rtn --format auto_round,gguf:q4_0 --output_dir "$tmp/two/out" --quiet \
  --layout plain
for f in auto_round gguf-q4_0; do
  ppl=$("$AR_BIN/ar-eval" --quiet --json --threads 1 --model "$tmp/two/out/$f" --text "$DATA" --seqlen 128 --windows 4 |
        sed -n 's/.*"ppl": *\([0-9.]*\).*/\1/p')
  if awk -v p="$ppl" 'BEGIN { exit !(p > 1 && p < 20) }'; then ok "two formats: $f ppl $ppl"; else bad "two formats: $f ppl '$ppl'"; fi
done

# ---- AutoScheme: --schemes S... --bits X adds ar-scheme between ar-calib and ar-tune
cmd=$("$AR_BIN/auto-round" "$M" --dataset "$DATA" --avg_bits 3 --options W2A16G64 W4A16 \
      --shared_layers q_proj k_proj --shared_layers 'up_proj,gate_proj' 'o_proj,down_proj' --ignore_scale_zp_bits \
      --output_dir "$tmp/as" --dry_run)
has "scheme stage after calib, piped" "$(printf '%s\n' "$cmd" | sed -n 2p)" "/ar-scheme -i - --model $M --avg_bits 3 --options W2A16G64,W4A16 --shared_layers q_proj,k_proj --shared_layers up_proj,gate_proj --shared_layers o_proj,down_proj --ignore_scale_zp_bits -o -"
has "tune reads the scheme stream" "$(line ar-tune)" "-i - "
case "$(line ar-tune)" in *--bits*|*--scheme*) bad "AutoScheme: --bits or --scheme reach ar-tune: $(line ar-tune)";;
  *) ok "AutoScheme: ar-tune gets no --bits";; esac
cmd=$("$AR_BIN/auto-round" "$M" --dataset "$DATA" --target_bits 3 --options W2A16G64,W4A16 --keep_streams "$tmp/ks" \
      --output_dir "$tmp/as" --dry_run)
has "kept scheme stream" "$(line ar-scheme)" "-i $tmp/ks/calib.ars --model $M --avg_bits 3 --options W2A16G64,W4A16 -o $tmp/ks/scheme.ars"
has "tune reads the kept scheme stream" "$(line ar-tune)" "-i $tmp/ks/scheme.ars"

# AutoRound 0.16's spelling: --bits is a float, the AutoScheme average when
# --schemes gives the candidates; --avg_bits/--target_bits and --options are
# its older names. Every spelling below is the same plan, command for command.
dry() { "$AR_BIN/auto-round" "$M" --dataset "$DATA" --output_dir "$tmp/as" --dry_run "$@" 2>&1 || echo "(exit $?)"; }
ref=$(dry --avg_bits 3 --options W2A16G64,W4A16)
for args in "--schemes W2A16G64,W4A16 --bits 3.0" "--schemes W2A16G64,W4A16 --bits 3" \
            "--schemes W2A16G64 W4A16 --bit=3e0" "--schemes=W2A16G64,W4A16 --bits 3.0" \
            "--scheme W4A16 --schemes W2A16G64,W4A16 --bits 3.0" "--bits 3.0 --target_bits 3 --options W2A16G64,W4A16" \
            "--schemes W2A16G64,W4A16 --options W2A16G64,W4A16 --bits 3.0" "--avg_bits 3 --bits 3.00 --schemes W2A16G64,W4A16"; do
  # shellcheck disable=SC2086
  got=$(dry $args)
  [ "$got" = "$ref" ] && ok "$args: same commands as --avg_bits 3 --options" || bad "$args: $got"
done
has "fractional --bits is the average" "$(dry --schemes W2A16G64,W4A16 --bits 2.50)" "--avg_bits 2.5 --options W2A16G64,W4A16 -o"
# Without --schemes, --bits (and so --avg_bits) is the weight bits, a whole number.
for args in "--bits 3.0" "--avg_bits 3"; do
  # shellcheck disable=SC2086
  has "$args without --schemes: ar-tune --bits 3" "$(dry $args)" "ar-tune -i - --model $M --bits 3 -o -"
done
[ "$(dry --shared_layers q_proj --ignore_scale_zp_bits)" = "$(dry)" ] && ok "AutoScheme flags without --schemes change nothing" ||
  bad "AutoScheme flags without --schemes: $(dry --shared_layers q_proj --ignore_scale_zp_bits)"

# usage errors: one message, exit 2, nothing written
expect_rc 2 "schemes: give the average bits to aim for with --bits" "--schemes needs --bits" -- \
  "$M" --dataset "$DATA" --schemes W2A16G64,W4A16 --output_dir "$tmp/u"
expect_rc 2 "schemes: give the average bits" "--options needs --bits" -- "$M" --dataset "$DATA" --options W2A16G64,W4A16
expect_rc 2 "bits 3.5: weight bits must be a whole number" "fractional --bits without --schemes" -- \
  "$M" --dataset "$DATA" --bits 3.5 --output_dir "$tmp/u"
expect_rc 2 "weight bits must be a whole number" "fractional --avg_bits without --options" -- \
  "$M" --dataset "$DATA" --avg_bits 2.5
expect_rc 2 "scheme and --schemes cannot be used together" "--scheme W8A16 with --schemes" -- \
  "$M" --dataset "$DATA" --scheme W8A16 --schemes W2A16G64,W4A16 --bits 3
expect_rc 2 "conflicting values for --bits: '4' was already given, then --avg_bits '3'" "--bits then --avg_bits" -- \
  "$M" --dataset "$DATA" --bits 4 --avg_bits 3 --schemes W2A16G64,W4A16
expect_rc 2 "conflicting values for --schemes" "--schemes then --options" -- \
  "$M" --dataset "$DATA" --schemes W2A16G64,W4A16 --options W2A16G64,W8A16 --bits 3
expect_rc 2 "conflicting values for --schemes" "--options twice" -- \
  "$M" --dataset "$DATA" --options W2A16G64 --options W4A16 --bits 3
expect_rc 2 "bits: 'three' is not a number" "--bits not a number" -- "$M" --dataset "$DATA" --bits three
expect_rc 2 "schemes: no scheme given" "--schemes empty" -- "$M" --dataset "$DATA" --schemes , --bits 3
expect_rc 2 "give one" "--schemes with --layer_config" -- "$M" --dataset "$DATA" --schemes W4A16 --bits 3 \
  --layer_config "$tmp/lc.json"
expect_rc 2 "run of its own" "--schemes with a GGUF pass" -- "$M" --dataset "$DATA" --schemes W2A16G64,W4A16 --bits 3 \
  --format auto_round,gguf:q4_k_m
[ ! -e "$tmp/u" ] && ok "no output after a usage error" || bad "output left after a usage error"

# The same plan for real: ar-scheme prints the achieved average, and the two
# spellings choose the same layers and write the same model.
for v in avg:--avg_bits:3:--options schemes:--bits:3.0:--schemes; do
  IFS=: read -r name bflag bval sflag <<EOF_
$v
EOF_
  "$AR_BIN/auto-round" "$M" --dataset "$DATA" "$bflag" "$bval" "$sflag" W2A16G64,W4A16 --iters 2 --nsamples 8 \
    --seqlen 32 --progress --layout plain --output_dir "$tmp/mixed-$name" 2> "$tmp/mixed-$name.log" ||
    bad "$bflag $bval $sflag: run failed: $(tail -2 "$tmp/mixed-$name.log")"
  grep '^ar-scheme: avg bits' "$tmp/mixed-$name.log" > "$tmp/avg-$name.txt" || true
done
avg=$(sed -n 's/^ar-scheme: avg bits \([0-9.]*\) (target 3.0000,.*/\1/p' "$tmp/avg-avg.txt")
if [ -n "$avg" ] && awk -v a="$avg" 'BEGIN { exit !(a > 2 && a <= 3) }'; then ok "--avg_bits 3: achieved average $avg"
else bad "--avg_bits 3: no achieved average in: $(cat "$tmp/mixed-avg.log")"; fi
if [ -s "$tmp/avg-schemes.txt" ] && cmp -s "$tmp/avg-avg.txt" "$tmp/avg-schemes.txt"; then
  ok "--schemes --bits 3.0: same achieved average ($(cat "$tmp/avg-schemes.txt"))"
else bad "--schemes --bits 3.0 printed '$(cat "$tmp/avg-schemes.txt")', --avg_bits 3 '$(cat "$tmp/avg-avg.txt")'"; fi
if cmp -s "$tmp/mixed-avg/model.safetensors" "$tmp/mixed-schemes/model.safetensors" &&
   cmp -s "$tmp/mixed-avg/config.json" "$tmp/mixed-schemes/config.json"; then ok "both spellings write the same model"
else bad "--schemes --bits 3.0 and --avg_bits 3 --options wrote different models"; fi
if grep -q '"bits": *2' "$tmp/mixed-avg/config.json" && grep -q '"extra_config"' "$tmp/mixed-avg/config.json"; then
  ok "AutoScheme run writes a mixed-bits model"
else bad "no 2-bit layers in extra_config: $(cat "$tmp/mixed-avg/config.json")"; fi

# SignRound piped vs through kept streams: identical models, streams kept and valid.
q="--dataset $DATA --iters 2 --nsamples 4 --seqlen 32 --quiet --layout plain"
# shellcheck disable=SC2086
"$AR_BIN/auto-round" "$M" $q --output_dir "$tmp/piped"
# shellcheck disable=SC2086
"$AR_BIN/auto-round" "$M" $q --output_dir "$tmp/files" --keep_streams "$tmp/streams"
if cmp -s "$tmp/piped/model.safetensors" "$tmp/files/model.safetensors"; then ok "piped == keep_streams"
else bad "piped and keep_streams models differ"; fi
for s in calib tune; do
  if "$AR_BIN/ar-dump" "$tmp/streams/$s.ars" > "$tmp/$s.txt"; then ok "kept $s.ars is valid"; else bad "kept $s.ars"; fi
done
grep -q '"method":"signround"' "$tmp/tune.txt" && ok "tune stream says signround" || bad "tune META: $(head -1 "$tmp/tune.txt")"
grep -q '"nsamples":4' "$tmp/calib.txt" && ok "calib stream has 4 samples" || bad "calib META: $(head -1 "$tmp/calib.txt")"
exit $fail
