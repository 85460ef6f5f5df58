#!/bin/sh
# make check-clients: real clients load what ar-pack writes and agree with ar-eval.
#
#  1. build/venv is created if missing, and torch, transformers, accelerate,
#     auto-round, auto-round-lib and safetensors are pip-installed only when
#     they do not import (pip's cache is used; an existing torch is kept).
#     auto-round-lib gives auto-round its CPU kernels for AWQ layouts: without
#     it auto-round 0.16.1 falls back to a "fake" backend that crashes on
#     weight-only AWQ folders (see check_hf_quantized.py).
#  2. tiny-llama W4A16 G128 plain RTN (ar-tune --iters 0 --disable_opt_rtn),
#     sym packed as auto_round (auto_round:auto_gptq layout), auto_gptq and
#     fake; asym as auto_round (auto_round:auto_awq layout), auto_awq and
#     auto_gptq (GPTQ v1 with real zero points).
#  3. For each folder: perplexity by transformers + auto-round
#     (check_hf_quantized.py) and by ar-eval on the same first CLIENT_WINDOWS
#     windows of 512 tokens of heldout.txt must agree within 0.5% (the clients
#     run bf16/fp16 activations, ar-eval f32).
#  4. tests/clients/check_gguf.py, when present, with --shared and --bin; its
#     own "N passed, N failed" counts are added to ours.
#  5. tests/clients/check_tasks.py: ar-eval --tasks against lm-eval-harness
#     (`--model hf`, float32, CPU) on tests/fixtures/tasks with tiny-llama,
#     zero-shot on every row of every task, then --num_fewshot 3 on the first
#     CLIENT_TASK_LIMIT (default 10) rows: the same requests, log-likelihoods
#     within 1e-3, acc/acc_norm/stderr within 1e-6 (lm_eval is pip-installed
#     when missing). Its counts are added to ours.
#
#  6. tests/clients/check_vlm.py on tests/fixtures/vlm/qwen2_vl (and the
#     models under CLIENT_VLM=DIR; CLIENT_VLM=0 skips it): ar-eval against the
#     model's transformers reference, then W4A16 RTN and SignRound auto_round
#     folders loaded by transformers + auto-round as their class, within 0.5 %
#     of ar-eval, vision tensors byte-identical. Its counts are added to ours.
#
#  7. MoE exports (tiny fixtures of tests/fixtures/moe/tiny) through
#     tests/clients/check_moe.py; CLIENT_MOE=0 skips it.
#
# Environment: AR_BIN (default bin), AR_SHARED (default ../shared),
# CLIENT_WINDOWS (default 20), CLIENT_WORK (default build/clients-check; the
# folders are left there for inspection), CLIENT_GGUF=0 to skip step 4,
# CLIENT_TASKS (default all seven tasks; 0 skips step 5). Prints one line per check and a
# closing "N passed, N failed"; exits 1 if anything failed.
set -u
cd "$(dirname "$0")/../.."
BIN=$(cd "${AR_BIN:-bin}" && pwd) || exit 2
SHARED=$(cd "${AR_SHARED:-../shared}" && pwd) || exit 2
WINDOWS=${CLIENT_WINDOWS:-20}
WORK=${CLIENT_WORK:-build/clients-check}
VENV=build/venv
PY=$VENV/bin/python
MODEL=$SHARED/models/tiny-llama
TEXT=$MODEL/heldout.txt
pass=0 fail=0

ok()   { pass=$((pass + 1)); echo "ok   $*"; }
bad()  { fail=$((fail + 1)); echo "FAIL $*"; }
finish() { echo "check-clients: $pass passed, $fail failed"; [ "$fail" = 0 ]; exit $?; }

# Python packages by import name = pip name, installed only when missing.
ensure_venv() {
  [ -x "$PY" ] || python3 -m venv "$VENV" || return 1
  missing=""
  for pair in torch=torch transformers=transformers accelerate=accelerate auto_round=auto-round \
              auto_round_kernel=auto-round-lib safetensors=safetensors lm_eval=lm_eval; do
    "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('${pair%%=*}') is None)" ||
      missing="$missing ${pair#*=}"
  done
  [ -z "$missing" ] && return 0
  echo "installing into $VENV:$missing"
  "$PY" -m pip install -q $missing
}

