#!/bin/sh
# Static FP8 KV cache (AutoRound's --static_kv_dtype fp8) on stories260K:
# ar-tune writes a k_scale / v_scale per layer, ar-pack exports them (with a
# compressed-tensors kv_cache_scheme in llm_compressor folders, AutoRound's
# static_kv_dtype keys in auto_round ones), ar-eval quantizes K and V with
# them. Observing K/V changes no weight: with --kv_quant none the folder
# scores exactly as the one tuned without the option. Bad folders, flags and
# combinations fail with one line.
. "$(dirname "$0")/lib.sh"
S=$M
TEXT=$STORIES_TEXT
field() { sed -n "s/.*\"$1\": *\\([0-9.]*\\).*/\\1/p"; }
ev() { _m=$1; shift; "$BIN/ar-eval" --model "$_m" --text "$TEXT" --seqlen 128 --windows 3 --json --quiet "$@" 2>&1 | tail -1; }
# one_line NAME EXPECTED-SUBSTRING OUTPUT RC: a failure told in one line (a
# usage error's second line only points at --help).
one_line() {
  [ "$4" -ne 0 ] || fail "$1: exit status 0"
  _msg=$(printf '%s\n' "$3" | grep -v "^[a-z-]*: run '[a-z-]* --help' for usage\$")
  [ "$(printf '%s\n' "$_msg" | wc -l)" -eq 1 ] || fail "$1: not one line: $3"
  case "$_msg" in *"$2"*) echo "ok   $1: $_msg";; *) fail "$1: $3";; esac
}

stories_calib 8 64 -o "$T/calib.ars" --quiet
"$BIN/ar-tune" -i "$T/calib.ars" --quiet --iters 2 --static_kv_dtype fp8 -o "$T/kv.ars"
"$BIN/ar-tune" -i "$T/calib.ars" --quiet --iters 2 -o "$T/plain.ars"
n=$("$BIN/ar-dump" "$T/kv.ars" | grep -c 'self_attn\.[kv]_scale	f32	\[1\]')
[ "$n" = 10 ] || fail "tuned stream: $n KV scale records, want 10"
"$BIN/ar-dump" "$T/kv.ars" | head -1 | grep -q '"static_kv_dtype":"fp8","static_kv_granularity":"tensor"' ||
  fail "tuned stream META lacks static_kv_dtype"
echo "ok   ar-tune: 5 k_scale + 5 v_scale records, META static_kv_dtype fp8"
# A checkpointed run writes the same bytes, and a rerun that replays every block too.
"$BIN/ar-tune" -i "$T/calib.ars" --quiet --iters 2 --static_kv_dtype fp8 --checkpoint "$T/ck" -o "$T/ck1.ars"
"$BIN/ar-tune" -i "$T/calib.ars" --quiet --iters 2 --static_kv_dtype fp8 --checkpoint "$T/ck" -o "$T/ck2.ars"
cmp -s "$T/ck1.ars" "$T/kv.ars" && cmp -s "$T/ck2.ars" "$T/kv.ars" || fail "checkpointed or replayed stream differs"
echo "ok   checkpoint: the same stream, first run and replay"

"$BIN/ar-pack" -i "$T/kv.ars" --format llm_compressor,auto_round -o "$T/kv" --quiet
"$BIN/ar-pack" -i "$T/plain.ars" --format llm_compressor -o "$T/plain" --quiet
tr -d ' \n' < "$T/kv/llm_compressor/config.json" |
  grep -q '"kv_cache_scheme":{"num_bits":8,"type":"float","symmetric":true,"group_size":null,"strategy":"tensor","dynamic":false}' ||
  fail "llm_compressor: kv_cache_scheme"
tr -d ' \n' < "$T/plain/config.json" | grep -q '"kv_cache_scheme":null' || fail "plain llm_compressor: kv_cache_scheme not null"
tr -d ' \n' < "$T/kv/auto_round/config.json" | grep -q '"static_kv_dtype":"fp8","static_kv_granularity":"tensor"' ||
  fail "auto_round: static_kv_dtype keys"
for f in llm_compressor auto_round; do
  hdr=$(head -c 65536 "$T/kv/$f/model.safetensors" | tr -d '\0')
  for l in 0 4; do for kv in k v; do
    case "$hdr" in *"\"model.layers.$l.self_attn.${kv}_scale\":{\"dtype\":\"F32\",\"shape\":[1]"*) ;;
      *) fail "$f: no F32 [1] model.layers.$l.self_attn.${kv}_scale";; esac
  done; done
