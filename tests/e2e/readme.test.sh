#!/bin/sh
# README.md's quick start runs as written: the block between the quickstart
# markers, in a fresh folder where bin/ is the tools under test and S is
# AR_SHARED; then its outputs are checked.
set -eu
: "${AR_BIN:?}" "${AR_SHARED:?}"
readme="$(cd "$(dirname "$0")/../.." && pwd)/README.md"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
awk '/<!-- quickstart/ { on = 1; next } /<!-- \/quickstart/ { on = 0 } on && !/^```/' "$readme" |
  sed "s|^S=\.\./shared |S=$AR_SHARED |" > "$tmp/quickstart.sh"
grep -q "^S=$AR_SHARED " "$tmp/quickstart.sh" || { echo "FAIL no 'S=../shared' line in the quick start"; exit 1; }
ln -s "$AR_BIN" "$tmp/bin"
fail=0
if (cd "$tmp" && sh -e quickstart.sh > run.log 2>&1); then echo "ok   quick start runs"
else echo "FAIL quick start:"; tail -20 "$tmp/run.log"; exit 1; fi
for f in out/stories260K-w4g128/config.json out/stories260K-gguf/stories260K-260K-Q4_K_M.gguf out/rtn.ars out/rtn-gptq/config.json out/signround-w2/config.json; do
  [ -s "$tmp/$f" ] && echo "ok   $f" || { echo "FAIL $f missing"; fail=1; }
done
n=$(grep -c "^ppl [0-9.]* " "$tmp/run.log" || true)
[ "$n" = 2 ] && echo "ok   two perplexities printed" || { echo "FAIL perplexities: $(cat "$tmp/run.log")"; fail=1; }
exit $fail
