#!/usr/bin/env python3
"""Compare block 0 of an ar-tune stream with AutoRound's packed auto_round folder:
per linear, the share of groups whose |scale| / RTN-scale ratio agrees (to 3
decimals), the share of groups each side moved below RTN, and the share of equal
integer codes. Used for the clamp-boundary finding in docs/peer-benchmark.md §1.

  python tests/bench/peer_step_compare.py AR_STREAM.ars AUTOROUND_DIR MODEL_DIR BITS [BLOCK]

AUTOROUND_DIR: what tests/bench/peer_autoround.py wrote (sym int schemes only:
codes are q + 2^(bits-1), GPTQ-style int32 packing along the input dimension).
The linears compared are those AutoRound quantized in block BLOCK [0] (its
qweight tensors), so MoE blocks' experts and shared experts are included; the
last lines sum each kind of linear over the experts (mlp.experts.*.gate_proj ...).
"""
import glob, re, struct, subprocess, sys
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


def spellings(lin):
    """Names one linear may have on the three sides: Mixtral's checkpoint keeps
    block_sparse_moe.experts.E.w1/w3/w2, AutoRound writes gate/up/down_proj under
    block_sparse_moe, ar writes mlp.experts.E.gate/up/down_proj."""
    out = [lin, lin.replace('block_sparse_moe.', 'mlp.')]
    for proj, w in (('gate_proj', 'w1'), ('up_proj', 'w3'), ('down_proj', 'w2')):
        out += [n.replace('.' + proj, '.' + w) for n in out if n.endswith('.' + proj)]
    return out


def pick(table, head, lin, suffix):
    for n in spellings(lin):
        if head + n + suffix in table:
            return table[head + n + suffix]
    sys.exit(f'no tensor {head}{lin}{suffix} under any spelling')


def main():
    ars_path, peer_dir, model, bits = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    ars = read_ars(ars_path)
    st = {}
    for f in glob.glob(peer_dir + '/**/*.safetensors', recursive=True):
        st.update(load_file(f))
    orig = {}
    for f in glob.glob(model + '/*.safetensors'):
        orig.update(load_file(f))
    block = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    m, per = 1 << (bits - 1), 32 // bits
    head = f"model.layers.{block}."
    lins = sorted(k[len(head):-len(".qweight")] for k in st if k.startswith(head) and k.endswith(".qweight"))
    if not lins:
        sys.exit(f'{peer_dir}: no quantized linear of block {block}')
    kinds = {}  # experts summed per projection: [groups, equal ratios, ar below, peer below, codes, equal codes]
    for lin in lins:
        pre = head + lin
        w = pick(orig, head, lin, ".weight").float().numpy()
        n, k = w.shape
        codes = np.frombuffer(pick(ars, head, lin, ".qweight")[2], dtype=np.uint8).reshape(n, k).astype(np.int32)
        sc = np.frombuffer(pick(ars, head, lin, ".scale")[2], dtype=np.float32).reshape(n, -1)
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
        print(f"{lin:36s} scale ratio equal {np.mean(ra == rp):.4f}  below RTN: ar {np.mean(ra < 0.999):.3f}"
              f" AutoRound {np.mean(rp < 0.999):.3f}  codes equal {np.mean(codes == pc):.4f}")
        kind = re.sub(r'\.experts\.\d+\.', '.experts.*.', lin)
        if kind != lin:
            t = kinds.setdefault(kind, [0] * 6)
            for j, v in enumerate((ra.size, np.sum(ra == rp), np.sum(ra < 0.999), np.sum(rp < 0.999),
                                   codes.size, np.sum(codes == pc))):
                t[j] += int(v)
    for kind, (g, eq, ab, pb, c, ce) in sorted(kinds.items()):
        print(f"{kind:36s} scale ratio equal {eq / g:.4f}  below RTN: ar {ab / g:.3f}"
              f" AutoRound {pb / g:.3f}  codes equal {ce / c:.4f}")


if __name__ == '__main__':
    main()
