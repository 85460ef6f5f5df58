#!/usr/bin/env python3
"""Read an ar tensor stream (man ar-stream(5)): prints each record, returns tensors.
Usage: read_stream.py FILE.ars   (needs: pip install zstandard numpy)"""
import json, struct, sys
import numpy as np, zstandard

DTYPES = ['<f4', '<f2', '<u2', '<i4', 'i1', 'u1', '<i8', '<i2', '<f8']  # code 2 (bf16) read as raw u16

def read_stream(path):
    z = zstandard.ZstdDecompressor().stream_reader(open(path, 'rb'))  # checks the zstd checksum
    def take(n):
        b = b''
        while len(b) < n and (more := z.read(n - len(b))): b += more
        if len(b) < n: raise ValueError(f'{path}: truncated stream')
        return b
    def u32(): return struct.unpack('<I', take(4))[0]
    if take(8) != b'ARSTREAM' or u32() != 1: raise ValueError(f'{path}: not an ar stream v1')
    tensors = {}
    while (kind := take(1)) != b'E':
        if kind == b'M':
            print('meta', json.loads(take(u32())))
        elif kind == b'T':
            name = take(u32()).decode()
            dtype, ndim = take(1)[0], take(1)[0]
            shape = struct.unpack(f'<{ndim}q', take(8 * ndim))
            attrs = json.loads(take(u32()))
            nbytes = struct.unpack('<Q', take(8))[0]
            a = np.frombuffer(take(nbytes), dtype=DTYPES[dtype]).reshape(shape)
            if dtype == 2: a = (a.astype(np.uint32) << 16).view(np.float32)  # bf16 -> f32
            print('tensor', name, a.dtype, list(shape), attrs)
            tensors[name] = a
        else:
            raise ValueError(f'{path}: unknown record kind {kind!r}')
    if z.read(1): raise ValueError(f'{path}: data after END')
    return tensors

if __name__ == '__main__':
    read_stream(sys.argv[1])
