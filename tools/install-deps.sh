#!/bin/sh
# Install the Debian packages ar builds and tests against. Idempotent: does nothing when all are present.
# clang, libclang-rt-14-dev (libFuzzer) and libomp-14-dev serve `make fuzz` only.
# libdnnl-dev (oneDNN) gives the bf16 GEMMs of AMP tuning on CPUs with AVX512-BF16 or AMX
# (libar/nn/gemm.h); the build works without it (f32 only).
# libopenmpi-dev + openmpi-bin give `mpirun -np N ar-tune` (docs/mpi.md); the build works without them (one process).
set -e
PKGS="build-essential pkg-config libzstd-dev zstd libcjson-dev libopenblas-dev libcriterion-dev libpcre2-dev libutf8proc-dev groff-base man-db python3-venv clang libclang-rt-14-dev libomp-14-dev libdnnl-dev libopenmpi-dev openmpi-bin"
missing=""
for p in $PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -z "$missing" ]; then echo "deps: all present"; exit 0; fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
echo "deps: installing$missing"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
