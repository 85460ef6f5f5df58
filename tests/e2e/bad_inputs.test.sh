#!/bin/sh
# Hostile and broken inputs through the tools: each case must exit 1 within
# 20 s, print exactly one stderr line that names the file (or the flag) and
# matches the expected problem, and stay under a 2 GiB address-space limit
# (skipped under SANITIZE=1: ASan reserves terabytes of address space), which
# shows that absurd sizes in headers are refused before anything is allocated.
# Each checked case prints "| CASE | TOOL | MESSAGE |": docs/robustness.md's
# table is this output.
set -u
BIN=${AR_BIN:?AR_BIN not set}
SHARED=${AR_SHARED:-../shared}
S=$SHARED/models/stories260K
TEXT=$SHARED/data/tinystories/TinyStories-validation-head.txt
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail=0
export CUDA_VISIBLE_DEVICES=   # CUDA reserves address space beyond the cap; these cases never reach a GPU

le32() { printf "$(printf '\\%03o\\%03o\\%03o\\%03o' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24 & 255)))"; }
le64() { le32 "$(($1 & 4294967295))"; le32 "$(($1 >> 32))"; }

# Address-space cap for the tools unless they carry ASan.
limit=""
if ! nm "$BIN/ar-dump" 2>/dev/null | grep -q __asan_init; then limit="ulimit -v 2097152;"; fi

# expect CASE TOOL PATTERN ARGS...: exit 1, one stderr line matching PATTERN.
expect() {
  name=$1 tool=$2 pat=$3; shift 3
  rc=0
  sh -c "$limit exec timeout 20 \"\$@\"" sh "$BIN/$tool" "$@" > /dev/null 2> "$T/err" < /dev/null || rc=$?
  msg=$(head -1 "$T/err" | sed "s|$T/||g; s|$SHARED/|shared/|g")
  if [ "$rc" -ne 1 ] || [ "$(wc -l < "$T/err")" -ne 1 ] || ! grep -q -- "$pat" "$T/err"; then
    echo "FAIL $name: exit $rc (want 1), stderr:"; sed 's/^/    /' "$T/err"; fail=1
  else
    echo "| $name | $tool | \`$msg\` |"
  fi
}

