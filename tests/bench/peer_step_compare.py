#!/usr/bin/env python3
"""Compare block 0 of an ar-tune stream with AutoRound's packed auto_round folder:
per linear, the share of groups whose |scale| / RTN-scale ratio agrees (to 3
decimals), the share of groups each side moved below RTN, and the share of equal
integer codes. Used for the clamp-boundary finding in docs/peer-benchmark.md §1.

  python tests/bench/peer_step_compare.py AR_STREAM.ars AUTOROUND_DIR MODEL_DIR BITS

AUTOROUND_DIR: what tests/bench/peer_autoround.py wrote (sym int schemes only:
codes are q + 2^(bits-1), GPTQ-style int32 packing along the input dimension).
"""
import glob, struct, subprocess, sys
import numpy as np
from safetensors.torch import load_file


def read_ars(path):
    """{name: (dtype code, shape, payload bytes)} of an ar stream (ar-stream(5))."""
    raw = open(path, 'rb').read()
    if raw[:4] == b'\x28\xb5\x2f\xfd':
        raw = subprocess.run(['zstd', '-dcq', path], check=True, stdout=subprocess.PIPE).stdout
    pos = 0

    def take(n):
        nonlocal pos
        b = raw[pos:pos + n]
        pos += n
        return b
    if take(8) != b'ARSTREAM':
        sys.exit(f'{path}: not an ar stream')
    take(4)
    out = {}
    while True:
        k = take(1)
        if k in (b'E', b''):
            return out
        if k == b'M':
            take(struct.unpack('<I', take(4))[0])
            continue
        name = take(struct.unpack('<I', take(4))[0]).decode()
        dtype, ndim = take(1)[0], take(1)[0]
        shape = struct.unpack(f'<{ndim}q', take(8 * ndim))
        take(struct.unpack('<I', take(4))[0])
        out[name] = (dtype, shape, take(struct.unpack('<Q', take(8))[0]))


def main():
    ars_path, peer_dir, model, bits = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    ars = read_ars(ars_path)
    st = {}
    for f in glob.glob(peer_dir + '/**/*.safetensors', recursive=True):
        st.update(load_file(f))
    orig = {}
    for f in glob.glob(model + '/*.safetensors'):
        orig.update(load_file(f))
    m, per = 1 << (bits - 1), 32 // bits
    for lin in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]:
        pre = f"model.layers.0.{lin}"
        w = orig[pre + ".weight"].float().numpy()
        n, k = w.shape
        codes = np.frombuffer(ars[pre + ".qweight"][2], dtype=np.uint8).reshape(n, k).astype(np.int32)
        sc = np.frombuffer(ars[pre + ".scale"][2], dtype=np.float32).reshape(n, -1)
        qw = st[pre + ".qweight"].numpy().astype(np.int64) & 0xffffffff
        pc = np.zeros((k, n), dtype=np.int32)
        for i in range(per):
            pc[i::per, :] = (qw >> (bits * i)) & ((1 << bits) - 1)
        pc = pc.T
        psc = st[pre + ".scales"].float().numpy().T
        gs = k // sc.shape[1]
        wg = w.reshape(n, -1, gs)
        hi, lo = np.maximum(wg.max(-1), 0), np.minimum(wg.min(-1), 0)
        rtn = np.where(hi > -lo, hi, -lo) / m
        ra, rp = np.round(np.abs(sc) / rtn, 3), np.round(np.abs(psc) / rtn, 3)
        print(f"{lin:17s} scale ratio equal {np.mean(ra == rp):.4f}  below RTN: ar {np.mean(ra < 0.999):.3f}"
              f" AutoRound {np.mean(rp < 0.999):.3f}  codes equal {np.mean(codes == pc):.4f}")


if __name__ == '__main__':
    main()
