#!/bin/sh
# Time one decoder block (forward, training forward, backward) against a plain
# sgemm in the same run. Builds libar.a and the bench from the repo root.
cd "$(dirname "$0")/../.." || exit 0
make -s build/obj/libar.a || exit 0
PKGS="libzstd libcjson libpcre2-8 libutf8proc openblas"
mkdir -p build/obj/bench
LIB_INC=$(for d in libar/*/; do printf -- "-I%s " "${d%/}"; done)
cc -O2 -std=c11 -D_GNU_SOURCE -fopenmp $LIB_INC $(pkg-config --cflags $PKGS) \
   tests/bench/block_bench.c build/obj/libar.a $(pkg-config --libs $PKGS) -lm \
   -o build/obj/bench/block_bench || exit 0
build/obj/bench/block_bench "$@"
