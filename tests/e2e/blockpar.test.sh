#!/bin/sh
# Block-parallel tuning (docs/parallel.md) on tiny-llama (6 blocks; 4 samples
# of 64 tokens, 3 iterations, one thread): the ranges that
# examples/blockpar.mk tunes with make -j (2 and 3 ranges) and that
# examples/blockpar-slurm.sh runs as array tasks (under a stand-in sbatch that
# runs each job at once), merged by ar-pack, give byte for byte the folder of
# one whole `ar-tune --disable_quanted_input` run; so do ranges started from
# block 0's stream (the FP forward inside ar-tune), a range killed and
# resumed from its checkpoint, plain RTN ranges without data, a GGUF mix (embedding with block
# 0, output head with block 5) and a mixture-of-experts model (qwen3_moe,
# DeepSeek-V3: dense then MoE layers). Gaps, overlaps, differing settings,
# SignRound on quantized inputs past block 0 and FP inputs computed with
# other threads, and a range's layer GGUF cannot hold (named with its file), are
# refused with one line and no output.
set -eu
: "${AR_BIN:?AR_BIN not set}" "${AR_SHARED:?AR_SHARED not set}"
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
M=$AR_SHARED/models/tiny-llama
TEXT=$M/heldout.txt
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fail=1; }
same() {   # same NAME DIR_A DIR_B: the folders hold the same files, byte for byte
  if diff -r "$2" "$3" > "$T/diff" 2>&1; then ok "$1: byte-identical to the whole run"
  else bad "$1: differs from the whole run: $(head -3 "$T/diff")"; fi
}
S="NSAMPLES=4 SEQLEN=64 ITERS=3 BATCH=8 THREADS=1"
calib() { "$AR_BIN/ar-calib" --model "$M" --dataset "$TEXT" --nsamples 4 --seqlen 64 --quiet "$@"; }
tune() { "$AR_BIN/ar-tune" --iters 3 --threads 1 --disable_quanted_input --quiet "$@"; }
pack() { "$AR_BIN/ar-pack" --quiet "$@"; }

# The whole run, and the quantized-input run it must differ from (else the
# comparisons below would not tell the two apart).
calib -o "$T/calib.ars"
tune -i "$T/calib.ars" -o "$T/whole.ars"
pack -i "$T/whole.ars" -o "$T/whole"
"$AR_BIN/ar-tune" --iters 3 --threads 1 --quiet -i "$T/calib.ars" -o "$T/quanted.ars"
if cmp -s "$T/whole.ars" "$T/quanted.ars"; then bad "--disable_quanted_input changed nothing"
else ok "--disable_quanted_input changes the tuned stream"; fi

# examples/blockpar.mk with make -j, in 2 and 3 ranges
for ranges in "0-2 3-5" "0-1 2-3 4-5"; do
  o=$T/mk-$(echo "$ranges" | tr ' ' _)
  # shellcheck disable=SC2086
  if make -s -f "$ROOT/examples/blockpar.mk" -j3 AR_BIN="$AR_BIN" AR_SHARED="$AR_SHARED" $S RANGES="$ranges" \
        OUT="$o" > "$T/make.log" 2>&1
  then same "make -j, ranges $ranges" "$T/whole" "$o/model"
  else bad "make -f examples/blockpar.mk RANGES='$ranges': $(tail -3 "$T/make.log")"; fi
done
# the example's own comparison target
# shellcheck disable=SC2086
make -s -f "$ROOT/examples/blockpar.mk" AR_BIN="$AR_BIN" AR_SHARED="$AR_SHARED" $S RANGES="0-1 2-3 4-5" \
    OUT="$T/mk-0-1_2-3_4-5" whole > "$T/make.log" 2>&1 || bad "make whole: $(tail -3 "$T/make.log")"
same "make whole" "$T/whole" "$T/mk-0-1_2-3_4-5/whole"

