#!/bin/sh
# Byte-identical outputs: runs the pipeline on stories260K and tiny-llama (RTN,
# opt-RTN, SignRound, GGUF:Q4_K_M, MXFP4 and an AutoScheme mix; calibration,
# scheme and tuning streams, and every file of the packed folders and GGUF
# files) and compares the SHA-256 of each output with the digests recorded in
# tests/fixtures/digests.sha256. A change meant to leave the outputs alone (a
# restructuring) must keep this test passing; a mismatch prints one line per
# file (DIFFERS, MISSING or NEW, with its case/path) and fails.
#
# Re-record, after a change that is meant to change outputs (say why in its
# commit), with the tools built from the commit that makes the new reference:
#   make -j2 NVCC= && AR_DIGESTS_RECORD=1 AR_BIN=$PWD/bin AR_SHARED=$PWD/../shared \
#     sh tests/e2e/digests.test.sh
# (refused where cases are skipped). The file was recorded at f3a9ef7 on an
# AMD EPYC with AVX2+FMA, Debian 12 (glibc 2.36, OpenBLAS 0.3.21 pthread,
# zstd 1.5.4); the ASan/UBSan build (make SANITIZE=1) gives the same digests.
#
# What is hashed: the decompressed content of each stream (.ars) and the raw
# bytes of every other file. The tools record the real path of the model and
# dataset (stream META, GGUF ar.source_model), so the inputs are copied to a
# scratch folder with a name of fixed length, /tmp/ar-digests.XXXXXX, which
# is replaced by that literal template before hashing (same length, so a
# GGUF's alignment padding does not move). Nothing else varies between runs,
# working directories or scratch folders: no times, no pids.
#
# What the digests depend on besides the code:
# - The thread count. Each linear layer's sgemm is cut into one tile per
#   OpenMP thread (sgemm_par, libar/nn/ops.c), and OpenBLAS's Haswell sgemm
#   gives an element different last bits depending on the shape of the call
#   it is part of, so --threads 1, 2 or 3 give different forwards; 18 of the
#   167 outputs differ between --threads 1 and 2 (SignRound, MXFP4 and the
#   mix on stories260K, both GGUF cases on both models, MXFP4 opt-RTN on
#   tiny-llama). Every tool here
#   runs with --threads 2 or OMP_NUM_THREADS=2 and OPENBLAS_NUM_THREADS=2,
#   whatever the machine's core count (OMP_WAIT_POLICY=passive only saves
#   CPU on a busy machine; same results).
# - The BLAS kernel: OpenBLAS is pinned to its Haswell (AVX2+FMA) kernels,
#   OPENBLAS_CORETYPE=Haswell, as an AVX-512 CPU's own kernels may round
#   differently (on the Zen CPU of the recording, OpenBLAS's own choice gives
#   the same digests). On a CPU without avx2 and fma the cases that run the
#   model are skipped, with one line; only calibration and plain RTN, which
#   use no BLAS, are checked there.
# - The GEMM precision: every tune runs --disable_amp (f32 OpenBLAS), as the
#   default bf16 GEMMs of a CPU with AVX512-BF16/AMX (libar/nn/gemm.h) round
#   differently and exist only there.
# - glibc's libm (expf, powf, sinf/cosf; glibc picks FMA variants on FMA
#   CPUs) and the OpenBLAS version: another distribution may differ, so record
#   and check on the same machine image. The tools' own code is compiled
#   without -march and -ffast-math, so the compiler does not contract or
#   reorder float operations.
. "$(dirname "$0")/lib.sh"
FIXTURE=$(cd "$(dirname "$0")/../fixtures" && pwd)/digests.sha256
RECORD=${AR_DIGESTS_RECORD:-0}

D=$(mktemp -d /tmp/ar-digests.XXXXXX)
trap 'rm -rf "$T" "$D"' EXIT
DPAT=$(printf '%s' "$D" | sed 's/[.[\*^$/|]/\\&/g') # D as a sed pattern

blas=1
if grep -qw avx2 /proc/cpuinfo 2>/dev/null && grep -qw fma /proc/cpuinfo; then
  export OPENBLAS_CORETYPE=Haswell
else
  blas=0
  echo "skip: this CPU lacks avx2+fma: only calibration and plain RTN are checked (the other cases' digests depend on the BLAS kernel)"
fi
export OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 OMP_WAIT_POLICY=passive
TH="--threads 2"

