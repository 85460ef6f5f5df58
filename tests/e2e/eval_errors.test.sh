#!/bin/sh
# ar-eval on bad input: each case exits 1 with one line naming the file and
# the problem; bad flags exit 2.
set -u
: "${AR_BIN:?}" "${AR_SHARED:?}"
S="$AR_SHARED/models/stories260K"
TEXT="$AR_SHARED/data/tinystories/TinyStories-validation-head.txt"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0

# expect NAME CODE PATTERN args...: exit status CODE, stderr's first line matches PATTERN,
# and (for CODE 1) stderr is that one line.
expect() {
  name=$1 code=$2 pat=$3; shift 3
  "$AR_BIN/ar-eval" "$@" > "$tmp/out" 2> "$tmp/err"; rc=$?
  lines=$(wc -l < "$tmp/err")
  if [ "$rc" -ne "$code" ] || ! head -1 "$tmp/err" | grep -q -- "$pat" || { [ "$code" = 1 ] && [ "$lines" != 1 ]; }; then
    echo "FAIL $name: exit $rc (want $code), stderr:"; sed 's/^/    /' "$tmp/err"; fail=1
  else echo "ok   $name: $(head -1 "$tmp/err")"; fi
}

# model DIR with stories260K's files, model.safetensors replaced by stdin
model_with() {
  d="$tmp/$1"; mkdir -p "$d"
  for f in config.json tokenizer.json tokenizer_config.json; do cp "$S/$f" "$d/"; done
  cat > "$d/model.safetensors"
}

head -c 500000 "$S/model.safetensors" | model_with trunc
expect truncated 1 "trunc/model.safetensors: tensor '.*' data_offsets .* past end of data" --model "$tmp/trunc" --text "$TEXT"

{ printf '\020\000\000\000\000\000\000\000{"a": [1, 2'; printf '      '; } | model_with badjson
expect corrupt-header 1 "badjson/model.safetensors: header is not a valid JSON" --model "$tmp/badjson" --text "$TEXT"

{ printf '\377\377\377\000\000\000\000\000{}'; } | model_with hugelen
expect header-past-eof 1 "hugelen/model.safetensors: header length 16777215 exceeds file size 10" --model "$tmp/hugelen" --text "$TEXT"

model_with gpt2 < "$S/model.safetensors"
sed 's/LlamaForCausalLM/GPT2LMHeadModel/' "$S/config.json" > "$tmp/gpt2/config.json"
expect unsupported-arch 1 "gpt2/config.json: unsupported architecture GPT2LMHeadModel" --model "$tmp/gpt2" --text "$TEXT"

model_with badconfig < "$S/model.safetensors"
echo '{"architectures": ["LlamaForCausalLM"], "hidden_size": ' > "$tmp/badconfig/config.json"
expect malformed-config 1 "badconfig/config.json: malformed JSON" --model "$tmp/badconfig" --text "$TEXT"

model_with notok < "$S/model.safetensors"
rm "$tmp/notok/tokenizer.json"
expect missing-tokenizer 1 "notok.*tokenizer.json" --model "$tmp/notok" --text "$TEXT"

expect missing-text 1 "$tmp/none.txt: cannot open" --model "$S" --text "$tmp/none.txt"
expect seqlen-0 2 "seqlen.*out of range" --model "$S" --text "$TEXT" --seqlen 0
expect windows-negative 2 "windows.*out of range" --model "$S" --text "$TEXT" --windows -1
expect unknown-flag 2 "unknown argument '--frobnicate'" --model "$S" --text "$TEXT" --frobnicate
expect no-model 2 "model DIR is required" --text "$TEXT"
"$AR_BIN/ar-eval" --help | grep -q "usage: ar-eval" && echo "ok   --help" || { echo "FAIL --help"; fail=1; }
exit $fail
