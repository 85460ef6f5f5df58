#!/bin/sh
# ar-tune --checkpoint on tiny-llama (8 samples of 64 tokens, 10 iterations):
# a run killed with SIGKILL twice — once as block 2's records file appears
# (possibly before the block is committed), once in the middle of block 4 —
# and resumed gives byte for byte the stream of an uninterrupted run without
# checkpoint; a second run on the same directory at the same time is refused;
# changed settings are refused with exit 1 and a line naming what differs; a
# rerun of a finished checkpoint tunes nothing and writes the same bytes.
set -eu
BIN=${AR_BIN:?AR_BIN not set}
SHARED=${AR_SHARED:?AR_SHARED not set}
M=$SHARED/models/tiny-llama
T=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill -KILL $pid 2>/dev/null; rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$BIN/ar-calib" --model "$M" --dataset "$SHARED/data/tinystories/TinyStories-validation-head.txt" \
    --nsamples 8 --seqlen 64 -o "$T/calib.ars" --quiet
tune() { "$BIN/ar-tune" -i "$T/calib.ars" --iters 10 --batch_size 4 --threads 1 "$@"; }
# tune_bg ERR ARGS...: tune in the background; $pid is ar-tune's own process.
tune_bg() { e=$1; shift; "$BIN/ar-tune" -i "$T/calib.ars" --iters 10 --batch_size 4 --threads 1 "$@" 2> "$e" & pid=$!; }
CK=$T/ck

# wait_until CMD...: poll CMD every 20 ms for up to 120 s.
wait_until() {
  n=0
  while ! "$@" 2>/dev/null; do
    n=$((n + 1)); [ $n -lt 6000 ] || return 1
    sleep 0.02
  done
}
finished() { grep -q "\"last_block\":$1," "$CK/manifest.json"; }
kill_run() { kill -KILL "$pid"; rc=0; wait "$pid" || rc=$?; pid=; [ $rc -ne 0 ] || fail "$1: exit 0 after SIGKILL"; }

# 1. The reference: no checkpoint, uninterrupted.
tune -o "$T/A.ars" --quiet

# 2. Killed as soon as block 2's records are in place (0-based block 1).
tune_bg "$T/err1" --checkpoint "$CK" -o "$T/B.ars" --quiet
wait_until test -e "$CK/block-0001.ars" || fail "no block-0001.ars: $(cat "$T/err1")"
kill_run "first kill"
[ ! -e "$T/B.ars" ] || fail "SIGKILL left the final output"

# 3. Resumed, then killed in the middle of block 4 (0-based 3): three finished.
tune_bg "$T/err2" --checkpoint "$CK" -o "$T/B.ars" --progress
wait_until finished 2 || fail "block 3 never finished: $(cat "$T/err2")"
# stopped at once, so that block 4 cannot finish however fast the host is
kill -STOP "$pid"
finished 2 || fail "the run got past block 4 before it was stopped (raise --iters in this test)"
grep -q 'resuming at block [23]/6' "$T/err2" || { cat "$T/err2"; fail "no 'resuming at block 2/6 or 3/6'"; }
# ... while it holds the directory, a second run on it is refused.
rc=0; tune --checkpoint "$CK" -o "$T/X.ars" 2> "$T/err_lock" || rc=$?
[ $rc = 1 ] && grep -q 'in use' "$T/err_lock" || fail "concurrent run: rc $rc: $(cat "$T/err_lock")"
kill_run "second kill"
finished 2 || fail "the second kill was not inside block 4: $(cat "$CK/manifest.json")"

# 4. Resumed to the end: the same bytes as the uninterrupted run (exact:
# both runs on this machine, kernel and thread count; docs/robustness.md).
tune --checkpoint "$CK" -o "$T/B.ars" --progress 2> "$T/err3"
grep -q 'resuming at block 4/6' "$T/err3" || { cat "$T/err3"; fail "no 'resuming at block 4/6'"; }
grep -q 'block 3/6' "$T/err3" && fail "blocks before the resume point were tuned again"
cmp "$T/A.ars" "$T/B.ars" || fail "resumed stream differs from the uninterrupted one"

# 5. A finished checkpoint: nothing tuned, same bytes (to a file and to a pipe).
tune --checkpoint "$CK" -o "$T/C.ars" --progress 2> "$T/err4"
grep -q 'all 6/6 blocks finished' "$T/err4" || { cat "$T/err4"; fail "finished checkpoint not recognised"; }
grep -q 'block [0-9]/6  elapsed' "$T/err4" && fail "a finished checkpoint tuned blocks again"
cmp "$T/A.ars" "$T/C.ars" || fail "finished checkpoint rerun differs"
tune --checkpoint "$CK" --quiet | cmp "$T/A.ars" - || fail "finished checkpoint to standard output differs"

# 6. Other settings, calibration data or threads are refused, naming the field.
refused() {  # FIELD ARGS...
  field=$1; shift
  rc=0; "$@" -o "$T/Y.ars" 2> "$T/err" || rc=$?
  [ $rc = 1 ] && [ "$(wc -l < "$T/err")" = 1 ] && grep -q "$field differs" "$T/err" ||
    fail "changed $field: rc $rc: $(cat "$T/err")"
  [ ! -e "$T/Y.ars" ] || fail "changed $field: an output was written"
}
refused iters tune --checkpoint "$CK" --iters 11
refused threads tune --checkpoint "$CK" --threads 2
refused nsamples tune --checkpoint "$CK" --nsamples 7
refused scheme tune --checkpoint "$CK" --scheme W2A16G64
"$BIN/ar-calib" --model "$M" --dataset "$SHARED/data/tinystories/TinyStories-validation-head.txt" \
    --nsamples 8 --seqlen 64 --seed 1 -o "$T/calib2.ars" --quiet
refused calibration_digest "$BIN/ar-tune" -i "$T/calib2.ars" --iters 10 --batch_size 4 --threads 1 --checkpoint "$CK"
grep -q 'new --checkpoint directory' "$T/err" || fail "the refusal does not suggest a new directory"
echo "checkpoint: all checks passed"