# Quantize tiny-llama with plain RTN (sym or asym) and pack it in the given formats.
make_folders() { # NAME FORMATS [--asym]
  name=$1 formats=$2; shift 2
  "$BIN/ar-tune" --quiet --model "$MODEL" --iters 0 --disable_opt_rtn "$@" -o "$WORK/$name.ars" &&
    "$BIN/ar-pack" --quiet -i "$WORK/$name.ars" --format "$formats" -o "$WORK/$name"
}

# within A B TOL: |A/B - 1| <= TOL
within() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a / b - 1; if (d < 0) d = -d; exit !(d <= t) }'; }
field() { sed -n "s/.*\"$1\": *\"\{0,1\}\([^,\"}]*\).*/\1/p"; }

if ensure_venv; then ok "venv $VENV has torch, transformers, auto-round, auto-round-lib"
else bad "venv $VENV: could not install the client packages"; finish; fi

rm -rf "$WORK" && mkdir -p "$WORK"
FOLDERS="sym/auto_round sym/auto_gptq sym/fake asym/auto_round asym/auto_awq asym/auto_gptq"
if make_folders sym auto_round,auto_gptq,fake && make_folders asym auto_round,auto_awq,auto_gptq --asym; then
  ok "tiny-llama W4A16 RTN packed: $FOLDERS"
else
  bad "ar-tune/ar-pack of tiny-llama"; finish
fi

# ar-eval on every folder, then all folders through the clients in one Python process.
for f in $FOLDERS; do
  "$BIN/ar-eval" --quiet --json --model "$WORK/$f" --text "$TEXT" --seqlen 512 --windows "$WINDOWS" --batch 4 \
    > "$WORK/${f%%/*}-${f#*/}.ar-eval.json" || bad "ar-eval $f: $(cat "$WORK/${f%%/*}-${f#*/}.ar-eval.json")"
done
set --
for f in $FOLDERS; do set -- "$@" "$WORK/$f"; done
"$PY" tests/clients/check_hf_quantized.py "$@" --text "$TEXT" --seqlen 512 --windows "$WINDOWS" \
  > "$WORK/clients.jsonl" 2> "$WORK/clients.log" || { bad "check_hf_quantized.py:"; tail -5 "$WORK/clients.log"; }
for f in $FOLDERS; do
  ours=$(field ppl < "$WORK/${f%%/*}-${f#*/}.ar-eval.json")
  theirs=$(grep "\"folder\": \"$WORK/$f\"" "$WORK/clients.jsonl" | field ppl)
  method=$(grep "\"folder\": \"$WORK/$f\"" "$WORK/clients.jsonl" | field quant_method)
  if [ -z "$ours" ] || [ -z "$theirs" ]; then bad "$f: no perplexity (ar-eval '${ours}', client '${theirs}')"
  elif within "$theirs" "$ours" 0.005; then ok "$f ($method): transformers+auto-round ppl $theirs, ar-eval $ours"
  else bad "$f ($method): transformers+auto-round ppl $theirs, ar-eval $ours (over 0.5% apart)"; fi
done

# The tiny Phi-3 and GLM-4 of tests/fixtures/dense (fused qkv_proj / gate_up_proj exported as the
# fused tensors they are): W4A16 RTN auto_round folders load in transformers + auto-round as
# Phi3ForCausalLM / Glm4ForCausalLM, perplexities within 0.5% of ar-eval's (256-token windows of
# the held-out split recorded in FAMILY.json).
for fam in phi3 glm4; do
  D=tests/fixtures/dense
  cut=$(sed -n 's/.*"split_byte": \([0-9]*\).*/\1/p' "$D/$fam.json")
  tail -c +"$((cut + 1))" "$SHARED/data/tinystories/TinyStories-validation-head.txt" > "$WORK/dense-heldout.txt"
  if "$BIN/ar-tune" --quiet --model "$D/$fam" --scheme W4A16 --iters 0 --disable_opt_rtn -o "$WORK/$fam.ars" &&
     "$BIN/ar-pack" --quiet -i "$WORK/$fam.ars" --format auto_round -o "$WORK/$fam" &&
     "$BIN/ar-eval" --quiet --json --model "$WORK/$fam" --text "$WORK/dense-heldout.txt" --seqlen 256 --windows "$WINDOWS" \
       > "$WORK/$fam.ar-eval.json" &&
     "$PY" tests/clients/check_hf_quantized.py "$WORK/$fam" --text "$WORK/dense-heldout.txt" --seqlen 256 \
       --windows "$WINDOWS" > "$WORK/$fam.client.json" 2> "$WORK/$fam.client.log"; then
    ours=$(field ppl < "$WORK/$fam.ar-eval.json"); theirs=$(field ppl < "$WORK/$fam.client.json")
    if within "$theirs" "$ours" 0.005; then ok "$fam auto_round W4A16: transformers+auto-round ppl $theirs, ar-eval $ours"
    else bad "$fam auto_round W4A16: transformers+auto-round ppl $theirs, ar-eval $ours (over 0.5% apart)"; fi
  else bad "$fam: tune, pack, ar-eval or the client failed"; tail -3 "$WORK/$fam.client.log" 2>/dev/null; fi