# model_dir NAME: stories260K's config and tokenizer in $T/NAME; weights from stdin.
model_dir() {
  d="$T/$1"; mkdir -p "$d"
  for f in config.json tokenizer.json tokenizer_config.json; do cp "$S/$f" "$d/"; done
  cat > "$d/model.safetensors"
}
st_header() { le64 ${#1}; printf '%s' "$1"; }

# ---- safetensors ----
st_header '{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}}' | model_dir st_shape
expect "safetensors: shape of 2^64 elements" ar-eval "absurdly large" --model "$T/st_shape" --text "$TEXT"
st_header '{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,1099511627776]}}' | model_dir st_off
expect "safetensors: data offset 1 TiB past the file" ar-eval "past end of data" --model "$T/st_off" --text "$TEXT"
{ le64 1099511627776; printf '{}'; } | model_dir st_hlen
expect "safetensors: header length 1 TiB" ar-eval "exceeds file size" --model "$T/st_hlen" --text "$TEXT"
st_header '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}' | model_dir st_overlap
head -c 12 /dev/zero >> "$T/st_overlap/model.safetensors"
expect "safetensors: overlapping tensors" ar-eval "overlap" --model "$T/st_overlap" --text "$TEXT"
st_header '{"w":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}' | model_dir st_dtype
expect "safetensors: unknown dtype" ar-eval "unknown dtype" --model "$T/st_dtype" --text "$TEXT"
head -c 300000 "$S/model.safetensors" | model_dir st_trunc
expect "safetensors: truncated file" ar-eval "past end of data" --model "$T/st_trunc" --text "$TEXT"

# ---- config.json ----
cfg() { model_dir "$1" < "$S/model.safetensors"; printf '%s' "$2" > "$T/$1/config.json"; }
cfg cfg_huge '{"architectures":["LlamaForCausalLM"],"hidden_size":1e12,"intermediate_size":172,"num_hidden_layers":5,"num_attention_heads":8,"vocab_size":512}'
expect "config.json: hidden_size 1e12" ar-eval "hidden_size must be an integer in" --model "$T/cfg_huge" --text "$TEXT"
cfg cfg_null '{"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":172,"num_hidden_layers":null,"num_attention_heads":8,"vocab_size":512}'
expect "config.json: num_hidden_layers null" ar-eval "missing num_hidden_layers" --model "$T/cfg_null" --text "$TEXT"
cfg cfg_heads '{"architectures":["LlamaForCausalLM"],"hidden_size":4,"intermediate_size":172,"num_hidden_layers":5,"num_attention_heads":8,"vocab_size":512}'
expect "config.json: more heads than hidden units" ar-eval "head_dim is 0" --model "$T/cfg_heads" --text "$TEXT"
cfg cfg_trunc '{"architectures":["LlamaForCausalLM"],"hidden_size":'
expect "config.json: truncated JSON" ar-eval "config.json: .*JSON" --model "$T/cfg_trunc" --text "$TEXT"

# ---- tokenizer.json ----
tok() { model_dir "$1" < "$S/model.safetensors"; printf '%s' "$2" > "$T/$1/tokenizer.json"; }
tok tok_unigram '{"model":{"type":"Unigram","vocab":[]}}'
expect "tokenizer.json: unsupported model" ar-eval "unsupported model type 'Unigram'" --model "$T/tok_unigram" --text "$TEXT"
tok tok_id '{"model":{"type":"BPE","vocab":{"a":-1},"merges":[]}}'
expect "tokenizer.json: negative vocab id" ar-eval "has no valid id" --model "$T/tok_id" --text "$TEXT"
tok tok_post '{"model":{"type":"BPE","vocab":{"a":0},"merges":[]},"post_processor":{"type":"BertProcessing","cls":["a",-2],"sep":["a",0]}}'
expect "tokenizer.json: negative post-processor id" ar-eval "invalid id" --model "$T/tok_post" --text "$TEXT"
tok tok_regex '{"model":{"type":"BPE","vocab":{"a":0},"merges":[]},"pre_tokenizer":{"type":"Split","pattern":{"Regex":"(a"},"behavior":"Isolated","invert":false}}'
expect "tokenizer.json: bad regex" ar-eval "tokenizer.json" --model "$T/tok_regex" --text "$TEXT"

# ---- GGUF ----
gguf_head() { printf 'GGUF'; le32 3; le64 "$1"; le64 "$2"; }
gguf_head 1 1099511627776 > "$T/kv.gguf"
expect "GGUF: 2^40 metadata pairs claimed" ar-eval "KV count 1099511627776 is absurd" --model "$T/kv.gguf" --prompt hi
{ gguf_head 0 1; le64 3; printf 'key'; le32 8; le64 1099511627776; printf 'abc'; } > "$T/str.gguf"
expect "GGUF: string length 1 TiB" ar-eval "exceeds the" --model "$T/str.gguf" --prompt hi
{ gguf_head 1 0; le64 1; printf 'w'; le32 2; le64 4294967296; le64 4294967296; le32 0; le64 0; } > "$T/shape.gguf"
expect "GGUF: tensor of 2^64 elements" ar-eval "is absurd" --model "$T/shape.gguf" --prompt hi
{ gguf_head 0 1; le64 1; printf 'k'; le32 9; le32 8; le64 1099511627776; } > "$T/arr.gguf"
expect "GGUF: string array of 2^40 elements" ar-eval "exceeds the file" --model "$T/arr.gguf" --prompt hi
printf 'GGML' > "$T/magic.gguf"
expect "GGUF: wrong magic" ar-eval "magic.gguf: .*GGUF" --model "$T/magic.gguf" --prompt hi

# ---- tensor streams ----
zstd -q -c "$TEXT" > "$T/notstream.zst"
expect "stream: zstd data that is not a stream" ar-dump "bad magic" "$T/notstream.zst"
{ printf 'ARSTREAM'; le32 1; printf 'T'; le32 1; printf 'w'; printf '\000\002'; le64 4294967296; le64 4294967296; le32 2; printf '{}'; le64 0; printf 'E'; } \
  | zstd -q -c > "$T/bigshape.ars"
expect "stream: tensor of 2^64 elements" ar-dump "overflows" "$T/bigshape.ars"
{ printf 'ARSTREAM'; le32 1; printf 'M'; le32 4000000000; } | zstd -q -c > "$T/bigjson.ars"
expect "stream: META length 4 GB" ar-dump "exceeds the 64 MiB limit" "$T/bigjson.ars"
{ printf 'ARSTREAM'; le32 1; printf 'T'; le32 1; printf 'w'; printf '\000\001'; le64 268435456; le32 2; printf '{}'; le64 1073741824; printf 'abc'; } \
  | zstd -q -c > "$T/trunc.ars"
expect "stream: 1 GiB payload claimed, 3 bytes present" ar-tune "truncated stream" -i "$T/trunc.ars"
head -c 20000 "$S/model.safetensors" | zstd -q -c | head -c 3000 > "$T/cut.ars"
expect "stream: cut zstd frame" ar-pack "stream\|zstd\|truncated" -i "$T/cut.ars" -o "$T/out" --format auto_round

# ---- datasets, layer_config ----
printf '{"text": "ok"}\n{"txt": 1}\n' > "$T/bad.jsonl"
expect "dataset: JSONL line without text" ar-calib "bad.jsonl:2: object has no \"text\" string" --model "$S" --dataset "$T/bad.jsonl"
expect "dataset spec: num=x" ar-calib "num=x is not a positive integer" --model "$S" --dataset "$T/bad.jsonl:num=x"
expect "dataset spec: unknown option" ar-calib "unknown option 'shuffle'" --model "$S" --dataset "$TEXT:num=4,$T/bad.jsonl:shuffle"
printf '{"messages": [{"role": "user", "content": "hi"}]}\n' > "$T/chat.jsonl"
expect "dataset: chat row, no apply_chat_template" ar-calib "chat.jsonl:1: a chat row (\"messages\") needs apply_chat_template" --model "$S" --dataset "$T/chat.jsonl"
expect "dataset: model without chat_template" ar-calib "tokenizer_config.json: no chat_template" --model "$S" --dataset "$T/chat.jsonl:apply_chat_template"
mkdir -p "$T/chatm"
for f in config.json tokenizer.json model.safetensors; do ln -s "$(cd "$S" && pwd)/$f" "$T/chatm/$f"; done
printf '{"chat_template": "{%% macro m() %%}{%% endmacro %%}"}' > "$T/chatm/tokenizer_config.json"
expect "chat template: macro" ar-calib "chat_template:1: unsupported statement 'macro'" --model "$T/chatm" --dataset "$T/chat.jsonl:apply_chat_template"
printf '{"chat_template": "{%% for m in messages %%}{%% if m.role == \\"assistant\\" and loop.first %%}{{ raise_exception(\\"user first\\") }}{%% endif %%}{%% endfor %%}"}' > "$T/chatm/tokenizer_config.json"
printf '{"messages": [{"role": "assistant", "content": "hi"}]}\n' > "$T/chat2.jsonl"
expect "chat template raises" ar-calib "chat2.jsonl:1: .*raise_exception: user first" --model "$T/chatm" --dataset "$T/chat2.jsonl:apply_chat_template:system_prompt="
printf '{"a": 1, "b": 2}\n' > "$T/chat3.jsonl"
expect "chat dataset: row without text or messages" ar-calib "chat3.jsonl:1: object has no \"text\" string (nor a \"messages\" list)" --model "$T/chatm" --dataset "$T/chat3.jsonl:apply_chat_template"
head -c 5000 "$TEXT" | zstd -q -c | head -c 1000 > "$T/cut.txt.zst"
expect "dataset: truncated .zst" ar-calib "corrupt or truncated zstd data" --model "$S" --dataset "$T/cut.txt.zst"
printf '{"q_proj": {"bits": 1e30}}' > "$T/lc.json"
expect "layer_config: bits 1e30" ar-tune "\"bits\" must be an integer" --model "$S" --layer_config "$T/lc.json" -o "$T/o.ars"
printf '{"layers.[0-": {"bits": 4}}' > "$T/lc2.json"
expect "layer_config: bad regex" ar-tune "bad regex" --model "$S" --layer_config "$T/lc2.json" -o "$T/o.ars"

# ---- mixtures of experts (docs/moe.md §10) ----
ROOT=$(cd "$(dirname "$0")/../.." && pwd)   # run.sh runs this from tests/e2e
MF=$ROOT/tests/fixtures/moe/tiny
cp -r "$MF/qwen3_moe" "$T/moek"; sed -i 's/"num_experts_per_tok": 2/"num_experts_per_tok": 6/' "$T/moek/config.json"
cp -r "$MF/deepseek_v3" "$T/moes"; sed -i 's/^{/{"scoring_func": "softplus",/' "$T/moes/config.json"
# a Qwen3-MoE config over a checkpoint without its expert tensors, and a fused one without down_proj
mkdir "$T/moed" "$T/moef"; cp "$MF/qwen3_moe/"*.json "$T/moed/"
python3 "$ROOT/tests/fixtures/moe/make_fused.py" "$MF/qwen3_moe" "$T/moef" > /dev/null
python3 - "$MF/qwen3_moe/model.safetensors" "$T/moed/model.safetensors" "$T/moef/model.safetensors" "$ROOT" <<'PY'
import sys
sys.path.insert(0, sys.argv[4] + "/tests/fixtures/moe")
import make_fused as m
meta, t = m.read_st(sys.argv[1])
m.write_st(sys.argv[2], meta, {k: v for k, v in t.items() if ".experts." not in k})
meta, t = m.read_st(sys.argv[3])
m.write_st(sys.argv[3], meta, {k: v for k, v in t.items() if not k.endswith("experts.down_proj")})
PY
for tool in ar-eval ar-tune ar-calib; do
  case $tool in ar-eval) args="--text $TEXT --seqlen 64 --windows 1";; ar-tune) args="--iters 0 -o $T/o.ars";;
                ar-calib) args="--dataset $TEXT --nsamples 2 --seqlen 32 -o $T/c.ars";; esac
  expect "MoE: num_experts_per_tok > experts" $tool "moek/config.json: num_experts_per_tok 6 exceeds the 4 experts" --model "$T/moek" $args
  expect "MoE: unknown router scoring_func" $tool "moes/config.json: unknown router scoring_func softplus" --model "$T/moes" $args
  expect "MoE: config with experts, checkpoint without" $tool "moed: layer 0: missing mlp.experts.0.gate_proj.weight (4 experts in config.json)" --model "$T/moed" $args
  expect "MoE: fused experts without down_proj" $tool "moef: layer 0: missing mlp.experts.0.down_proj.weight (4 experts in config.json)" --model "$T/moef" $args
done
[ -e "$T/o.ars" ] || [ -e "$T/c.ars" ] && { echo "FAIL MoE bad input left an output"; fail=1; }

exit $fail
