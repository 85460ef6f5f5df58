#!/usr/bin/env python3
"""AutoRound's side of tests/bench/peer.sh: quantize a model with intel/auto-round
on the CPU, on the token windows of an ar-calib stream, and save the result.

Usage (peer.sh sets the thread variables before Python starts):
  OMP_NUM_THREADS=T MKL_NUM_THREADS=T build/venv/bin/python tests/bench/peer_autoround.py \
      --model DIR --calib calib.ars --scheme W4A16 --iters 20 --threads T \
      --format auto_round -o OUT_DIR

The windows are read from the stream's `input_ids` tensor (ar-stream(5);
decompressed by the zstd command, so no Python zstd package is needed) and
given to AutoRound as its `dataset`: a list of [batch, seqlen] LongTensors,
which AutoRound's calibration loop takes as ready token ids. nsamples and
seqlen passed to AutoRound are the stream's own, so both tools tune on
exactly the same tokens.

Prints one line `peer_autoround {json}` on stdout with the seconds spent in
AutoRound's quantize_and_save (model loading excluded; wall and user+sys CPU
of all threads), the model load time,
the peak RSS of this process (getrusage) and AutoRound's amp setting.
"""
import argparse, json, os, resource, struct, subprocess, sys, time


def read_input_ids(path):
    """The `input_ids` tensor of an ar-calib stream as a list of rows (ar-stream(5))."""
    raw = subprocess.run(['zstd', '-dcq', path], check=True, stdout=subprocess.PIPE).stdout
    pos = 0

    def take(n):
        nonlocal pos
        if pos + n > len(raw):
            raise ValueError(f'{path}: truncated stream')
        b = raw[pos:pos + n]
        pos += n
        return b

    def u32():
        return struct.unpack('<I', take(4))[0]

    if take(8) != b'ARSTREAM' or u32() != 1:
        raise ValueError(f'{path}: not an ar stream v1')
    meta = {}
    while True:
        kind = take(1)
        if kind == b'E':
            break
        if kind == b'M':
            meta.update(json.loads(take(u32())))
        elif kind == b'T':
            name = take(u32()).decode()
            dtype, ndim = take(1)[0], take(1)[0]
            shape = struct.unpack(f'<{ndim}q', take(8 * ndim))
            take(u32())  # attributes
            nbytes = struct.unpack('<Q', take(8))[0]
            payload = take(nbytes)
            if name == 'input_ids':
                if dtype != 3 or ndim != 2:
                    raise ValueError(f'{path}: input_ids is not a 2-D i32 tensor')
                n, L = shape
                flat = struct.unpack(f'<{n * L}i', payload)
                return meta, [list(flat[i * L:(i + 1) * L]) for i in range(n)]
        else:
            raise ValueError(f'{path}: unknown record kind {kind!r}')
    raise ValueError(f'{path}: no input_ids tensor')


def cpu_seconds():
    """User + system CPU seconds of this process so far, all its threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', required=True)
    p.add_argument('--calib', required=True, help='ar-calib stream (.ars)')
    p.add_argument('--scheme', default='W4A16')
    p.add_argument('--iters', type=int, default=200)
    p.add_argument('--batch_size', type=int, default=8)
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--threads', type=int, default=os.cpu_count())
    p.add_argument('--format', default='auto_round')
    p.add_argument('--extra', default='{}', help='JSON of further AutoRound keyword arguments')
    p.add_argument('-o', '--output', required=True)
    a = p.parse_args()

    import torch
    torch.set_num_threads(a.threads)
    from auto_round import AutoRound
    import auto_round

    meta, rows = read_input_ids(a.calib)
    nsamples, seqlen = len(rows), len(rows[0])
    ids = torch.tensor(rows, dtype=torch.long)
    # AutoRound iterates the dataset as given: one entry per forward, here
    # batches of batch_size windows, the way its own dataloader would batch them.
    dataset = [ids[i:i + a.batch_size] for i in range(0, nsamples, a.batch_size)]

    kwargs = dict(scheme=a.scheme, iters=a.iters, nsamples=nsamples, seqlen=seqlen,
                  batch_size=a.batch_size, seed=a.seed, dataset=dataset, device_map='cpu')
    kwargs.update(json.loads(a.extra))
    t0 = time.perf_counter()
    ar = AutoRound(a.model, **kwargs)
    t1 = time.perf_counter()
    c1 = cpu_seconds()
    ar.quantize_and_save(a.output, format=a.format)
    t2 = time.perf_counter()
    c2 = cpu_seconds()

    mc = getattr(ar, 'model_context', None)
    amp = getattr(mc, 'amp', getattr(ar, 'amp', None))
    amp_dtype = getattr(mc, 'amp_dtype', getattr(ar, 'amp_dtype', None))
    print('peer_autoround ' + json.dumps({
        'auto_round': getattr(auto_round, '__version__', '?'), 'torch': torch.__version__,
        'threads': torch.get_num_threads(), 'scheme': a.scheme, 'iters': a.iters,
        'nsamples': nsamples, 'seqlen': seqlen, 'batch_size': a.batch_size, 'seed': a.seed,
        'format': a.format, 'amp': amp, 'amp_dtype': str(amp_dtype),
        'load_s': round(t1 - t0, 2), 'quantize_s': round(t2 - t1, 2),
        'quantize_cpu_s': round(c2 - c1, 2), 'process_cpu_s': round(c2, 2),
        'peak_rss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}), flush=True)


if __name__ == '__main__':
    sys.exit(main())
