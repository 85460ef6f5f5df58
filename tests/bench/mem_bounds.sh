#!/bin/sh
# Memory bounds at 8B and 70B shapes (issue 19; docs/memory.md): generates
# random Llama-shaped models with tests/bench/make_synthetic_llama.py and runs
# ar-tune under memory caps, printing for each run the cap, wall seconds,
# the cgroup's peak usage and limit hits, /usr/bin/time's peak RSS, the peak
# of the tool's anonymous memory (RssAnon sampled each second) and, for RTN,
# whether the capped output is byte-identical to the uncapped one. Not part of make test (minutes to hours, GBs of disk).
#
#   AR_BIN=$PWD/bin AR_SHARED=/work/shared sh tests/bench/mem_bounds.sh [CASE...]
#
# CASE: rtn8b (RTN of the 8B shape, uncapped and under RTN_CAP, outputs
# compared), sr8b (SignRound of the 8B shape under SR8_CAP), sr70b (one
# 70B-shaped block under SR70_CAP); default all three.
# Environment: WORK (folder for models and outputs, default /tmp/ar-mem;
# the models are kept for reruns, delete it when done), PY (a Python with
# numpy, default build/venv/bin/python), L8 (8B layers, 2), SHARD_GB (safetensors shard
# size, 0.5: the 2-layer 8B model in 2 shards), NS/SEQ (samples x
# tokens, 8 x 2048), ITERS (2), BS/GAS (batch size and gradient accumulation,
# 1 / 8), THREADS (2), MEM_BUDGET (ar-tune --mem_budget MiB, 1024),
# RTN_CAP/SR8_CAP/SR70_CAP (MiB: 3072 / 8192 / 20480), BENCH_CHAIN (ar-tune
# --bench_chain_samples: the chain forwards over the first K samples only, 0:
# all; the SignRound batches still draw from all NS), EXTRA (more ar-tune
# flags). ar-tune picks the micro-batch (--micro_batch) from MEM_BUDGET: one
# sample of 2048 tokens needs about 2.2 GB of training buffers at the 8B shape.
#
# 128 x 2048 at the 8B shape, batch 8 in micro-batches of 1, one iteration,
# the chain forwards over one sample (docs/memory.md §4):
#   WORK=/tmp/ar-mem AR_BIN=$PWD/bin AR_SHARED=/work/shared L8=1 NS=128 SEQ=2048 ITERS=1 BS=8 GAS=1 \
#     MEM_BUDGET=1024 BENCH_CHAIN=1 EXTRA=--verbose sh tests/bench/mem_bounds.sh sr8b
#
# Caps: a child of this process's cgroup-v1 memory controller when writable
# (memory.limit_in_bytes; memory.max_usage_in_bytes is the peak of anonymous
# memory plus page cache charged to it, memory.failcnt the times it hit the
# limit and reclaimed), else a cgroup-v2 child (memory.max, memory.peak);
# else the run is uncapped and only /usr/bin/time's peak RSS is printed (a
# line says so). /usr/bin/time's peak RSS counts resident file-backed pages
# (the mmap'd model, spill files) too, so it can exceed a cap that the cgroup
# held.
set -eu
BIN=${AR_BIN:?AR_BIN not set}
SHARED=${AR_SHARED:?AR_SHARED not set}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${WORK:-/tmp/ar-mem}
PY=${PY:-$ROOT/build/venv/bin/python}
L8=${L8:-2} NS=${NS:-8} SEQ=${SEQ:-2048} ITERS=${ITERS:-2} BS=${BS:-1} GAS=${GAS:-8} THREADS=${THREADS:-2}
MEM_BUDGET=${MEM_BUDGET:-1024} RTN_CAP=${RTN_CAP:-3072} SR8_CAP=${SR8_CAP:-8192} SR70_CAP=${SR70_CAP:-20480}
EXTRA=${EXTRA:-} SHARD_GB=${SHARD_GB:-0.5} BENCH_CHAIN=${BENCH_CHAIN:-0}
[ "$BENCH_CHAIN" = 0 ] || EXTRA="$EXTRA --bench_chain_samples $BENCH_CHAIN"
CASES=${*:-rtn8b sr8b sr70b}
mkdir -p "$WORK"

# The memory cgroup to make children in: v1 controller path, or v2.
CGV1=/sys/fs/cgroup/memory$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup)
CGV2=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)
cg_mode=none
if [ -w "$CGV1" ] && mkdir "$CGV1/ar-mem-probe" 2>/dev/null; then rmdir "$CGV1/ar-mem-probe"; cg_mode=v1
elif [ -f "$CGV2/cgroup.controllers" ] && mkdir "$CGV2/ar-mem-probe" 2>/dev/null; then rmdir "$CGV2/ar-mem-probe"; cg_mode=v2
else echo "== no writable memory cgroup: runs are uncapped, peak RSS by /usr/bin/time only"; fi