done
echo "ok   ar-pack: kv_cache_scheme (llm_compressor), static_kv_dtype (auto_round), F32 [1] k_scale/v_scale"

j=$(ev "$T/kv/llm_compressor"); p=$(echo "$j" | field ppl); nl=$(echo "$j" | field kv_fp8_layers)
pa=$(ev "$T/kv/auto_round" | field ppl)
pn=$(ev "$T/kv/llm_compressor" --kv_quant none | field ppl); pp=$(ev "$T/plain" | field ppl)
[ "$nl" = 5 ] || fail "ar-eval: $nl layers with KV scales: $j"
[ "$p" = "$pa" ] || fail "ar-eval: llm_compressor ppl $p, auto_round $pa"
[ "$pn" = "$pp" ] || fail "ar-eval: --kv_quant none ppl $pn differs from the folder tuned without KV scales ($pp)"
[ "$p" != "$pn" ] || fail "ar-eval: the FP8 KV cache changed nothing ($p)"
echo "ok   ar-eval: ppl $p with the FP8 KV cache (5 layers; auto_round the same), $pn without (= tuned without, $pp)"

# Bad folders: a kv_cache_scheme without scales, one not handled.
mkdir "$T/noscales"
for x in "$T/plain"/*; do ln -s "$x" "$T/noscales/"; done
rm "$T/noscales/config.json"
sed 's/"kv_cache_scheme": null/"kv_cache_scheme": {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": false}/' \
  "$T/plain/config.json" > "$T/noscales/config.json"
set +e
out=$("$BIN/ar-eval" --model "$T/noscales" --text "$TEXT" --seqlen 128 --windows 1 2>&1); rc=$?
one_line "kv_cache_scheme without scales" "there is no tensor model.layers.0.self_attn.k_scale" "$out" $rc
sed 's/"num_bits": 8/"num_bits": 4/; s/"type": "float"/"type": "int"/' "$T/noscales/config.json" > "$T/c" &&
  mv "$T/c" "$T/noscales/config.json"
out=$("$BIN/ar-eval" --model "$T/noscales" --text "$TEXT" --seqlen 128 --windows 1 2>&1); rc=$?
one_line "int4 kv_cache_scheme" "KV caches are not handled" "$out" $rc
# Bad flags and combinations.
out=$("$BIN/ar-tune" --model "$S" --static_kv_dtype fp8 -o "$T/x.ars" 2>&1); rc=$?
one_line "ar-tune --static_kv_dtype without data" "needs a calibration stream" "$out" $rc
out=$("$BIN/ar-tune" -i "$T/calib.ars" --static_kv_dtype nvfp4 -o "$T/x.ars" 2>&1); rc=$?
one_line "ar-tune --static_kv_dtype nvfp4" "is not fp8" "$out" $rc
out=$("$BIN/ar-tune" -i "$T/calib.ars" --scheme GGUF:Q4_0 --static_kv_dtype fp8 -o "$T/x.ars" 2>&1); rc=$?
one_line "ar-tune GGUF with --static_kv_dtype" "not with GGUF schemes" "$out" $rc
out=$("$BIN/ar-eval" --model "$T/kv/llm_compressor" --text "$TEXT" --kv_quant fp16 2>&1); rc=$?
one_line "ar-eval --kv_quant fp16" "is not auto or none" "$out" $rc
out=$("$BIN/auto-round" --model "$S" --dataset "$TEXT" --static_kv_granularity head --static_kv_dtype fp8 \
      --output_dir "$T/ar" --dry_run 2>&1); rc=$?
one_line "auto-round --static_kv_granularity head" "tensor only" "$out" $rc
set -e

# The front end maps AutoRound's flag onto ar-tune.
"$BIN/auto-round" --model "$S" --dataset "$TEXT" --iters 2 --nsamples 8 --seqlen 64 --static_kv_dtype fp8 \
  --format llm_compressor --layout plain --output_dir "$T/ar" --quiet
tr -d ' \n' < "$T/ar/config.json" | grep -q '"kv_cache_scheme":{"num_bits":8' || fail "auto-round: no kv_cache_scheme"
echo "ok   auto-round --static_kv_dtype fp8: kv_cache_scheme in the llm_compressor folder"
