#!/bin/sh
# KL divergence of GGUF quantizations, measured by llama.cpp itself: stock
# `llama-quantize --imatrix` against ours (ar-calib -> ar-tune --scheme
# gguf:TYPE -> ar-pack --format gguf:TYPE), both judged by
# `llama-perplexity --kl-divergence` against the model's F32 GGUF, the
# protocol of shared/models/tiny-llama/gguf-reference/README.md:
#   - F32 GGUF: convert_hf_to_gguf.py --outtype f32;
#   - imatrix: llama-imatrix on the calibration text, context 512, all chunks,
#     stock settings; stock files: llama-quantize --imatrix F32 OUT TYPE;
#   - ours: ar-calib --nsamples 128 --seqlen 512 (seed 42) on the same text,
#     ar-tune --scheme gguf:TYPE --iters N, ar-pack --format gguf:TYPE;
#   - KLD: llama-perplexity -c 512 -b 512 on the heldout text, base logits
#     from the F32 file, then --kl-divergence for each quant (all chunks).
# The tools come from tests/bench/llama_tools.sh (built on first use).
# KLD is deterministic: one run per file, no medians.
#
# usage: sh tests/bench/gguf_kld.sh [options] MODEL_DIR TYPE...
#   TYPE         llama-quantize names: Q4_K_M Q3_K_S Q2_K ... (ours: gguf:<lower case>)
#   --iters N    ar-tune --iters for our files (default 0: llama.cpp's own
#                imatrix-weighted scale search, which should match stock)
#   --calib FILE calibration text for llama-imatrix and ar-calib (default: the
#                first 1,000,000 bytes of shared/data/corpus, decompressed)
#   --calib-ars FILE  use this ar-calib stream instead of making one
#   --heldout FILE    evaluation text (default MODEL_DIR/heldout.txt, else
#                shared/models/tiny-llama/heldout.txt)
#   --given TYPE=FILE also measure an existing GGUF file for TYPE (e.g. our
#                SignRound files made on a GPU machine): a third column set
#                beside stock and ours; repeatable (one file per type)
#   --no-stock / --no-ours   skip one side
#   --work DIR   work folder (default build/gguf-kld/<model folder name>); every
#                product is kept there and reused by the next run (remove it,
#                or the one file, to redo a step); our tuned and packed files
#                are remade when bin/ar-tune or bin/ar-pack is newer than them
#   --reuse      keep our files even then (e.g. to add --given columns to a
#                table measured earlier without redoing ours)
#   --threads N  threads for llama.cpp and ar-tune (default 1: on a loaded,
#                shared machine llama.cpp's threads wait on each other at every
#                barrier; one thread ran a 512-token chunk in 0.62 s where two
#                took 2.74 s here; give more on an idle many-core machine)
# Environment: AR_BIN (default bin), AR_SHARED (default ../shared), LLAMA_DIR.
#
# SignRound files made elsewhere (a GPU machine), measured here afterwards:
#   zstd -dc $AR_SHARED/data/corpus/gutenberg_en_prose.txt.zst | head -c 1000000 > c1m.txt
#   ar-calib --model M --dataset c1m.txt --nsamples 128 --seqlen 512 -o c.ars   (seed 42,
#     the stream this script makes as WORK/ours.calib.ars)
#   ar-tune -i c.ars --model M --scheme gguf:Q4_K_M --iters 200 -o t.ars
#   ar-pack -i t.ars --model M --format gguf:q4_k_m -o NAME-Q4_K_M-iters200.gguf
# then: sh tests/bench/gguf_kld.sh --given Q4_K_M=NAME-Q4_K_M-iters200.gguf ... M Q4_K_M ...
# (stock and --iters 0 results already in WORK are reused, not remade).
# Prints a progress line per step on stderr and one table on stdout (also
# WORK/table.tsv): per type the reference figure where
# MODEL_DIR/gguf-reference/stock-kld.tsv exists, then for the stock file, ours
# and the --given file: mean KLD, 99th percentile KLD, same-top-token % and
# bits per weight. Every step runs under nice -n 19.
set -eu
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
BIN=$(cd "${AR_BIN:-bin}" && pwd)
SHARED=$(cd "${AR_SHARED:-../shared}" && pwd)
ITERS=0 CALIB="" CALIB_ARS="" HELDOUT="" WORK="" THREADS=1 STOCK=1 OURS=1 GIVEN="" REUSE=0

die() { echo "gguf_kld.sh: $*" >&2; exit 1; }
say() { echo "gguf_kld.sh: $*" >&2; }
while [ $# -gt 0 ]; do
  case $1 in
    --iters) ITERS=$2; shift 2 ;;
    --calib) CALIB=$2; shift 2 ;;
    --calib-ars) CALIB_ARS=$2; shift 2 ;;
    --heldout) HELDOUT=$2; shift 2 ;;
    --given) case $2 in *=*) ;; *) die "--given wants TYPE=FILE, got $2" ;; esac
            [ -f "${2#*=}" ] || die "--given: ${2#*=}: no such file"
            GIVEN="$GIVEN $2"; shift 2 ;;
    --no-stock) STOCK=0; shift ;;
    --no-ours) OURS=0; shift ;;
    --reuse) REUSE=1; shift ;;
    --work) WORK=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) break ;;
  esac