# examples/blockpar-slurm.sh: submit through a stand-in sbatch that runs each
# job when it is submitted (array tasks one after the other), as Slurm would
# once the dependencies are met.
mkdir "$T/fakebin"
cat > "$T/fakebin/sbatch" <<'SB'
#!/bin/sh
array=
while [ $# -gt 0 ]; do case $1 in --array=*) array=${1#--array=}; shift ;; --*) shift ;; *) break ;; esac; done
if [ -n "$array" ]; then
  i=${array%-*}
  while [ "$i" -le "${array#*-}" ]; do SLURM_ARRAY_TASK_ID=$i sh "$@" >&2 || exit 1; i=$((i + 1)); done
else sh "$@" >&2 || exit 1; fi
echo 4242
SB
chmod +x "$T/fakebin/sbatch"
if PATH="$T/fakebin:$PATH" MODEL=$M DATA=$TEXT OUT=$T/slurm AR_BIN=$AR_BIN BLOCKS_PER_TASK=4 NSAMPLES=4 SEQLEN=64 \
     ITERS=3 THREADS=1 sh "$ROOT/examples/blockpar-slurm.sh" > "$T/slurm.log" 2>&1
then same "Slurm array (blocks 0-3, 4-5)" "$T/whole" "$T/slurm/model"
else bad "blockpar-slurm.sh: $(tail -3 "$T/slurm.log")"; fi

# a range from block 0's stream (ar-tune runs blocks 0-2 forward only), with
# a checkpoint, rerun once finished (replays it)
tune -i "$T/calib.ars" --blocks 3-5 --checkpoint "$T/ck" -o "$T/b.ars"
tune -i "$T/calib.ars" --blocks 3-5 --checkpoint "$T/ck" -o "$T/b2.ars"
cmp -s "$T/b.ars" "$T/b2.ars" && ok "a finished range's checkpoint replays the same stream" || bad "checkpoint replay differs"
# killed (SIGKILL) once block 3's records file appears, and resumed
"$AR_BIN/ar-tune" --iters 3 --threads 1 --disable_quanted_input --quiet -i "$T/calib.ars" --blocks 2-5 \
    --checkpoint "$T/ck2" -o "$T/k.ars" & pid=$!
n=0; while [ ! -e "$T/ck2/block-0003.ars" ] && [ $n -lt 6000 ]; do sleep 0.02; n=$((n + 1)); done
kill -KILL $pid 2>/dev/null || true; wait $pid 2>/dev/null || true
tune -i "$T/calib.ars" --blocks 2-5 --checkpoint "$T/ck2" -o "$T/k.ars"
tune -i "$T/calib.ars" --blocks 2-5 -o "$T/k-ref.ars"
cmp -s "$T/k.ars" "$T/k-ref.ars" && ok "a range killed and resumed from its checkpoint writes the same stream" ||
  bad "a resumed range differs"
tune -i "$T/calib.ars" --blocks 0-2 -o "$T/a.ars"
pack -i "$T/b.ars" -i "$T/a.ars" -o "$T/ab"
same "ranges from block 0's stream, given in reverse order" "$T/whole" "$T/ab"

# plain RTN without data
"$AR_BIN/ar-tune" --model "$M" --quiet -o "$T/rtn.ars"
"$AR_BIN/ar-tune" --model "$M" --quiet --blocks 0-3 -o "$T/rtn-a.ars"
"$AR_BIN/ar-tune" --model "$M" --quiet --blocks 4-5 -o "$T/rtn-b.ars"
pack -i "$T/rtn.ars" -o "$T/rtn"
pack -i "$T/rtn-a.ars" -i "$T/rtn-b.ars" -o "$T/rtn-ab"
same "RTN ranges" "$T/rtn" "$T/rtn-ab"

# a GGUF mix with data: the embedding comes with block 0, the output head with block 5
g="--scheme gguf:q4_k_m --iters 0"
# shellcheck disable=SC2086
tune -i "$T/calib.ars" $g -o "$T/g.ars" && pack -i "$T/g.ars" --format gguf:q4_k_m -o "$T/g.gguf"
# shellcheck disable=SC2086
tune -i "$T/calib.ars" $g --blocks 0-2 -o "$T/g-a.ars" && tune -i "$T/calib.ars" $g --blocks 3-5 -o "$T/g-b.ars"
pack -i "$T/g-a.ars" -i "$T/g-b.ars" --format gguf:q4_k_m -o "$T/g-ab.gguf"
cmp -s "$T/g.gguf" "$T/g-ab.gguf" && ok "GGUF q4_k_m ranges: byte-identical to the whole run" || bad "GGUF ranges differ"

# mixtures of experts, one block per range
F=$ROOT/tests/fixtures/moe/tiny
for fam in qwen3_moe deepseek_v3; do
  "$AR_BIN/ar-calib" --quiet --model "$F/$fam" --dataset "$AR_SHARED/data/tinystories/TinyStories-validation-head.txt" \
      --nsamples 4 --seqlen 32 -o "$T/$fam.ars"
  mt() { "$AR_BIN/ar-tune" --quiet -i "$T/$fam.ars" --group_size 32 --iters 2 --batch_size 2 --threads 1 \
         --disable_quanted_input "$@"; }
  mt -o "$T/$fam-w.ars"; mt --blocks 0 -o "$T/$fam-0.ars"; mt --blocks 1 -o "$T/$fam-1.ars"
  pack -i "$T/$fam-w.ars" -o "$T/$fam-w"; pack -i "$T/$fam-0.ars" -i "$T/$fam-1.ars" -o "$T/$fam-01"
  same "$fam ranges 0, 1" "$T/$fam-w" "$T/$fam-01"
done

# refusals: exit 1, one line naming the problem, no output
refused() {   # refused WHAT PATTERN OUT CMD...: CMD fails with one line matching PATTERN and leaves no OUT
  what=$1 pat=$2 out=$3; shift 3
  if "$@" > "$T/out" 2> "$T/err"; then bad "$what accepted"; return; fi
  if [ "$(wc -l < "$T/err")" = 1 ] && grep -q -- "$pat" "$T/err" && ! ls -d "$out"* > /dev/null 2>&1
  then ok "$what refused: $(cat "$T/err")"
  else bad "$what: $(cat "$T/err")"; fi
}
o2=$T/mk-0-1_2-3_4-5
refused "a gap" "blocks 2-3 are in no stream" "$T/x" pack -i "$o2/blocks-0-1.ars" -i "$o2/blocks-4-5.ars" -o "$T/x"
refused "an overlap" "blocks 2-3 overlap" "$T/x" pack -i "$T/a.ars" -i "$o2/blocks-2-3.ars" -i "$o2/blocks-4-5.ars" -o "$T/x"
refused "one range alone" "is the only stream: blocks 3-5 are in no stream" "$T/x" pack -i "$T/a.ars" -o "$T/x"
tune -i "$T/calib.ars" --iters 4 --blocks 3-5 -o "$T/b-i4.ars"
refused "other settings" "META differs from .*tuning.iters" "$T/x" pack -i "$T/a.ars" -i "$T/b-i4.ars" -o "$T/x"
echo '{"model.layers.4.mlp.down_proj": {"group_size": 64}}' > "$T/lc.json"
tune -i "$T/calib.ars" --blocks 3-5 --layer_config "$T/lc.json" -o "$T/b-lc.ars"
refused "another layer config" "META differs from .*layer_config_digest" "$T/x" pack -i "$T/a.ars" -i "$T/b-lc.ars" -o "$T/x"
# a layer's refusal names the range's file it came from (fp-b.ars holds block 4)
echo '{"model.layers.4.mlp.down_proj": {"bits": 8, "data_type": "fp"}}' > "$T/fp.json"
"$AR_BIN/ar-tune" --model "$M" --quiet --group_size 32 --sym --layer_config "$T/fp.json" --blocks 0-3 -o "$T/fp-a.ars"
"$AR_BIN/ar-tune" --model "$M" --quiet --group_size 32 --sym --layer_config "$T/fp.json" --blocks 4-5 -o "$T/fp-b.ars"
refused "an FP layer of a range into GGUF" "^ar-pack: $T/fp-b.ars: model.layers.4.mlp.down_proj is a fp layer" \
  "$T/x.gguf" pack -i "$T/fp-a.ars" -i "$T/fp-b.ars" --format gguf:q4_0 -o "$T/x.gguf"
refused "a whole run with a range" "a whole run's stream" "$T/x" pack -i "$T/whole.ars" -i "$T/b.ars" -o "$T/x"
refused "SignRound on quantized inputs past block 0" "needs every block before it tuned" "$T/y.ars" \
  "$AR_BIN/ar-tune" --iters 3 --threads 1 --quiet -i "$T/calib.ars" --blocks 3-5 -o "$T/y.ars"
calib --upto-block 3 --threads 1 -o "$T/c3.ars"
refused "FP inputs from other threads" "computed with threads 1, this run has 2" "$T/y.ars" \
  "$AR_BIN/ar-tune" --iters 3 --threads 2 --disable_quanted_input --quiet -i "$T/c3.ars" --blocks 3-5 -o "$T/y.ars"
refused "a range before the stream's block" "holds the inputs of block 3" "$T/y.ars" tune -i "$T/c3.ars" --blocks 2-5 -o "$T/y.ars"
refused "blocks past the model" "the model has 6 blocks (0-5)" "$T/y.ars" tune -i "$T/calib.ars" --blocks 4-6 -o "$T/y.ars"
exit $fail
