#!/bin/sh
# Benchmarks: print figures, never fail on time.
cd "$(dirname "$0")"
for b in *.bench.sh; do [ -e "$b" ] && sh "$b"; done
exit 0