done
[ $# -ge 2 ] || die "usage: gguf_kld.sh [options] MODEL_DIR TYPE..."
M=$(cd "$1" && pwd) || die "$1: no such model folder"; shift
[ -f "$M/config.json" ] || die "$M: no config.json"
TYPES=$(echo "$*" | tr a-z A-Z)
if [ -z "$HELDOUT" ]; then
  if [ -f "$M/heldout.txt" ]; then HELDOUT=$M/heldout.txt; else HELDOUT=$SHARED/models/tiny-llama/heldout.txt; fi
fi
[ -f "$HELDOUT" ] || die "$HELDOUT: no such evaluation text"
W=${WORK:-build/gguf-kld/$(basename "$M")}
mkdir -p "$W" && W=$(cd "$W" && pwd)
N="nice -n 19"

LB=$(sh tests/bench/llama_tools.sh) || die "building llama.cpp's tools failed (tests/bench/llama_tools.sh)"

# Run a step only when its output is missing; write to a temporary name first.
# usage: make_once OUT LOG CMD... (CMD's output file is OUT.tmp)
make_once() {
  out=$1 log=$2; shift 2
  [ -s "$out" ] && return 0
  say "$(basename "$out") ..."
  t0=$(date +%s)
  "$@" > "$log" 2>&1 || { tail -5 "$log" >&2; die "step for $out failed (log: $log)"; }
  mv "$out.tmp" "$out"
  say "$(basename "$out") done in $(( $(date +%s) - t0 )) s"
}

# Remove OUT when any of the files it was made from is newer (ar-tune or
# ar-pack rebuilt since: ours must measure the current code), unless --reuse.
drop_stale() { # OUT DEP...
  out=$1; shift
  [ -e "$out" ] && [ "$REUSE" = 0 ] || return 0
  for dep; do
    [ "$dep" -nt "$out" ] && { say "$(basename "$out") is older than $dep: remaking it"; rm -f "$out"; return 0; }
  done
  return 0
}
calib_text() {
  if [ -n "$CALIB" ]; then cp "$CALIB" "$W/calib.txt.tmp"
  else zstd -dc "$SHARED/data/corpus/gutenberg_en_prose.txt.zst" | head -c 1000000 > "$W/calib.txt.tmp"; fi
}
f32_gguf() { $N "$LB/convert_hf_to_gguf" "$M" --outtype f32 --outfile "$W/f32.gguf.tmp"; }
imatrix() {
  $N "$LB/llama-imatrix" -m "$W/f32.gguf" -f "$W/calib.txt" -c 512 -t "$THREADS" -o "$W/imatrix.gguf.tmp.gguf" &&
    mv "$W/imatrix.gguf.tmp.gguf" "$W/imatrix.gguf.tmp"
}
kld_base() {
  $N "$LB/llama-perplexity" -m "$W/f32.gguf" -f "$HELDOUT" -c 512 -b 512 -t "$THREADS" \
    --kl-divergence-base "$W/f32.kld.tmp"
}
stock_quant() { # TYPE
  $N "$LB/llama-quantize" --imatrix "$W/imatrix.gguf" "$W/f32.gguf" "$W/stock-$1.gguf.tmp" "$1" "$THREADS"
}
our_calib() {
  if [ -n "$CALIB_ARS" ]; then cp "$CALIB_ARS" "$W/ours.calib.ars.tmp"
  else $N "$BIN/ar-calib" --model "$M" --dataset "$W/calib.txt" --nsamples 128 --seqlen 512 -o "$W/ours.calib.ars.tmp"; fi
}
our_tune() { # TYPE
  $N "$BIN/ar-tune" -i "$W/ours.calib.ars" --model "$M" --scheme "gguf:$1" --iters "$ITERS" \
    --threads "$THREADS" -o "$W/ours-$1-iters$ITERS.ars.tmp"
}
our_pack() { # TYPE
  lower=$(echo "$1" | tr A-Z a-z)
  $N "$BIN/ar-pack" -i "$W/ours-$1-iters$ITERS.ars" --model "$M" --format "gguf:$lower" \
    -o "$W/ours-$1-iters$ITERS.gguf.tmp"
}
# llama-perplexity's statistics end with "Same top p"; once its log here
# stopped after "Median KLD" (its asynchronous logger cut short at exit, exit
# status 0), so a log without that line is not kept and the run is retried.
kld_of() { # GGUF LOG (kept when complete and newer than both files)
  [ "$2" -nt "$1" ] && [ "$2" -nt "$W/f32.kld" ] && grep -q '^Same top p:' "$2" && return 0
  for try in 1 2 3; do
    say "KLD of $(basename "$1") ..."
    $N "$LB/llama-perplexity" -m "$1" --kl-divergence-base "$W/f32.kld" --kl-divergence \
      -c 512 -b 512 -t "$THREADS" > "$2" 2>&1 || { tail -5 "$2" >&2; die "llama-perplexity failed on $1 (log: $2)"; }
    grep -q '^Same top p:' "$2" && return 0
    say "$2: statistics cut short (try $try)"
  done
  die "llama-perplexity printed no complete statistics for $1 (log: $2)"
}
# Bits per weight of a GGUF file (all tensors, as llama-quantize counts it),
# with its tensor-type mix ("q4_K:20 q6_K:5 ...") written to FILE.types, so
# that a KLD gap can be told from a different mix.
gguf_bpw() {
  PYTHONPATH="$LB/../src/gguf-py" "$ROOT/build/venv/bin/python" - "$1" <<'EOF'
import collections, sys
import gguf
r = gguf.GGUFReader(sys.argv[1])
mix = collections.Counter(t.tensor_type.name.lower().replace("_k", "_K") for t in r.tensors)
with open(sys.argv[1] + ".types", "w") as f:
    f.write(" ".join(f"{k}:{v}" for k, v in sorted(mix.items())) + "\n")
print(f"{8 * sum(int(t.n_bytes) for t in r.tensors) / sum(int(t.n_elements) for t in r.tensors):.3f}")
EOF
}
# "mean_kld p99_kld same_top_pct bpw" from a llama-perplexity log and its GGUF.
kld_fields() { # LOG GGUF
  awk -v b="$(gguf_bpw "$2" 2>/dev/null || echo -)" '/^Mean    KLD:/ {k=$3} /^99.0%   KLD:/ {p=$3} /^Same top p:/ {s=$4}
       END {printf "%s %s %s %s\n", k ? k : "-", p ? p : "-", s ? s : "-", b ? b : "-"}' "$1"
}
given_file() { # TYPE -> the --given file for TYPE, or nothing
  for g in $GIVEN; do [ "$(echo "${g%%=*}" | tr a-z A-Z)" = "$1" ] && { echo "${g#*=}"; return; }; done
  return 0
}

make_once "$W/calib.txt" "$W/calib.log" calib_text
make_once "$W/f32.gguf" "$W/f32.log" f32_gguf
make_once "$W/f32.kld" "$W/f32.kld.log" kld_base
[ "$STOCK" = 1 ] && make_once "$W/imatrix.gguf" "$W/imatrix.log" imatrix

# One row per type: reference, stock, ours (--iters N) and given file, each
# "mean_kld p99_kld same_top_pct bpw" ("-" where not measured).
side() { printf '\t%s_kld\t%s_p99\t%s_top%%\t%s_bpw' "$1" "$1" "$1" "$1"; }
{ printf 'type\treference_kld'; side stock; side "ours_iters$ITERS"; side given; printf '\tgiven_file\n'; } > "$W/table.tsv"
for T in $TYPES; do
  stock="- - - -" ours="- - - -" given="- - - -"
  if [ "$STOCK" = 1 ]; then
    make_once "$W/stock-$T.gguf" "$W/stock-$T.log" stock_quant "$T"
    kld_of "$W/stock-$T.gguf" "$W/stock-$T.kld.log"; stock=$(kld_fields "$W/stock-$T.kld.log" "$W/stock-$T.gguf")
  fi
  if [ "$OURS" = 1 ]; then
    make_once "$W/ours.calib.ars" "$W/ours.calib.log" our_calib
    drop_stale "$W/ours-$T-iters$ITERS.ars" "$BIN/ar-tune" "$W/ours.calib.ars"
    drop_stale "$W/ours-$T-iters$ITERS.gguf" "$BIN/ar-pack" "$W/ours-$T-iters$ITERS.ars"
    make_once "$W/ours-$T-iters$ITERS.ars" "$W/ours-$T-iters$ITERS.tune.log" our_tune "$T"
    make_once "$W/ours-$T-iters$ITERS.gguf" "$W/ours-$T-iters$ITERS.pack.log" our_pack "$T"
    kld_of "$W/ours-$T-iters$ITERS.gguf" "$W/ours-$T-iters$ITERS.gguf.kld.log"
    ours=$(kld_fields "$W/ours-$T-iters$ITERS.gguf.kld.log" "$W/ours-$T-iters$ITERS.gguf")
  fi
  g=$(given_file "$T")
  if [ -n "$g" ]; then
    log=$W/given-$T-$(basename "$g" .gguf).kld.log
    kld_of "$g" "$log"; given=$(kld_fields "$log" "$g")
  fi
  ref=-
  [ -f "$M/gguf-reference/stock-kld.tsv" ] &&
    ref=$(awk -v t="$T" '$1 == t {print $2}' "$M/gguf-reference/stock-kld.tsv")
  # shellcheck disable=SC2086
  printf '%s\t%s' "$T" "${ref:--}" >> "$W/table.tsv"
  printf '\t%s' $stock $ours $given "${g:--}" >> "$W/table.tsv"
  printf '\n' >> "$W/table.tsv"
done
say "model $M, heldout $HELDOUT, ours: --iters $ITERS, work $W"
column -t -s "$(printf '\t')" "$W/table.tsv" 2>/dev/null || cat "$W/table.tsv"
