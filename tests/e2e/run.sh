#!/bin/sh
# Runs every tests/e2e/*.test.sh; each gets AR_BIN and AR_SHARED and exits 0 on success.
# Prints a closing "N passed, N failed" line.
cd "$(dirname "$0")"
pass=0; fail=0; failed=""
for t in *.test.sh; do
  [ -e "$t" ] || continue
  if sh "$t" > "/tmp/ar-e2e-$t.log" 2>&1; then pass=$((pass+1)); echo "ok   $t"
  else fail=$((fail+1)); failed="$failed $t"; echo "FAIL $t"; tail -20 "/tmp/ar-e2e-$t.log" | sed 's/^/    /'; fi
done
echo "e2e: $pass passed, $fail failed"
[ "$fail" = 0 ]
