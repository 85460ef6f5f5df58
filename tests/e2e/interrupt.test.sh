#!/bin/sh
# Interrupted runs leave nothing that looks finished. Each writing tool is
# stopped while its output is open (ar-tune and ar-pack deterministically:
# ar-tune is caught inside its block loop by polling for its temporary file,
# ar-pack is fed half a stream through a FIFO and waits for the rest;
# ar-calib, whose write lasts milliseconds, by `timeout -s SIG` at several
# delays) with SIGINT, SIGTERM and SIGKILL. Then:
#  - the final output name does not exist (or, for the ar-calib sweep, holds a
#    complete stream that ar-dump accepts);
#  - after SIGINT/SIGTERM nothing is left at all (the tools remove their
#    temporary files and folders before dying of the signal);
#  - after SIGKILL, which cannot be caught, whatever is left is named *.tmp*.
set -eu
BIN=${AR_BIN:?AR_BIN not set}
SHARED=${AR_SHARED:-../shared}
M=$SHARED/models/stories260K
D=$SHARED/data/tinystories/TinyStories-validation-head.txt
T=$(mktemp -d)
trap 'exec 3>&- 2>/dev/null; rm -rf "$T"' EXIT
cd "$T"

fail() { echo "FAIL: $*" >&2; exit 1; }

# Inputs: a small calibration stream and RTN-quantized layer streams (fast).
# The layer streams exceed 200 kB because the stream reader reads its input in
# 128 kB pieces: ar-pack sees the META record (and opens its outputs) only
# once that much has arrived. tiny-llama's W4A16 stream is 8 MB, stories260K's
# GGUF q8_0 one 0.29 MB (its W4A16 one is too small).
"$BIN/ar-calib" --model "$M" --dataset "$D" --nsamples 4 --seqlen 32 -o calib.ars --quiet
"$BIN/ar-tune" --model "$SHARED/models/tiny-llama" -o rtn.ars --quiet
"$BIN/ar-tune" --model "$M" --scheme gguf:q8_0 -o rtn_gguf.ars --quiet
mkdir work
cd work

# wait_for PATTERN SECONDS: poll until a name in . matches the shell pattern.
wait_for() {
  n=0
  while [ $n -lt $(($2 * 50)) ]; do
    for f in $1; do [ -e "$f" ] && return 0; done
    sleep 0.02; n=$((n + 1))
  done
  return 1
}

# start SIG CMD...: run CMD in the background; $pid is what to signal. SIGINT
# and SIGTERM go through timeout(1), which forwards them and (unlike a plain
# background job, whose SIGINT the shell ignores) gives the tool default
# dispositions; SIGKILL goes to the tool itself.
start() {
  sig=$1; shift
  if [ "$sig" = KILL ]; then "$@" 2> err & else timeout 300 "$@" 2> err & fi
  pid=$!
}

# stop_and_check SIG FINAL WHAT: signal the run, then check what it left.
stop_and_check() {
  kill -s "$1" "$pid"
  rc=0; wait "$pid" || rc=$?
  [ "$rc" -ne 0 ] || fail "$3: exit 0 after SIG$1"
  [ ! -e "$2" ] || fail "$3: SIG$1 left the final output $2"
  left=$(ls -A | grep -v -e '^err$' -e '^feed$' || true)
  if [ "$1" = KILL ]; then
    [ -n "$left" ] || fail "$3: SIGKILL left no temporary output: the run was not caught mid-write"
    for f in $left; do case "$f" in *.tmp*) ;; *) fail "$3: SIGKILL left '$f', not named *.tmp*" ;; esac; done
  else
    [ -z "$left" ] || fail "$3: SIG$1 left: $left"
  fi
  rm -rf ./* ./.[!.]* 2>/dev/null || true
}

# 1. ar-tune with -o FILE, caught in its block loop (long SignRound iterations).
# The pause lets it reach the tuning loop (worker threads running): a signal
# that arrives twice (timeout(1) signals the process and its group) must still
# leave nothing behind (cli.c resets the action itself inside the handler).
for sig in INT TERM KILL; do
  start $sig "$BIN/ar-tune" -i ../calib.ars --iters 100000 -o tuned.ars --quiet
  wait_for 'tuned.ars.tmp*' 120 || fail "ar-tune never opened its output: $(cat err)"
  sleep 1
  stop_and_check $sig tuned.ars "ar-tune"
done

# 2. ar-pack (HF folder, several formats, GGUF) reading part of a stream from a FIFO.
half() { head -c 200000 "$1"; }
pack_case() {  # SIG INPUT OUTPUT PATTERN ARGS...
  sig=$1 in=$2 out=$3 pat=$4; shift 4
  mkfifo feed
  start "$sig" "$BIN/ar-pack" -i feed -o "$out" --quiet "$@"
  exec 3> feed
  half "$in" >&3
  wait_for "$pat" 60 || fail "ar-pack $*: never opened its output: $(cat err)"
  stop_and_check "$sig" "$out" "ar-pack $*"
  exec 3>&-
}
for sig in INT TERM KILL; do
  pack_case $sig ../rtn.ars packed 'packed.tmp*' --format auto_round
  pack_case $sig ../rtn_gguf.ars m.gguf 'm.gguf.tmp*' --format gguf:q8_0
done
# Several formats: the parent folder is created up front; the format folders are what must not appear.
for sig in INT KILL; do
  mkfifo feed
  start $sig "$BIN/ar-pack" -i feed -o multi --quiet --format auto_round,auto_gptq
  exec 3> feed
  half ../rtn.ars >&3
  wait_for 'multi/auto_gptq.tmp*' 60 || fail "ar-pack multi: never opened its outputs: $(cat err)"
  kill -s $sig "$pid"; wait "$pid" || true
  exec 3>&-
  for f in multi/*; do
    [ -e "$f" ] || continue
    case "$f" in *.tmp*) [ $sig = KILL ] || fail "ar-pack multi: SIG$sig left $f" ;; *) fail "ar-pack multi: SIG$sig left $f" ;; esac
  done
  rm -rf ./* 2>/dev/null || true
done

# 3. ar-calib: its output is written in milliseconds at the end, so sweep
# `timeout -s SIG` delays over the run; a final file must always be complete.
caught=0
for sig in INT TERM KILL; do
  for d in 0.05 0.2 0.5 1 2; do
    rc=0
    timeout -s $sig $d "$BIN/ar-calib" --model "$M" --dataset "$D" --nsamples 64 --seqlen 256 -o c.ars --quiet 2> err || rc=$?
    if [ -e c.ars ]; then
      "$BIN/ar-dump" c.ars > /dev/null 2>&1 || fail "ar-calib: SIG$sig after ${d}s left an incomplete c.ars"
    fi
    for f in $(ls -A | grep -v -e '^err$' -e '^c.ars$' || true); do
      case "$f" in
        c.ars.tmp*) [ $sig = KILL ] || fail "ar-calib: SIG$sig after ${d}s left $f"; caught=$((caught + 1)) ;;
        *) fail "ar-calib: SIG$sig after ${d}s left $f" ;;
      esac
    done
    rm -f c.ars c.ars.tmp* err
    [ $rc -ne 0 ] || break     # finished before the delay: longer delays tell nothing more
  done
done
echo "ar-calib sweep: $caught SIGKILL runs caught mid-write"
echo "interrupt: all checks passed"
