#!/bin/sh
# ar-tune --mem_budget / --low_cpu_mem_usage (spill.h): with a budget below
# what the calibration chains need they go to spill files, and the tuned
# stream is byte for byte the one of the run with the chains in memory. On
# tiny-llama (8 samples of 64 tokens: each chain 8 x 64 x 512 bf16 = 0.5 MiB,
# budget 0.01 MiB): SignRound on quantized inputs, and a checkpointed spilled
# run killed after block 2 and resumed. On stories260K (4 x 32 tokens):
# SignRound on FP inputs (two chains), a GGUF scheme tuned with SignRound
# (its quantized chain starts at the embedding), --low_cpu_mem_usage, and a
# budget the chains fit (no spill). auto-round --low_cpu_mem_usage reaches
# ar-tune. A spill directory that cannot hold the files fails with one line
# naming it and leaves no output. A budget below one sample's training
# buffers also makes SignRound run its batch of 4 in chunks of 1 sample
# (signround.h's micro_batch): the in-memory side of each comparison runs
# --micro_batch 1, and the spilled run's META must say "micro_batch":1.
. "$(dirname "$0")/lib.sh"
TL=$SHARED/models/tiny-llama
"$BIN/ar-calib" --model "$TL" --dataset "$STORIES_TEXT" --nsamples 8 --seqlen 64 -o "$T/tl.ars" --quiet
stories_calib 4 32 -o "$T/st.ars" --quiet
mkdir "$T/spill"
tune() { c=$1; shift; "$BIN/ar-tune" -i "$T/$c.ars" --iters 2 --batch_size 4 --threads 2 "$@"; }

# same_both NAME CALIB ARGS...: in memory (chunks of 1 sample), then spilled;
# the streams must be equal, and the spilled run must say it spilled, record
# its chunk and leave no file behind.
same_both() {
    name=$1 c=$2; shift 2
    tune "$c" "$@" --micro_batch 1 -o "$T/$name.mem.ars" --progress 2> "$T/$name.mem.err" || fail "$name in memory: $(cat "$T/$name.mem.err")"
    grep -q 'in files under' "$T/$name.mem.err" && fail "$name: spilled without --mem_budget"
    TMPDIR=$T/spill tune "$c" "$@" --mem_budget 0.01 -o "$T/$name.spill.ars" --progress 2> "$T/$name.spill.err" ||
        fail "$name spilled: $(cat "$T/$name.spill.err")"
    grep -q "in files under $T/spill" "$T/$name.spill.err" || fail "$name: no spill line: $(cat "$T/$name.spill.err")"
    cmp -s "$T/$name.mem.ars" "$T/$name.spill.ars" || fail "$name: spilled output differs"
    "$BIN/ar-dump" "$T/$name.spill.ars" | grep -q '^meta.*"micro_batch":1[,}]' || fail "$name: META has no chunk 1"
    [ -z "$(ls -A "$T/spill")" ] || fail "$name: files left in the spill directory: $(ls -A "$T/spill")"
}
same_both signround tl
same_both fp_input st --disable_quanted_input
same_both gguf st --scheme GGUF:Q4_K_M
# a budget the chains and a whole batch fit: no spill, no chunks
tune st --mem_budget 64 -o "$T/fit.ars" --progress 2> "$T/fit.err"
grep -q 'in files under' "$T/fit.err" && fail "chains spilled under a 64 MiB budget"
tune st -o "$T/st.mem.ars" --quiet
cmp -s "$T/st.mem.ars" "$T/fit.ars" || fail "--mem_budget 64 changed the output"
# --low_cpu_mem_usage: always spilled, whole batches, same bytes
TMPDIR=$T/spill tune st --low_cpu_mem_usage -o "$T/low.ars" --progress 2> "$T/low.err"
grep -q 'in files under' "$T/low.err" || fail "--low_cpu_mem_usage did not spill: $(cat "$T/low.err")"
cmp -s "$T/st.mem.ars" "$T/low.ars" || fail "--low_cpu_mem_usage changed the output"

# Checkpoint + spill on tiny-llama: killed after block 2's commit, resumed; the same bytes.
TMPDIR=$T/spill "$BIN/ar-tune" -i "$T/tl.ars" --iters 2 --batch_size 4 --threads 2 --mem_budget 0.01 \
    --checkpoint "$T/ck" -o "$T/ck.ars" --quiet &
pid=$!   # ar-tune's own process
n=0
until grep -q '"last_block":1,' "$T/ck/manifest.json" 2>/dev/null; do
    n=$((n + 1)); [ $n -lt 6000 ] || { kill -KILL $pid; fail "block 2 never committed"; }
    sleep 0.02
done
kill -KILL $pid; wait $pid 2>/dev/null || true
TMPDIR=$T/spill tune tl --mem_budget 0.01 --checkpoint "$T/ck" -o "$T/ck.ars" --progress 2> "$T/ck.err" ||
    fail "resume: $(cat "$T/ck.err")"
grep -q 'resuming at block' "$T/ck.err" || fail "no resume: $(cat "$T/ck.err")"
cmp -s "$T/signround.mem.ars" "$T/ck.ars" || fail "checkpointed spilled run differs"

# auto-round --low_cpu_mem_usage passes the switch on (the dry run prints the pipeline).
"$BIN/auto-round" --model "$M" --dataset "$STORIES_TEXT" --nsamples 4 --seqlen 32 --iters 2 \
    --low_cpu_mem_usage --output_dir "$T/ar_out" --dry_run > "$T/dry.txt" 2>&1 || fail "auto-round --dry_run: $(cat "$T/dry.txt")"
grep -q 'ar-tune.*--low_cpu_mem_usage' "$T/dry.txt" || fail "auto-round did not pass --low_cpu_mem_usage: $(cat "$T/dry.txt")"

# A spill directory that does not exist: one line naming it, exit 1, no output.
rc=0
TMPDIR=$T/nowhere tune st --mem_budget 0.01 -o "$T/bad.ars" 2> "$T/bad.err" || rc=$?
[ $rc = 1 ] || fail "missing spill directory: rc $rc"
[ "$(wc -l < "$T/bad.err")" = 1 ] && grep -q "$T/nowhere" "$T/bad.err" || fail "error line: $(cat "$T/bad.err")"
[ ! -e "$T/bad.ars" ] || fail "a failed run left its output"
echo "mem_budget: ok"
