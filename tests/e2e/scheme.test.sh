#!/bin/sh
# ar-scheme (AutoScheme) on stories260K (16 samples of 64 tokens):
# ar-calib | ar-scheme | ar-tune | ar-pack runs; the stream passes through
# unchanged; the average bits META reports equal the bits recounted from the
# layers ar-tune wrote (b*n + groups*(16 + b), AutoRound's rule for int
# schemes) and lie within the budget; --emit_config equals the stream's
# config; --shared_layers keeps q/k/v together; errors are one line.
. "$(dirname "$0")/lib.sh"

stories_calib 16 64 -o "$T/calib.ars"

# 1. The pipeline, with progress and the search time on stderr.
stories_calib 16 64 --quiet |
  "$BIN/ar-scheme" --avg_bits 3 --options W2A16G64,W4A16 --progress 2> "$T/err" |
  "$BIN/ar-tune" --iters 2 --batch_size 4 --quiet |
  "$BIN/ar-pack" --format auto_round -o "$T/packed" --quiet
[ -f "$T/packed/config.json" ] || fail "pipeline wrote no model"
grep -q 'avg bits 2\.9[0-9]* (target 3\.0000' "$T/err" || { cat "$T/err"; fail "no achieved average on stderr"; }
grep -q 'search [0-9.]*s' "$T/err" || fail "no search time on stderr"

# 2. Pass-through: the input's records come out first, unchanged, then one META.
"$BIN/ar-scheme" -i "$T/calib.ars" -o "$T/s.ars" --avg_bits 3 --emit_config "$T/lc.json" --quiet
"$BIN/ar-dump" "$T/calib.ars" > "$T/in.txt"
"$BIN/ar-dump" "$T/s.ars" > "$T/out.txt"
n=$(wc -l < "$T/in.txt")
head -n "$n" "$T/out.txt" | cmp -s - "$T/in.txt" || fail "records changed on the way through"
[ "$(wc -l < "$T/out.txt")" -eq $((n + 1)) ] || fail "expected exactly one extra record"
tail -n 1 "$T/out.txt" | grep -q '^meta	{"ar":"scheme"' || fail "last record is not the scheme META"
zstd -dc "$T/calib.ars" | cmp -s - /dev/null && fail "empty input"

# 3. Average bits: recount from ar-tune's layers (scales f32 [N, G]).
"$BIN/ar-tune" -i "$T/s.ars" --iters 0 --quiet -o "$T/t.ars"
"$BIN/ar-dump" "$T/t.ars" | awk -F'\t' '
  $1 == "tensor" && $2 ~ /\.qweight$/ { split($4, s, /[][,]/); n = s[2] * s[3];
      match($6, /"bits":[0-9]+/); b = substr($6, RSTART + 7, RLENGTH - 7); params += n; bits += b * n; nb = b }
  $1 == "tensor" && $2 ~ /\.scale$/ { split($4, s, /[][,]/); bits += s[2] * s[3] * (16 + nb) }
  END { printf "%.6f\n", bits / params }' > "$T/recount"
meta_avg=$(tail -n 1 "$T/out.txt" | grep -o '"avg_bits":[0-9.]*' | cut -d: -f2)
# the recount is printed to 6 decimals (half a unit: 5e-7) and META's value
# with cJSON's 15 significant digits: they agree to 1e-6
awk -v a="$(cat "$T/recount")" -v b="$meta_avg" 'BEGIN { exit !(a - b <= 1e-6 && b - a <= 1e-6) }' ||
    fail "META avg_bits $meta_avg, recounted from ar-tune's layers $(cat "$T/recount")"
awk -v a="$meta_avg" 'BEGIN { exit !(a <= 3 && a > 2.9) }' || fail "avg bits $meta_avg not just under 3"

# 4. --emit_config is the stream's config: ar-tune gives the same bytes either way.
"$BIN/ar-tune" -i "$T/calib.ars" --layer_config "$T/lc.json" --iters 0 --quiet -o "$T/t2.ars"
cmp -s "$T/t.ars" "$T/t2.ars" || fail "--emit_config and the stream's layer config tune differently"
grep -q '"model.layers.4.self_attn.o_proj": "W[24]A16' "$T/lc.json" || fail "emitted config lacks a layer"

# 5. Shared layers: q/k/v of each block get one option.
"$BIN/ar-scheme" -i "$T/calib.ars" --avg_bits 3 --shared_layers q_proj,k_proj,v_proj \
    --emit_config "$T/sh.json" --quiet > /dev/null
for l in 0 1 2 3 4; do
  n=$(grep "layers\.$l\.self_attn\.[qkv]_proj" "$T/sh.json" | sed 's/.*: //' | sort -u | wc -l)
  [ "$n" -eq 1 ] || fail "block $l: q/k/v got different options"
done

# 6. Errors: one line, exit 1 for bad input, 2 for usage.
expect() { code=$1; shift; set +e; "$@" > /dev/null 2> "$T/e"; rc=$?; set -e
  [ "$rc" -eq "$code" ] || { cat "$T/e"; fail "exit $rc, not $code: $*"; }
  # usage errors add a line pointing at --help
  [ "$(grep -c '^ar-scheme: ' "$T/e")" -ge 1 ] && [ "$(wc -l < "$T/e")" -le $((code)) ] ||
      { cat "$T/e"; fail "not a one-line error: $*"; }; }
expect 1 "$BIN/ar-scheme" -i "$T/calib.ars" --avg_bits 5
grep -q 'outside the options' "$T/e" || fail "range error unclear: $(cat "$T/e")"
expect 2 "$BIN/ar-scheme" -i "$T/calib.ars"
expect 2 "$BIN/ar-scheme" -i "$T/calib.ars" --avg_bits 3 --options W4A16,NOPE
expect 1 "$BIN/ar-scheme" -i "$T/calib.ars" --avg_bits 4.5 --options W4A16,GGUF:Q4_K_S
expect 1 "$BIN/ar-scheme" -i "$T/t.ars" --avg_bits 3
echo "ok ar-scheme"
