#!/bin/sh
# ar-tune --enable_lfq (AutoRound's experimental LFQ loss: the last block tuned
# on the language model's cross-entropy through the final norm and lm_head)
# on stories260K:
#  1. META records enable_lfq; every block but the last is byte-identical to
#     the MSE run's (per-block checkpoint files), the last one differs, and
#     the stream packs and evaluates;
#     --lfq_target fp (KL from the original model's predictions) records
#     lfq_target and tunes the last block to yet another result;
#  2. without SignRound (--iters 0, or no calibration stream) the flag is a
#     usage error (exit 2) and leaves no output;
#  3. auto-round passes the flag to ar-tune (--dry_run prints the pipeline).
. "$(dirname "$0")/lib.sh"

stories_calib 8 64 --quiet -o "$T/calib.ars"
tune() { out=$1; shift; "$BIN/ar-tune" --quiet --threads 1 -i "$T/calib.ars" --iters 8 --batch_size 4 \
    --scheme W2A16G64 --checkpoint "$T/ck-$out" -o "$T/$out.ars" "$@"; }

# 1.
tune mse
tune lfq --enable_lfq
"$BIN/ar-dump" "$T/lfq.ars" | head -1 | grep -q '"enable_lfq":true' || fail "META lacks enable_lfq"
if "$BIN/ar-dump" "$T/mse.ars" | head -1 | grep -q enable_lfq; then fail "the MSE run's META names enable_lfq"; fi
last=$(ls "$T/ck-mse" | grep '^block-' | sort | tail -1)
[ -n "$last" ] || fail "no checkpoint blocks"
for b in $(ls "$T/ck-mse" | grep '^block-'); do
    if [ "$b" = "$last" ]; then
        if cmp -s "$T/ck-mse/$b" "$T/ck-lfq/$b"; then fail "the last block ($b) is the MSE run's"; fi
    else
        cmp -s "$T/ck-mse/$b" "$T/ck-lfq/$b" || fail "$b differs from the MSE run's (only the last block may)"
    fi
done
tune kl --enable_lfq --lfq_target fp
"$BIN/ar-dump" "$T/kl.ars" | head -1 | grep -q '"lfq_target":"fp"' || fail "META lacks lfq_target fp"
if cmp -s "$T/ck-kl/$last" "$T/ck-lfq/$last"; then fail "--lfq_target fp changed nothing"; fi
cmp -s "$T/ck-kl/block-0000.ars" "$T/ck-mse/block-0000.ars" || fail "--lfq_target fp changed block 0"
"$BIN/ar-pack" --quiet -i "$T/lfq.ars" --format fake -o "$T/fake"
"$BIN/ar-eval" --quiet --model "$T/fake" --text "$STORIES_TEXT" --seqlen 64 --windows 4 --json | grep -q '"ppl"' \
    || fail "the LFQ model does not evaluate"

# 2.
set +e
"$BIN/ar-tune" --quiet -i "$T/calib.ars" --iters 0 --enable_lfq -o "$T/rtn.ars" 2> "$T/err"
rc=$?
set -e
[ "$rc" = 2 ] || fail "--enable_lfq with --iters 0: exit $rc, want 2"
grep -q -- "--enable_lfq" "$T/err" || fail "the error does not name --enable_lfq: $(cat "$T/err")"
[ ! -e "$T/rtn.ars" ] || fail "a refused run left output"
set +e
"$BIN/ar-tune" --quiet --model "$M" --enable_lfq -o "$T/rtn.ars" 2> "$T/err"
rc=$?
set -e
[ "$rc" = 2 ] || fail "--enable_lfq without calibration data: exit $rc, want 2"
grep -q "calibration stream" "$T/err" || fail "the error does not say a stream is needed: $(cat "$T/err")"
[ ! -e "$T/rtn.ars" ] || fail "a refused run left output"

for bad in "--lfq_target fp" "--enable_lfq --lfq_target logits"; do
    set +e
    # shellcheck disable=SC2086
    "$BIN/ar-tune" --quiet -i "$T/calib.ars" --iters 2 $bad -o "$T/bad.ars" 2> "$T/err"
    rc=$?
    set -e
    [ "$rc" = 2 ] || fail "$bad: exit $rc, want 2"
    grep -q -- "--lfq_target" "$T/err" || fail "$bad: the error does not name --lfq_target: $(cat "$T/err")"
    [ ! -e "$T/bad.ars" ] || fail "$bad left output"
done

# 3.
"$BIN/auto-round" --model "$M" --dataset "$STORIES_TEXT" --enable_lfq --output_dir "$T/out" --dry_run > "$T/cmds"
grep 'ar-tune' "$T/cmds" | grep -q -- '--enable_lfq' || fail "auto-round does not pass --enable_lfq: $(cat "$T/cmds")"
echo "lfq: ok"
