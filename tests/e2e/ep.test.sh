#!/bin/sh
# Expert parallel (docs/mpi.md, "Expert parallel"): `mpirun -np N ar-tune ...
# --expert_parallel` gives each rank a contiguous share of every MoE block's
# routed experts; the routed rows are exchanged, and rank 0 writes the bytes
# of one process:
#  1. the tiny Qwen3-MoE (4 experts, top-2; block 2 dense) and DeepSeek-V3
#     (grouped sigmoid routing, shared expert, MLA) fixtures: one process =
#     -np 1 = -np 2 = -np 3 (3 ranks: uneven shares of the experts);
#  2. the exchange line names the bytes the ranks' shares predict (> 0);
#  3. --expert_parallel with --dp_chunk is refused with one line, no output;
#  4. with --checkpoint, the rerun of a finished run replays it (rank 0) to
#     the one-process bytes.
# Skipped, with a line, without mpirun or with an ar-tune built without MPI.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/mpi_lib.sh"
FIX=$(cd "$(dirname "$0")/../fixtures/moe/tiny" && pwd)

"$BIN/ar-calib" --quiet --model "$FIX/qwen3_moe" --dataset "$STORIES_TEXT" --nsamples 4 --seqlen 32 -o "$T/q.ars"
AQ="--model $FIX/qwen3_moe -i $T/q.ars --group_size 32 --iters 8 --batch_size 4 --threads 1 --quiet"
if ! mpirun_np 2 "$BIN/ar-tune" $AQ --expert_parallel -o "$T/probe.ars" 2> "$T/probe.err"; then
  if grep -q "has no MPI" "$T/probe.err"; then echo "skip: ar-tune was built without MPI (no mpicc)"; exit 0; fi
  cat "$T/probe.err" >&2; fail "mpirun -np 2 ar-tune --expert_parallel failed"
fi

# 1.
"$BIN/ar-calib" --quiet --model "$FIX/deepseek_v3" --dataset "$STORIES_TEXT" --nsamples 4 --seqlen 32 -o "$T/d.ars"
AD="--model $FIX/deepseek_v3 -i $T/d.ars --group_size 32 --iters 8 --batch_size 4 --threads 1 --quiet"
for fam in qwen3_moe deepseek_v3; do
  if [ $fam = qwen3_moe ]; then A=$AQ; else A=$AD; fi
  "$BIN/ar-tune" $A -o "$T/$fam.one.ars"
  for n in 1 2 3; do
    mpirun_np $n "$BIN/ar-tune" $A --expert_parallel -o "$T/$fam.np$n.ars"
    cmp "$T/$fam.one.ars" "$T/$fam.np$n.ars" || fail "$fam: --expert_parallel -np $n differs from one process"
  done
  echo "ok: $fam: --expert_parallel: one process = -np 1 = -np 2 = -np 3"
done

# 2. Rank 0 receives rank 1's routed rows forward and backward: the bytes
# are the line's own figure; that it is there and not zero is checked here,
# its value against the routing in test_moe_ep.
mpirun_np 2 "$BIN/ar-tune" $AQ --expert_parallel --progress -o "$T/p.ars" 2> "$T/p.err"
line=$(grep "expert exchange" "$T/p.err") || { cat "$T/p.err" >&2; fail "no exchange line"; }
echo "$line" | grep -q "exchange 0.000 MiB" && fail "no bytes exchanged: $line"
echo "ok: $line"

# 3.
if mpirun_np 2 "$BIN/ar-tune" $AQ --expert_parallel --dp_chunk 1 -o "$T/both.ars" 2> "$T/both.err"; then
  fail "--expert_parallel with --dp_chunk: exit 0"
fi
grep -q "give no --dp_chunk" "$T/both.err" || { cat "$T/both.err" >&2; fail "no line about --dp_chunk"; }
[ ! -e "$T/both.ars" ] || fail "refused, but an output was written"
echo "ok: --expert_parallel with --dp_chunk refused"

# 4.
mpirun_np 2 "$BIN/ar-tune" $AD --expert_parallel --checkpoint "$T/ck" -o "$T/ck1.ars"
mpirun_np 2 "$BIN/ar-tune" $AD --expert_parallel --checkpoint "$T/ck" --progress -o "$T/ck2.ars" 2> "$T/ck.err"
grep -q "blocks finished in" "$T/ck.err" || { cat "$T/ck.err" >&2; fail "the rerun did not replay the checkpoint"; }
cmp "$T/deepseek_v3.one.ars" "$T/ck1.ars" || fail "checkpointed -np 2 differs from one process"
cmp "$T/deepseek_v3.one.ars" "$T/ck2.ars" || fail "replayed -np 2 differs from one process"
echo "ok: deepseek_v3 --expert_parallel --checkpoint: run and replay = one process"
