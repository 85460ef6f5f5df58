#!/bin/sh
# ar-scheme --score measured on stories260K (8 samples of 32 tokens): each
# measured kind runs, meets the budget and says so in its META record
# (score, score_rounds); --score_rounds 2 runs; bad --score values and
# --score_rounds without a measured score are usage errors (exit 2) naming the problem.
. "$(dirname "$0")/lib.sh"

stories_calib 8 32 --quiet -o "$T/calib.ars"

for kind in measured measured_opt_rtn; do
  "$BIN/ar-scheme" -i "$T/calib.ars" --avg_bits 3 --score $kind --progress --threads 1 -o "$T/$kind.ars" \
      --emit_config "$T/$kind.json" 2> "$T/err" || { cat "$T/err"; fail "$kind failed"; }
  avg=$(sed -n 's/.*avg bits \([0-9.]*\) (target 3\.0000.*/\1/p' "$T/err")
  # within the budget; below it only where equal losses leave bits unused
  awk -v a="${avg:-0}" 'BEGIN { exit !(a <= 3 && a > 2.8) }' || { cat "$T/err"; fail "$kind: average $avg"; }
  grep -q 'scores: measured loss change' "$T/err" || fail "$kind: the report does not name the score"
  "$BIN/ar-dump" "$T/$kind.ars" | tail -n 1 | grep -q "\"score\":\"$kind\",\"score_rounds\":1" ||
      fail "$kind: META lacks the score"
  grep -q '"W2A16G64"' "$T/$kind.json" && grep -q '"W4A16"' "$T/$kind.json" || fail "$kind: a 3-bit mix needs both"
done
"$BIN/ar-scheme" -i "$T/calib.ars" --avg_bits 3 --score measured --score_rounds 2 --quiet -o "$T/r2.ars"
"$BIN/ar-dump" "$T/r2.ars" | tail -n 1 | grep -q '"score_rounds":2' || fail "rounds not recorded"
"$BIN/ar-dump" "$T/r2.ars" | tail -n 1 | grep -q '"score":"delta"' && fail "measured run recorded as delta"

usage() {   # expect exit 2 and a one-line message containing $1
  want=$1; shift
  set +e; "$BIN/ar-scheme" -i "$T/calib.ars" --avg_bits 3 -o "$T/x.ars" "$@" 2> "$T/err"; rc=$?; set -e
  [ $rc -eq 2 ] || fail "$*: exit $rc, want 2"
  head -n 1 "$T/err" | grep -q -- "^ar-scheme: .*$want" || { cat "$T/err"; fail "$*: message"; }
}
usage "not delta, measured or measured_opt_rtn" --score taylor
usage "--score_rounds needs --score measured" --score_rounds 2
usage "--score_rounds" --score measured --score_rounds 0
echo ok
