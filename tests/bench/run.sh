#!/bin/sh
# Benchmarks: print figures, never fail on time.
cd "$(dirname "$0")"
for b in *.bench.sh; do [ -e "$b" ] && sh "$b"; done
# The side-by-side run against AutoRound (docs/peer-benchmark.md) needs
# auto-round in build/venv and takes long on small machines: opt-in.
[ "${AR_BENCH_PEER:-0}" = 1 ] && sh peer.sh
exit 0