# capped NAME CAP_MIB CMD...: run CMD under a CAP_MIB cap (0: none); prints one line.
capped() {
    name=$1 cap=$2; shift 2
    log=$WORK/$name.time
    cg=
    if [ "$cap" -gt 0 ] && [ $cg_mode != none ]; then
        if [ $cg_mode = v1 ]; then
            cg=$CGV1/ar-mem-$name; mkdir -p "$cg"
            echo $((cap << 20)) > "$cg/memory.limit_in_bytes"; echo 0 > "$cg/memory.max_usage_in_bytes"
        else
            cg=$CGV2/ar-mem-$name; mkdir -p "$cg"; echo $((cap << 20)) > "$cg/memory.max"
        fi
    fi
    t0=$(date +%s.%N)
    rc=0
    sh -c 'cg=$1; shift; [ -z "$cg" ] || echo $$ > "$cg/cgroup.procs"; exec /usr/bin/time -v "$@"' sh "$cg" "$@" \
        2> "$log" &
    tpid=$!
    # the peak of the tool's anonymous memory (RssAnon: heap, no file pages), sampled each second
    anon=0 kid=
    while kill -0 $tpid 2>/dev/null; do
        [ -n "$kid" ] || kid=$(pgrep -P $tpid | head -1)
        a=$(sed -n 's/^RssAnon:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/${kid:-0}/status" 2>/dev/null || true)
        [ -n "$a" ] && [ "$a" -gt $anon ] && anon=$a
        sleep 1
    done
    wait $tpid || rc=$?
    t1=$(date +%s.%N)
    rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$log")
    peak=- hits=-
    if [ -n "$cg" ] && [ $cg_mode = v1 ]; then
        peak=$(($(cat "$cg/memory.max_usage_in_bytes") >> 20)); hits=$(cat "$cg/memory.failcnt")
    elif [ -n "$cg" ]; then
        peak=$(($(cat "$cg/memory.peak" 2>/dev/null || echo 0) >> 20)); hits=$(sed -n 's/^max //p' "$cg/memory.events")
    fi
    [ -z "$cg" ] || rmdir "$cg"
    printf '%-12s cap %6s MiB  rc %d  wall %7.1f s  cgroup peak %6s MiB  limit hits %7s  peak RSS %6d MiB  anon %6d MiB\n' \
        "$name" "$cap" "$rc" "$(echo "$t1 - $t0" | bc)" "$peak" "$hits" $((rss >> 10)) $((anon >> 10))
    grep -E 'ar-tune: (block|done|calib)' "$log" | tail -4 | sed 's/^/    /' || true
    [ $rc = 0 ] || { tail -3 "$log" | sed 's/^/    /'; }
}

model() {   # model SHAPE LAYERS DIR
    [ -f "$3/config.json" ] && return 0
    echo "== generating $3 ($1, $2 layers)"
    OMP_NUM_THREADS=1 "$PY" "$ROOT/tests/bench/make_synthetic_llama.py" --shape "$1" --layers "$2" --shard_gb "$SHARD_GB" -o "$3"
}

calib() {   # calib MODEL OUT: NS x SEQ windows of wikitext-2's test text
    [ -f "$2" ] && return 0
    "$BIN/ar-calib" --model "$1" --dataset "$SHARED/data/wikitext-2-raw/wiki.test.raw" --nsamples "$NS" \
        --seqlen "$SEQ" -o "$2" --quiet
}

echo "== $(date -u +%FT%TZ) $(uname -m), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), cgroup $cg_mode"
echo "   ar-tune: --nsamples $NS --seqlen $SEQ --iters $ITERS --batch_size $BS --gradient_accumulate_steps $GAS --threads $THREADS --mem_budget $MEM_BUDGET $EXTRA"
for c in $CASES; do
    case $c in
    rtn8b)
        model 8b "$L8" "$WORK/llama8b"
        capped rtn8b-free 0 "$BIN/ar-tune" --model "$WORK/llama8b" --iters 0 --disable_opt_rtn --threads "$THREADS" \
            -o "$WORK/rtn-free.ars"
        capped rtn8b-cap "$RTN_CAP" "$BIN/ar-tune" --model "$WORK/llama8b" --iters 0 --disable_opt_rtn \
            --threads "$THREADS" -o "$WORK/rtn-cap.ars"
        if cmp -s "$WORK/rtn-free.ars" "$WORK/rtn-cap.ars"; then echo "    RTN outputs identical: $(sha256sum < "$WORK/rtn-cap.ars" | cut -c1-16)"
        else echo "    RTN outputs DIFFER"; fi ;;
    sr8b|sr70b)
        if [ $c = sr8b ]; then shape=8b layers=$L8 cap=$SR8_CAP; else shape=70b layers=1 cap=$SR70_CAP; fi
        model $shape "$layers" "$WORK/llama$shape"
        calib "$WORK/llama$shape" "$WORK/calib$shape-$NS-$SEQ.ars"
        export TMPDIR="$WORK"   # ar-tune's spill files
        # shellcheck disable=SC2086
        capped $c "$cap" "$BIN/ar-tune" -i "$WORK/calib$shape-$NS-$SEQ.ars" --model "$WORK/llama$shape" \
            --iters "$ITERS" --batch_size "$BS" --gradient_accumulate_steps "$GAS" --threads "$THREADS" \
            --mem_budget "$MEM_BUDGET" --progress $EXTRA -o "$WORK/$c.ars" ;;
    *) echo "unknown case $c" >&2; exit 2 ;;
    esac
done
