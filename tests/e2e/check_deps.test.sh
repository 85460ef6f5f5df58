#!/bin/sh
# tools/check-deps.sh (run by `make test` on the real tree) must fail on each
# kind of violation it exists for: run it on a copy of the sources with one
# violation planted at a time (no objects: the link check is skipped here;
# `make check-deps` runs it on the build).
. "$(dirname "$0")/lib.sh"
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

fresh() { # a pristine copy of the checked folders in $T/src
    rm -rf "$T/src"
    mkdir -p "$T/src"
    (cd "$ROOT" && cp -r tools cmd formats libar kernels "$T/src/")
}
expect_fail() { # expect_fail WHAT PATTERN: check-deps exits 1 naming PATTERN
    if sh "$T/src/tools/check-deps.sh" "$T/none" > "$T/out" 2>&1; then fail "$1: check-deps passed"; fi
    grep -q "$2" "$T/out" || { cat "$T/out" >&2; fail "$1: no line matching '$2'"; }
}

fresh
sh "$T/src/tools/check-deps.sh" "$T/none" > "$T/out" 2>&1 || { cat "$T/out" >&2; fail "clean copy refused"; }

fresh; echo '#include "export.h"' >> "$T/src/libar/base/dtype.h"
expect_fail "libar including formats" "includes formats/export.h, against"
fresh; echo '#include "block.h"' >> "$T/src/libar/nn/ops.h"
expect_fail "include cycle" "include cycle"
fresh; echo '#include "tune.h"' >> "$T/src/libar/quant/quant_spec.h"
expect_fail "folder cycle" "libar folder cycle"
fresh; printf 'static int knob(void) { return getenv("AR_X") != 0; }\n' >> "$T/src/libar/nn/ops.c"
expect_fail "environment switch" "reads the environment"
fresh; echo '#include <omp.h>' >> "$T/src/cmd/ar-dump.c"
expect_fail "omp.h in cmd" "cmd/ includes cblas.h or omp.h"
echo "ok   check-deps refuses each planted violation"
