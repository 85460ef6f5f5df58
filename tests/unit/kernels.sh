#!/bin/sh
# kernels.sh — the unit binaries under several OpenBLAS kernels (make unit-kernels).
#
#   sh tests/unit/kernels.sh "CORETYPES" BINARY...   run every BINARY once per core
#                                                    type (OPENBLAS_CORETYPE=type)
#   sh tests/unit/kernels.sh --check TYPE PROBE      exit 1 with a message when OpenBLAS
#                                                    would load TYPE's kernels (as PROBE,
#                                                    a unit binary, shows) and this CPU
#                                                    cannot execute them
#
# A DYNAMIC_ARCH OpenBLAS (Debian's) picks its sgemm kernel by CPU, and each
# kernel sums in its own order; forcing the others makes an assertion that
# depends on the order fail on every machine, not only on the one whose
# kernel differs. A core type is skipped, with one line saying why, when:
#  - the CPU lacks its instructions (OpenBLAS would die with SIGILL: SkylakeX
#    and later need AVX-512), read from /proc/cpuinfo;
#  - OpenBLAS has no such kernel and would fall back to another (it says
#    "Core not found"), or the BLAS is not a DYNAMIC_ARCH OpenBLAS at all;
#  - it is the kernel OpenBLAS picks here anyway, which `make unit` just ran.
set -u

# CPU flags (/proc/cpuinfo names) each core type's kernels need; unknown types
# are tried as they are.
needs() {
    case $1 in
    Haswell|Zen) echo "avx2 fma" ;;
    SkylakeX) echo "avx512f avx512cd avx512bw avx512dq avx512vl" ;;
    Cooperlake) echo "avx512f avx512cd avx512bw avx512dq avx512vl avx512_bf16" ;;
    SapphireRapids) echo "avx512f avx512cd avx512bw avx512dq avx512vl avx512_bf16 avx512_fp16 amx_bf16" ;;
    Sandybridge) echo "avx" ;;
    *) echo "" ;;
    esac
}

# The flags of needs() that this CPU lacks (all of them without /proc/cpuinfo).
missing() {
    have=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
    out=
    for f in $(needs "$1"); do
        case " $have " in *" $f "*) ;; *) out="$out $f" ;; esac
    done
    echo "$out"
}

# The kernel OpenBLAS loads: OPENBLAS_VERBOSE=2 prints "Core: NAME" when the
# library initialises (before the binary's main and before any kernel runs,
# so --help is enough and safe).
core_of() {
    if [ -n "$1" ]; then
        OPENBLAS_VERBOSE=2 OPENBLAS_CORETYPE=$1 "$probe" --help 2>&1
    else
        env -u OPENBLAS_CORETYPE OPENBLAS_VERBOSE=2 "$probe" --help 2>&1
    fi | sed -n 's/^Core: //p' | head -n 1
}

if [ "${1:-}" = --check ]; then
    [ -n "${2:-}" ] || exit 0
    probe=$3
    got=$(core_of "$2")
    if [ "$got" != "$2" ]; then
        echo "OPENBLAS_CORETYPE=$2: this OpenBLAS has no such kernel, it uses ${got:-its own choice}" >&2
        exit 0
    fi
    m=$(missing "$2")
    [ -z "$m" ] && exit 0
    echo "OPENBLAS_CORETYPE=$2: this CPU lacks$m, so OpenBLAS would die with SIGILL; unset it or name a kernel it can run" >&2
    exit 1
fi

types=$1
shift
probe=$1
for t in "$@"; do case $t in */test_ops) probe=$t ;; esac; done
default=$(core_of "")
if [ -z "$default" ]; then
    echo "kernel sweep skipped: the BLAS is not a DYNAMIC_ARCH OpenBLAS (OPENBLAS_CORETYPE has no effect)"
    exit 0
fi
fail=0
for c in $types; do
    m=$(missing "$c")
    if [ -n "$m" ]; then
        echo "kernel sweep: $c skipped, this CPU lacks$m"
        continue
    fi
    got=$(core_of "$c")
    if [ "$got" != "$c" ]; then
        echo "kernel sweep: $c skipped, this OpenBLAS has no such kernel (it would use ${got:-?})"
        continue
    fi
    if [ "$c" = "$default" ]; then
        echo "kernel sweep: $c skipped, it is this machine's default kernel (make unit ran it)"
        continue
    fi
    for t in "$@"; do
        echo "== OPENBLAS_CORETYPE=$c $t"
        OPENBLAS_CORETYPE=$c "$t" --jobs 2 || fail=1
    done
done
exit $fail