# Inputs under $D: the models' files and 2000 lines of TinyStories.
for m in stories260K tiny-llama; do
  mkdir -p "$D/$m"
  for f in "$SHARED/models/$m"/*; do [ ! -f "$f" ] || cp "$f" "$D/$m/"; done
done
head -n 2000 "$STORIES_TEXT" > "$D/text.txt"

# Outputs: $O/MODEL/CASE.ars (streams) and $O/MODEL/CASE/... (packed).
# ran lists the MODEL/CASE keys that ran, so skipped ones are not compared.
O=$T/out ran=""
calib() { # MODEL NSAMPLES SEQLEN
  mkdir -p "$O/$1"
  "$BIN/ar-calib" --quiet --model "$D/$1" --dataset "$D/text.txt" --nsamples "$2" --seqlen "$3" --seed 42 \
    -o "$O/$1/calib.ars" || fail "$1/calib: ar-calib"
  ran="$ran $1/calib"
}
tune() { # MODEL CASE ar-tune-flags...
  _m=$1 _c=$2; shift 2
  "$BIN/ar-tune" --quiet --disable_amp -o "$O/$_m/$_c.ars" "$@" || fail "$_m/$_c: ar-tune"
  ran="$ran $_m/$_c"
}
pack() { # MODEL CASE FORMATS [OUT]: several formats go to CASE/FORMAT
  [ -z "${4:-}" ] || mkdir -p "$O/$1/$2"
  "$BIN/ar-pack" --quiet -i "$O/$1/$2.ars" --format "$3" -o "$O/$1/$2${4:+/$4}" || fail "$1/$2: ar-pack $3"
}

for m in stories260K tiny-llama; do
  # tiny-llama has ~20M parameters: keep its SignRound tiny.
  case $m in
    stories260K) n=8 len=64 iters=10 mx_iters=5 ;;
    tiny-llama) n=4 len=32 iters=3 mx_iters=2 ;;
  esac
  C=$O/$m/calib.ars
  calib $m $n $len
  # Plain RTN needs neither data nor BLAS.
  tune $m rtn --model "$D/$m" --scheme W4A16 --iters 0 --disable_opt_rtn
  pack $m rtn auto_round,auto_gptq,fake
  tune $m rtn_asym --model "$D/$m" --scheme W4A16 --asym --group_size 64 --iters 0 --disable_opt_rtn
  pack $m rtn_asym auto_awq auto_awq
  [ "$blas" = 1 ] || continue

  # opt-RTN (AutoRound's iters=0). Its scale search takes a minute on all of
  # tiny-llama's layers; there the k/v projections of every block stand in.
  lc=""
  if [ $m = tiny-llama ]; then
    printf '{"q_proj": {"bits": 16}, "o_proj": {"bits": 16}, "mlp": {"bits": 16}}\n' > "$D/kv.json"
    lc="--layer_config $D/kv.json"
  fi
  tune $m opt_rtn -i "$C" --iters 0 $lc $TH
  pack $m opt_rtn auto_round auto_round

  # SignRound W4A16.
  tune $m signround -i "$C" --scheme W4A16 --iters $iters --seed 42 $TH
  pack $m signround auto_round,auto_gptq

  # GGUF Q4_K_M: llama.cpp's mix with the calibration as importance matrix,
  # and SignRound over its frozen scales.
  tune $m q4_k_m -i "$C" --scheme gguf:q4_k_m $TH
  pack $m q4_k_m gguf:q4_k_m model.gguf
  tune $m q4_k_m_sr -i "$C" --scheme gguf:q4_k_m --iters $iters --seed 42 $TH
  pack $m q4_k_m_sr gguf:q4_k_m model.gguf

  # MXFP4 (weights and activations): SignRound, and opt-RTN's scale search.
  tune $m mxfp4 -i "$C" --scheme MXFP4 --iters $mx_iters --seed 42 $TH
  pack $m mxfp4 llm_compressor,auto_round
  tune $m mxfp4_opt_rtn -i "$C" --scheme MXFP4 --iters 0 $TH
  pack $m mxfp4_opt_rtn llm_compressor llm_compressor

  # AutoScheme: W2A16G64/W4A16 at 3 bits, then SignRound.
  "$BIN/ar-scheme" --quiet -i "$C" --avg_bits 3 --options W2A16G64,W4A16 $TH \
    -o "$O/$m/scheme.ars" || fail "$m/scheme: ar-scheme"
  ran="$ran $m/scheme"
  tune $m mix -i "$O/$m/scheme.ars" --iters $iters --seed 42 $TH
  pack $m mix auto_round auto_round
done

# Digest every output, in path order.
digest() {
  case $1 in
    *.ars) zstd -dcq -- "$1" | LC_ALL=C sed "s/$DPAT/\/tmp\/ar-digests.XXXXXX/g" ;;
    *.gguf) LC_ALL=C sed "s/$DPAT/\/tmp\/ar-digests.XXXXXX/g" -- "$1" ;;
    *) cat -- "$1" ;;
  esac | sha256sum | cut -d' ' -f1
}
(cd "$O" && find . -type f | sed 's|^\./||' | LC_ALL=C sort) > "$T/files"
[ -s "$T/files" ] || fail "no outputs"
while read -r f; do printf '%s  %s\n' "$(digest "$O/$f")" "$f"; done < "$T/files" > "$T/actual"

if [ "$RECORD" = 1 ]; then
  [ "$blas" = 1 ] || fail "not recording with cases skipped"
  cp "$T/actual" "$FIXTURE"
  echo "recorded $(wc -l < "$T/actual") digests in $FIXTURE"
  exit 0
fi

[ -f "$FIXTURE" ] || fail "no $FIXTURE (AR_DIGESTS_RECORD=1 records it)"
# Compare: expected files of the cases that ran, and every file produced.
awk -v ran="$ran" '
  function key(p,  a) { split(p, a, "/"); sub(/\.ars$/, "", a[2]); return a[1] "/" a[2] }
  BEGIN { n = split(ran, r, " "); for (i = 1; i <= n; i++) run[r[i]] = 1 }
  NR == FNR { want[$2] = $1; next }
  { got[$2] = $1 }
  END {
    for (p in want) if (key(p) in run) {
      if (!(p in got)) print "MISSING " p
      else if (got[p] != want[p]) print "DIFFERS " p
    }
    for (p in got) if (!(p in want)) print "NEW     " p
  }' "$FIXTURE" "$T/actual" | LC_ALL=C sort -b -k2 > "$T/bad"
if [ -s "$T/bad" ]; then
  cat "$T/bad"
  fail "$(wc -l < "$T/bad") of the files differ from their digests in $FIXTURE"
fi
set -- $ran
echo "ok   $(wc -l < "$T/actual") outputs of $# cases match their digests"
