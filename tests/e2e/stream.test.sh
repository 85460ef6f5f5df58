#!/bin/sh
# ar-dump on tensor streams built byte by byte here (printf + the zstd CLI), so
# the test checks the format as man ar-stream(5) describes it, not just our writer:
# a valid stream lists its records; truncated and garbage inputs exit 1 with
# one line naming the file; a usage error exits 2.
set -eu
BIN=${AR_BIN:?AR_BIN not set}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }

# Little-endian integers as raw bytes (values below 2^32).
le32() { printf "$(printf '\\%03o\\%03o\\%03o\\%03o' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24 & 255)))"; }
le64() { le32 "$1"; le32 0; }
u8() { printf "$(printf '\\%03o' "$1")"; }
text() { le32 ${#1}; printf '%s' "$1"; }   # u32 length + ASCII text

header() { printf 'ARSTREAM'; le32 1; }
meta() { printf 'M'; text "$1"; }
# tensor NAME DTYPE_CODE ATTRS NBYTES DIM... ; payload bytes are 0..NBYTES-1 mod 256
tensor() {
  name=$1 code=$2 attrs=$3 nbytes=$4; shift 4
  printf 'T'; text "$name"; u8 "$code"; u8 $#
  for d in "$@"; do le64 "$d"; done
  text "$attrs"; le64 "$nbytes"
  i=0; while [ $i -lt "$nbytes" ]; do u8 $((i % 256)); i=$((i + 1)); done
}

{ header; meta '{"tool":"e2e","n":2}'
  tensor input_ids 3 '{}' 24 2 3
  tensor 'layers.0.q.scale' 2 '{"group_size":2}' 4 2
  tensor empty 0 '{}' 0 0 5
  tensor scalar 5 '{}' 1
  printf 'E'; } > "$T/raw"
zstd -q -c "$T/raw" > "$T/ok.ars"

# 1. A valid stream: one line per record, exit 0; the same through stdin.
"$BIN/ar-dump" "$T/ok.ars" > "$T/out" || fail "valid stream rejected"
printf 'meta\t{"tool":"e2e","n":2}\ntensor\tinput_ids\ti32\t[2,3]\t24\t{}\ntensor\tlayers.0.q.scale\tbf16\t[2]\t4\t{"group_size":2}\ntensor\tempty\tf32\t[0,5]\t0\t{}\ntensor\tscalar\tu8\t[]\t1\t{}\n' > "$T/want"
cmp -s "$T/out" "$T/want" || { diff "$T/want" "$T/out" >&2; fail "listing differs"; }
cat "$T/ok.ars" | "$BIN/ar-dump" - > "$T/out2" || fail "stdin rejected"
cmp -s "$T/out" "$T/out2" || fail "stdin listing differs"

# 2. --json: one parseable-looking object per record.
"$BIN/ar-dump" --json "$T/ok.ars" > "$T/json" || fail "--json failed"
[ "$(wc -l < "$T/json")" -eq 5 ] || fail "--json: expected 5 lines"
grep -qx '{"kind":"tensor","name":"layers.0.q.scale","dtype":"bf16","shape":\[2\],"nbytes":4,"attrs":{"group_size":2}}' "$T/json" \
  || fail "--json tensor line wrong: $(sed -n 3p "$T/json")"

# expect_bad FILE WORDS: exit 1, exactly one stderr line naming FILE and containing WORDS.
expect_bad() {
  if "$BIN/ar-dump" "$1" > /dev/null 2> "$T/err"; then fail "$1 accepted"; else rc=$?; fi
  [ $rc -eq 1 ] || fail "$1: exit $rc, want 1"
  [ "$(wc -l < "$T/err")" -eq 1 ] || fail "$1: message is not one line: $(cat "$T/err")"
  grep -q "^ar-dump: $1: .*$2" "$T/err" || fail "$1: unexpected message: $(cat "$T/err")"
}

# 3. Truncations: inside the zstd frame, and a complete frame missing its END record.
size=$(wc -c < "$T/ok.ars")
head -c $((size - 3)) "$T/ok.ars" > "$T/cut.ars"
expect_bad "$T/cut.ars" "truncated stream"
head -c $(($(wc -c < "$T/raw") - 1)) "$T/raw" | zstd -q -c > "$T/noend.ars"
expect_bad "$T/noend.ars" "truncated stream (no END record)"
{ header; tensor input_ids 3 '{}' 24 2 3; } | head -c 70 | zstd -q -c > "$T/inside.ars"
expect_bad "$T/inside.ars" "ended inside tensor 'input_ids'"

# 4. Garbage, an empty file, and zstd data that is not a tensor stream.
printf 'this is not a stream\n' > "$T/garbage.ars"
expect_bad "$T/garbage.ars" "not a tensor stream"
: > "$T/empty.ars"
expect_bad "$T/empty.ars" "empty input"
printf 'hello' | zstd -q -c > "$T/hello.ars"
expect_bad "$T/hello.ars" "truncated stream"
{ printf 'ARSTREAX'; le32 1; printf 'E'; } | zstd -q -c > "$T/magic.ars"
expect_bad "$T/magic.ars" "bad magic"

# 5. Usage errors exit 2; --help exits 0.
if "$BIN/ar-dump" --frobnicate 2> /dev/null; then fail "unknown flag accepted"; else [ $? -eq 2 ] || fail "unknown flag: exit not 2"; fi
"$BIN/ar-dump" --help | grep -q 'usage: ar-dump' || fail "--help"
echo "stream: ok"