done

if [ "${CLIENT_GGUF:-1}" != 0 ] && [ -f tests/clients/check_gguf.py ]; then
  "$PY" tests/clients/check_gguf.py --shared "$SHARED" --bin "$BIN" > "$WORK/gguf.log" 2>&1
  rc=$?
  grep -E '^(ok|FAIL) ' "$WORK/gguf.log"
  counts=$(sed -n 's/.*: \([0-9]*\) passed, \([0-9]*\) failed.*/\1 \2/p' "$WORK/gguf.log" | tail -1)
  if [ -n "$counts" ]; then pass=$((pass + ${counts% *})) fail=$((fail + ${counts#* }))
  else bad "check_gguf.py ended without a summary (exit $rc):"; tail -5 "$WORK/gguf.log"; fi
  [ "$rc" = 0 ] || [ "${counts#* }" != 0 ] || bad "check_gguf.py exited $rc"
fi
# 6. vision-language: the checked-in tiny Qwen2-VL (and, with CLIENT_VLM=DIR,
#    every model make_tiny_vlm.py wrote under DIR) through ar and back into
#    transformers + auto-round as its class (tests/clients/check_vlm.py).
if [ "${CLIENT_VLM:-}" != 0 ]; then
  vlms=tests/fixtures/vlm/qwen2_vl
  [ -n "${CLIENT_VLM:-}" ] && vlms="$vlms $(ls -d "$CLIENT_VLM"/*/ 2> /dev/null)"
  AR_SHARED=$SHARED OMP_NUM_THREADS=1 "$PY" tests/clients/check_vlm.py $vlms --bin "$BIN" --work "$WORK/vlm" > "$WORK/vlm.log" 2>&1
  rc=$?
  grep -E '^(ok|FAIL) ' "$WORK/vlm.log"
  counts=$(sed -n 's/^check-vlm: \([0-9]*\) passed, \([0-9]*\) failed.*/\1 \2/p' "$WORK/vlm.log" | tail -1)
  if [ -n "$counts" ]; then pass=$((pass + ${counts% *})) fail=$((fail + ${counts#* }))
  else bad "check_vlm.py ended without a summary (exit $rc):"; tail -5 "$WORK/vlm.log"; fi
fi
# 7. mixtures of experts (docs/moe.md §10): the checked-in tiny MoE models (and a Qwen3-MoE rewritten
#    into transformers 5's fused 3-D expert layout by tests/fixtures/moe/make_fused.py), W4A16 G32
#    plain RTN: sym as auto_round (all) and auto_gptq, asym as auto_awq, loaded by transformers +
#    auto-round (tests/clients/check_moe.py, float32 requested; auto-round forces its torch backend
#    to fp16 and the AWQ kernel is its own) within 0.5% of ar-eval over 40 windows of 64 tokens
#    (fewer windows let one flipped top-k choice of these random models move the ratio by ~1%).
#    gpt-oss goes through check_moe.py's fix of auto-round 0.16.1's gate/up order (see there).
if [ "${CLIENT_MOE:-1}" != 0 ]; then
  M=tests/fixtures/moe/tiny MW=$WORK/moe MTEXT=$SHARED/data/tinystories/TinyStories-validation-head.txt
  mkdir -p "$MW" && python3 tests/fixtures/moe/make_fused.py "$M/qwen3_moe" "$MW/qwen3_moe_fused" > /dev/null
  sym="" asym=""
  for n in qwen3_moe qwen2_moe mixtral_legacy deepseek_v3 gpt_oss qwen3_moe_fused; do
    src=$M/$n; [ -d "$src" ] || src=$MW/$n
    fmts=auto_round; case $n in qwen3_moe|mixtral_legacy|gpt_oss) fmts=auto_round,auto_gptq;; esac
    mkdir -p "$MW/$n" "$MW/${n}_asym"
    if "$BIN/ar-tune" --quiet --model "$src" --scheme W4A16 --group_size 32 --iters 0 --disable_opt_rtn -o "$MW/$n.ars" &&
       "$BIN/ar-pack" --quiet -i "$MW/$n.ars" --format "$fmts" -o "$MW/$n$(case $fmts in *,*) ;; *) echo /$fmts;; esac)"; then
      for f in $(echo "$fmts" | tr , ' '); do sym="$sym $MW/$n/$f"; done
    else bad "MoE $n: ar-tune/ar-pack failed"; fi
    case $n in qwen3_moe|mixtral_legacy|gpt_oss)
      if "$BIN/ar-tune" --quiet --model "$src" --scheme W4A16 --group_size 32 --iters 0 --disable_opt_rtn --asym -o "$MW/${n}_asym.ars" &&
         "$BIN/ar-pack" --quiet -i "$MW/${n}_asym.ars" --format auto_awq -o "$MW/${n}_asym/auto_awq"; then asym="$asym $MW/${n}_asym/auto_awq"
      else bad "MoE $n asym: ar-tune/ar-pack failed"; fi;;
    esac
  done
  OMP_NUM_THREADS=1 "$PY" tests/clients/check_moe.py $sym --backend torch --text "$MTEXT" --windows 40 > "$MW/clients.jsonl" 2> "$MW/clients.log"
  OMP_NUM_THREADS=1 "$PY" tests/clients/check_moe.py $asym --backend auto --text "$MTEXT" --windows 40 >> "$MW/clients.jsonl" 2>> "$MW/clients.log"
  for d in $sym $asym; do
    ours=$("$BIN/ar-eval" --quiet --json --threads 1 --model "$d" --text "$MTEXT" --seqlen 64 --windows 40 | field ppl)
    line=$(grep "\"folder\": \"$d\"" "$MW/clients.jsonl")
    theirs=$(echo "$line" | field ppl); extra=""
    echo "$line" | grep -q ppl_unpatched && extra=" (gate/up order fixed; unfixed loader: $(echo "$line" | field ppl_unpatched))"
    if [ -z "$ours" ] || [ -z "$theirs" ]; then bad "MoE ${d#$MW/}: no perplexity (ar-eval '$ours', client: $line)"
    elif within "$theirs" "$ours" 0.005; then ok "MoE ${d#$MW/}: transformers+auto-round ppl $theirs, ar-eval $ours$extra"
    else bad "MoE ${d#$MW/}: transformers+auto-round ppl $theirs, ar-eval $ours (over 0.5% apart)$extra"; fi
  done
fi
TASKS=${CLIENT_TASKS:-lambada_openai,piqa,hellaswag,arc_easy,arc_challenge,winogrande,mmlu}
if [ "$TASKS" != 0 ]; then
  for shots in 0 3; do
    limit=""; [ "$shots" = 0 ] || limit="--limit ${CLIENT_TASK_LIMIT:-10}"
    "$PY" tests/clients/check_tasks.py --model "$MODEL" --data tests/fixtures/tasks --bin "$BIN" --tasks "$TASKS" \
      --num_fewshot $shots $limit --work "$WORK/tasks-$shots" > "$WORK/tasks-$shots.log" 2>&1
    rc=$?
    grep -E '^(ok|FAIL) ' "$WORK/tasks-$shots.log" | sed "s/^\(ok  *\|FAIL \)/\1$shots-shot /"
    counts=$(sed -n 's/^check_tasks: \([0-9]*\) passed, \([0-9]*\) failed.*/\1 \2/p' "$WORK/tasks-$shots.log" | tail -1)
    if [ -n "$counts" ]; then pass=$((pass + ${counts% *})) fail=$((fail + ${counts#* }))
    else bad "check_tasks.py ($shots-shot) ended without a summary (exit $rc):"; tail -5 "$WORK/tasks-$shots.log"; fi
  done
fi
finish
