# flash_mma_model.py — a CPU model of the mma flash-attention kernels of
# dev/cuda/flash_attention.cu (forward 4 and backward 7 are the product's
# kernels/flash_mma.cu, where k_fwd3, k_bwd_kv2<D, KV_STORE_DS | KV_ILV |
# KV_L2> and k_bwd_dq2 are named k_fwd, k_bwd_kv and k_bwd_dq), for review
# without a GPU: ldmatrix (x4, .trans) and
# mma.m16n8k16 (bf16 in, f32 accumulate) are emulated lane by lane as the
# PTX ISA defines their fragments, the kernels' helpers and loops are
# transcribed one to one, and the results are compared with numpy (tile
# products for every head_dim the kernels take) and with dense attention
# (forward, lse, and the backward's dq, dk, dv; causal and a sliding window,
# T not a multiple of the tile). A failed check raises.
#   build/venv/bin/python dev/cuda/flash_mma_model.py   (about 5 s)
# It checks index arithmetic, not the hardware: flash_attention (make
# dev-cuda) runs the kernels themselves against a CPU reference, and
# cuda_check --tests --fast the product's. Versions (flash_attention.cu's
# numbering): version 1 (mma1) and version 2 (mma-v2: the forward's row
# maximum on raw scores with one FFMA per probability, the dK/dV kernel's
# flattened (head, query tile) steps and its end_query_tile bound; the
# cp.async double buffering only changes where a tile sits, not what is
# read) and version 3 (mma-atomic: version 2's forward on 128-row query
# tiles; the dK/dV kernel stores dS^T in bf16 and adds dS K to dq from its
# transpose, load_a_t), forward 4 (mma-m128: 128-row query tiles, each warp
# 32 rows as two 16-row units reading Q from shared memory; checked equal,
# exactly, to version 2's forward) and backward 4 (mma-ds: the dK/dV kernel
# stores dS tiles as 8x8 matrices in a NaN-poisoned scratch indexed by
# chunk-local head, query tile and key tile; the dQ kernel reads them back
# through ldmatrix.trans; GQA, windows and chunked launches) and backward 7
# (backward 4's dS read by k_bwd_dq2: two query tiles per block, 32 rows per
# warp; checked equal to backward 4 exactly).
# Not modelled, because they change no index a lane reads or writes: backward
# 5 (backward 4 with its products interleaved in pairs) and the L2-friendly
# block order (which block runs when).
import numpy as np
rng = np.random.default_rng(1)

def ldsm(smem, addrs, trans):
    # addrs[lane] = flat element index of a row start (8 elements) in smem
    regs = [[None]*4 for _ in range(32)]
    for i in range(4):
        M = np.array([smem[addrs[8*i+r]: addrs[8*i+r]+8] for r in range(8)])
        for lane in range(32):
            g, t = lane // 4, lane % 4
            regs[lane][i] = (M[2*t][g], M[2*t+1][g]) if trans else (M[g][2*t], M[g][2*t+1])
    return regs

def mma(c, a, b0, b1):
    # c[lane] = 4 floats, a[lane] = 4 pairs, b0/b1[lane] = pairs
    A = np.zeros((16, 16)); B = np.zeros((16, 8)); C = np.zeros((16, 8))
    for lane in range(32):
        g, t = lane // 4, lane % 4
        A[g, 2*t:2*t+2] = a[lane][0]; A[g+8, 2*t:2*t+2] = a[lane][1]
        A[g, 2*t+8:2*t+10] = a[lane][2]; A[g+8, 2*t+8:2*t+10] = a[lane][3]
        B[2*t:2*t+2, g] = b0[lane]; B[2*t+8:2*t+10, g] = b1[lane]
        C[g, 2*t:2*t+2] = c[lane][0:2]; C[g+8, 2*t:2*t+2] = c[lane][2:4]
    D = A @ B + C
    for lane in range(32):
        g, t = lane // 4, lane % 4
        c[lane][0:2] = D[g, 2*t:2*t+2]; c[lane][2:4] = D[g+8, 2*t:2*t+2]

def load_a(X, ld, r0, c0):
    return ldsm(X, [(r0 + (l & 15)) * ld + c0 + ((l >> 4) << 3) for l in range(32)], False)
def load_b_nk(X, ld, n0, k0):
    return ldsm(X, [(n0 + (l & 7) + ((l >> 4) << 3)) * ld + k0 + (((l >> 3) & 1) << 3) for l in range(32)], False)
def load_b_kn(Y, ld, k0, n0):
    return ldsm(Y, [(k0 + (l & 7) + (((l >> 3) & 1) << 3)) * ld + n0 + ((l >> 4) << 3) for l in range(32)], True)

def load_a_t(X, ld, r0, c0):  # A = the (r0, c0) 16 x 16 block of X^T, X stored [k][m]
    return ldsm(X, [(c0 + (l & 7) + ((l >> 4) << 3)) * ld + r0 + (((l >> 3) & 1) << 3) for l in range(32)], True)

def rows_times_tile_t(D, X, r0, Y):
    LD = D + 8
    acc = [[np.zeros(4) for _ in range(32)] for _ in range(8)]
    for kk in range(D // 16):
        a = load_a(X, LD, r0, 16*kk)
        for np_ in range(4):
            b = load_b_nk(Y, LD, 16*np_, 16*kk)
            mma(acc[2*np_], a, [x[0] for x in b], [x[1] for x in b])
            mma(acc[2*np_+1], a, [x[2] for x in b], [x[3] for x in b])
    return acc

def acc_times_tile(D, out, p, Y):
    LD = D + 8
    for kk in range(4):
        a = [[(p[2*kk][l][0], p[2*kk][l][1]), (p[2*kk][l][2], p[2*kk][l][3]),
              (p[2*kk+1][l][0], p[2*kk+1][l][1]), (p[2*kk+1][l][2], p[2*kk+1][l][3])] for l in range(32)]
        for dp in range(D // 16):
            b = load_b_kn(Y, LD, 16*kk, 16*dp)
            mma(out[2*dp], a, [x[0] for x in b], [x[1] for x in b])
            mma(out[2*dp+1], a, [x[2] for x in b], [x[3] for x in b])

def gather(acc, ncols):  # acc[n][lane][e] -> 16 x ncols
    M = np.zeros((16, ncols))
    for n in range(ncols // 8):
        for lane in range(32):
            g, t = lane // 4, lane % 4
            M[g, 8*n+2*t:8*n+2*t+2] = acc[n][lane][0:2]; M[g+8, 8*n+2*t:8*n+2*t+2] = acc[n][lane][2:4]
    return M

for D in (32, 64, 80, 96, 128):
    LD = D + 8
    X = rng.standard_normal((64, D)); Y = rng.standard_normal((64, D))
    def tile(M):
        s = np.zeros(64 * LD); 
        for r in range(64): s[r*LD:r*LD+D] = M[r]
        return s
    Xs, Ys = tile(X), tile(Y)
    for w in range(4):
        acc = rows_times_tile_t(D, Xs, 16*w, Ys)
        S = gather(acc, 64)
        ref = X[16*w:16*w+16] @ Y.T
        assert np.allclose(S, ref), ('S', D, w)
        out = [[np.zeros(4) for _ in range(32)] for _ in range(D // 8)]
        acc_times_tile(D, out, acc, Ys)
        O = gather(out, D)
        assert np.allclose(O, S @ Y), ('O', D, w)
    print('D', D, 'ok')

# ---- whole kernels (one block each, all warps), vs dense attention ----------------
def visible(q, k, T, window):
    return q < T and k < T and k <= q and (window <= 0 or q - k < window)

def tile_visible(q0, k0, T, window):
    return k0 + 63 <= q0 and q0 + 64 <= T and (window <= 0 or q0 + 63 - k0 < window)

LOG2E, LN2 = 1.4426950408889634, 0.6931471805599453

def load_tile(x, t0, T, D):  # x [T, D] one head
    LD = D + 8; s = np.zeros(64 * LD)
    for r in range(64):
        if t0 + r < T: s[r*LD:r*LD+D] = x[t0 + r]
    return s

def bf(x):  # round to bf16 (nearest even) as the pack does
    x = np.asarray(x, dtype=np.float32); u = x.view(np.uint32).astype(np.uint64)
    u = ((u + 0x7fff + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32).astype(np.float64)

def acc_times_tile_bf(D, out, p, Y):
    pb = [[bf(p[n][l]) for l in range(32)] for n in range(8)]
    acc_times_tile(D, out, pb, Y)

def first_key_tile(q0, window):
    return (q0 - window + 1) // 64 if window > 0 and q0 - window + 1 > 0 else 0

def end_query_tile(k0, nT, window):  # version 2's bound on the dK/dV loop
    return nT if window <= 0 else min(nT, (k0 + 63 + window + 63) // 64)

def kv_steps(j, nT, group, window, version):  # (head r, query tile i) per step
    if version == 1:
        out = []
        for r in range(group):
            for i in range(j, nT):
                if window > 0 and i * 64 - window >= j * 64 + 63: break
                out.append((r, i))
        return out
    ni = end_query_tile(j * 64, nT, window) - j
    return [(st // ni, j + st % ni) for st in range(group * ni)]

LDT = 72  # the fused backward's dS^T tile pitch

def add_dq_atomic(D, dq, dSt, Ks, q0, T, w):  # version 3: dq rows += dS K (dS = dSt^T)
    LD = D + 8
    for c0 in range(0, D // 16, 4):
        acc = [[np.zeros(4) for _ in range(32)] for _ in range(8)]
        for kk in range(4):
            a = load_a_t(dSt, LDT, 16 * w, 16 * kk)
            for u in range(4):
                if c0 + u < D // 16:
                    b = load_b_kn(Ks, LD, 16 * kk, 16 * (c0 + u))
                    mma(acc[2*u], a, [x[0] for x in b], [x[1] for x in b]); mma(acc[2*u+1], a, [x[2] for x in b], [x[3] for x in b])
        for lane in range(32):
            g, t = lane // 4, lane % 4
            for hh in range(2):
                r = q0 + 16 * w + g + 8 * hh
                if r >= T: continue
                for u in range(4):
                    if c0 + u < D // 16:
                        for half in range(2):
                            col = 16 * (c0 + u) + 8 * half + 2 * t
                            dq[r, col:col + 2] += acc[2*u + half][lane][2*hh:2*hh + 2]

# the flattened steps of version 2 are version 1's nested loops
for T in (1, 63, 64, 65, 200, 300, 1000):
    nT = (T + 63) // 64
    for window in (0, 1, 32, 48, 64, 65, 100, 128, 500):
        for group in (1, 2, 3):
            for j in range(nT):
                assert kv_steps(j, nT, group, window, 1) == kv_steps(j, nT, group, window, 2), (T, window, group, j)
print('kv steps ok')

def fwd(q, k, v, T, D, window, version=1):
    # version 3: 128-row query tiles, 8 warps; versions 2, 3: a warp skips key
    # tiles after its rows and needs no masking where its 16 rows see the tile
    # version 4: 128-row tiles, four warps of 32 rows = eight 16-row units
    # (w = 2·warp + u) that skip a key tile only when their whole warp does
    scale = 1 / np.sqrt(D); scale2 = scale * LOG2E; NW = 8 if version in (3, 4) else 4; QR = 16 * NW
    O = np.zeros((T, D)); LSE = np.zeros(T)
    for i in range((T + QR - 1) // QR):
        q0 = i * QR; Qs = np.concatenate([load_tile(q, q0 + r, T, D) for r in range(0, QR, 64)])
        jl = (min(q0 + QR, T) - 1) // 64 if version >= 2 else i
        for w in range(NW):
            o = [[np.zeros(4) for _ in range(32)] for _ in range(D // 8)]
            m = np.full((32, 2), -np.inf); l = np.zeros((32, 2)); qw = q0 + 16 * w
            for j in range(first_key_tile(q0, window), jl + 1):
                k0 = j * 64; Ks = load_tile(k, k0, T, D); Vs = load_tile(v, k0, T, D)
                if version == 4:
                    qwarp = q0 + 32 * (w // 2)
                    if not (k0 <= qwarp + 31 and (window <= 0 or qwarp - (k0 + 63) < window)): continue
                elif version >= 2 and k0 > qw + 15: continue
                s = rows_times_tile_t(D, Qs, 16 * w, Ks)
                sc = 1.0 if version >= 2 else scale2  # versions 2, 3: maximum on the raw scores
                mx = np.full((32, 2), -np.inf)
                full = (k0 + 63 <= qw and qw + 16 <= T and (window <= 0 or qw + 15 - k0 < window)) if version >= 2 \
                    else tile_visible(q0, k0, T, window)
                for n in range(8):
                    for lane in range(32):
                        g, t = lane // 4, lane % 4; row0 = q0 + 16 * w + g
                        for e in range(4):
                            key = k0 + 8 * n + 2 * t + (e & 1)
                            x = s[n][lane][e] * sc if full or visible(row0 + 8 * (e >> 1), key, T, window) else -np.inf
                            s[n][lane][e] = x; mx[lane][e >> 1] = max(mx[lane][e >> 1], x)
                for lane in range(32):  # quad max
                    base = lane & ~3
                    for hh in range(2):
                        qm = max(mx[base + u][hh] for u in range(4))
                        mn = max(m[lane][hh], qm if version == 1 or qm == -np.inf else qm * scale2)
                        alpha = 0.0 if m[lane][hh] == -np.inf else np.exp2(m[lane][hh] - mn)
                        mu = 0.0 if mn == -np.inf else mn
                        m[lane][hh] = mn
                        rs = 0.0
                        for n in range(8):
                            for e in (2 * hh, 2 * hh + 1):
                                pp = np.exp2(s[n][lane][e] - mu if version == 1 else s[n][lane][e] * scale2 - mu)
                                s[n][lane][e] = pp; rs += pp
                        l[lane][hh] = l[lane][hh] * alpha + rs
                        for n in range(D // 8):
                            o[n][lane][2 * hh] *= alpha; o[n][lane][2 * hh + 1] *= alpha
                acc_times_tile_bf(D, o, s, Vs)
            for lane in range(32):
                g, t = lane // 4, lane % 4
                for hh in range(2):
                    lt = sum(l[(lane & ~3) + u][hh] for u in range(4))
                    r = qw + g + 8 * hh
                    if r >= T: continue
                    for n in range(D // 8):
                        O[r, 8 * n + 2 * t] = o[n][lane][2 * hh] / lt; O[r, 8 * n + 2 * t + 1] = o[n][lane][2 * hh + 1] / lt
                    LSE[r] = m[lane][hh] * LN2 + np.log(lt)
    return O, LSE

def dense(q, k, v, T, D, window, dO):
    scale = 1 / np.sqrt(D)
    S = q @ k.T * scale
    mask = np.array([[visible(a, b, T, window) for b in range(T)] for a in range(T)])
    S = np.where(mask, S, -np.inf); P = np.exp(S - S.max(1, keepdims=True)); P /= P.sum(1, keepdims=True)
    O = P @ v; dP = dO @ v.T; Dr = (dP * P).sum(1, keepdims=True); dS = P * (dP - Dr) * scale
    return O, dS @ k, dS.T @ q, P.T @ dO, np.log(np.exp(S - S.max(1, keepdims=True)).sum(1)) + S.max(1)

DS_TILE = 64 * 64

def ds_from_dp(dp, p, Ds, scale):  # dS = P * (dP - D) * scale, in place on the warp's accumulators
    for n in range(8):
        for lane in range(32):
            t = lane % 4
            for e in range(4):
                dp[n][lane][e] = p[n][lane][e] * (dp[n][lane][e] - Ds[8 * n + 2 * t + (e & 1)]) * scale


def add_frag_rows(dst, acc, r0, T, D):  # a warp's m16 x D accumulator fragments into rows r0.. of dst [T, D] (rows < T)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for hh in range(2):
            r = r0 + g + 8 * hh
            if r >= T: continue
            for n in range(D // 8):
                for u in range(2):
                    dst[r, 8 * n + 2 * t + u] += acc[n][lane][2 * hh + u]


def add_kv_rows(dk, dv, dK, dV, k0, w, T, D):  # the warp's dK, dV accumulators into rows k0 + 16w.. of dk, dv [T, D]
    add_frag_rows(dk, dK, k0 + 16 * w, T, D)
    add_frag_rows(dv, dV, k0 + 16 * w, T, D)


def store_ds_tile(tile, dp, w):  # backward 4: the warp's dS^T rows as 8x8 matrices (kb, n), lane pairs
    for hh in range(2):
        for n in range(8):
            for lane in range(32):
                o = ((2 * w + hh) * 8 + n) * 64 + 2 * lane
                assert np.isnan(tile[o:o + 2]).all(), 'a dS entry written twice'
                tile[o:o + 2] = bf(dp[n][lane][2 * hh:2 * hh + 2])

def ds_tile_at(lh, ntri, i, j):
    return (lh * ntri + i * (i + 1) // 2 + j) * DS_TILE

def dq2_chunk(dq, scratch, k, T, D, window, p0, npairs, group, ntri, LD):
    # backward 7's k_bwd_dq2: blocks of two query tiles (ia, ia + 1), each warp
    # 32 rows of one tile as two units sharing the K fragments; a warp pair
    # reads only the dS tiles of the key tiles its query tile sees
    nT = (T + 63) // 64; nP = (nT + 1) // 2
    for bx in range(npairs * group):
        kvh = p0 + bx // group; h = kvh * group + bx % group
        for y in range(nP):
            ia = 2 * (nP - 1 - y); nq = 2 if ia + 1 < nT else 1
            jf = first_key_tile(ia * 64, window); jl = ia + nq - 1
            loaded = {}  # (x, j) -> the dS tile the block copied
            for j in range(jf, jl + 1):
                for x in range(nq):
                    if first_key_tile((ia + x) * 64, window) <= j <= ia + x:
                        o = ds_tile_at(bx, ntri, ia + x, j); loaded[(x, j)] = scratch[o:o + DS_TILE]
            for w in range(4):
                iq = ia + (w >> 1); wj0 = first_key_tile(iq * 64, window)
                if iq >= nT: continue
                dQ = [[[np.zeros(4) for _ in range(32)] for _ in range(D // 8)] for _ in range(2)]
                for j in range(jf, jl + 1):
                    if not (wj0 <= j <= iq): continue
                    Ks = load_tile(k[kvh], j * 64, T, D); Sc = loaded[(w >> 1, j)]
                    for kk in range(4):
                        a = [ldsm(Sc, [((2 * kk + ((l >> 3) >> 1)) * 8 + 4 * (w & 1) + ((l >> 3) & 1) + 2 * u) * 64 + (l & 7) * 8 for l in range(32)], True) for u in range(2)]
                        for u in range(2): assert not np.isnan(np.array(a[u], dtype=float)).any(), 'dQ2 read a dS entry never written'
                        for dp_ in range(D // 16):
                            b = load_b_kn(Ks, LD, 16 * kk, 16 * dp_)
                            for u in range(2):
                                mma(dQ[u][2 * dp_], a[u], [x[0] for x in b], [x[1] for x in b]); mma(dQ[u][2 * dp_ + 1], a[u], [x[2] for x in b], [x[3] for x in b])
                for u in range(2):
                    for lane in range(32):
                        g, t = lane // 4, lane % 4
                        for hh in range(2):
                            rr = iq * 64 + 32 * (w & 1) + 16 * u + g + 8 * hh
                            if rr >= T: continue
                            for n in range(D // 8):
                                for e in range(2): dq[h, rr, 8 * n + 2 * t + e] += dQ[u][n][lane][2 * hh + e]

def bwd4(q, k, v, dO, O, LSE, T, D, window, NH, NKV, chunk, dq2=False):
    # backward 4 over NH query heads sharing NKV kv heads (q, dO, O [NH, T, D];
    # k, v [NKV, T, D]; LSE [NH, T]), one sequence, launches of `chunk` kv heads
    scale = 1 / np.sqrt(D); nT = (T + 63) // 64; scale2 = scale * LOG2E; group = NH // NKV; LD = D + 8
    ntri = nT * (nT + 1) // 2
    Drow = (dO * O).sum(2); dOb = bf(dO)
    dq = np.zeros((NH, T, D)); dk = np.zeros((NKV, T, D)); dv = np.zeros((NKV, T, D))
    for p0 in range(0, NKV, chunk):
        npairs = min(chunk, NKV - p0)
        scratch = np.full(npairs * group * ntri * DS_TILE, np.nan)
        for bx in range(npairs):  # k_bwd_kv2<D, KV_STORE_DS>
            kvh = p0 + bx
            for j in range(nT):
                k0 = j * 64; Ks = load_tile(k[kvh], k0, T, D); Vs = load_tile(v[kvh], k0, T, D)
                ni = end_query_tile(k0, nT, window) - j
                for w in range(4):
                    dK = [[np.zeros(4) for _ in range(32)] for _ in range(D // 8)]
                    dV = [[np.zeros(4) for _ in range(32)] for _ in range(D // 8)]
                    for st in range(group * ni):
                        r, i = st // ni, j + st % ni; h = kvh * group + r; q0 = i * 64
                        Qs = load_tile(q[h], q0, T, D); dOs = load_tile(dOb[h], q0, T, D)
                        Ls = [LSE[h, q0 + c] if q0 + c < T else 0 for c in range(64)]
                        Ds = [Drow[h, q0 + c] if q0 + c < T else 0 for c in range(64)]
                        p = rows_times_tile_t(D, Ks, 16 * w, Qs)
                        full = tile_visible(q0, k0, T, window)
                        for n in range(8):
                            for lane in range(32):
                                g, t = lane // 4, lane % 4; key0 = k0 + 16 * w + g
                                for e in range(4):
                                    c = 8 * n + 2 * t + (e & 1)
                                    p[n][lane][e] = np.exp2(p[n][lane][e] * scale2 - Ls[c] * LOG2E) if full or visible(q0 + c, key0 + 8 * (e >> 1), T, window) else 0.0
                        acc_times_tile_bf(D, dV, p, dOs)
                        dp = rows_times_tile_t(D, Vs, 16 * w, dOs)
                        ds_from_dp(dp, p, Ds, scale)
                        o = ds_tile_at(bx * group + r, ntri, i, j)
                        store_ds_tile(scratch[o:o + DS_TILE], dp, w)
                        acc_times_tile_bf(D, dK, dp, Qs)
                    add_kv_rows(dk[kvh], dv[kvh], dK, dV, k0, w, T, D)
        if dq2:
            dq2_chunk(dq, scratch, k, T, D, window, p0, npairs, group, ntri, LD)
            continue
        for bx in range(npairs * group):  # k_bwd_dq
            kvh = p0 + bx // group; h = kvh * group + bx % group
            for i in range(nT):
                q0 = i * 64; base = ds_tile_at(bx, ntri, i, 0)
                for w in range(4):
                    dQ = [[np.zeros(4) for _ in range(32)] for _ in range(D // 8)]
                    for j in range(first_key_tile(q0, window), i + 1):
                        Ks = load_tile(k[kvh], j * 64, T, D); Sc = scratch[base + j * DS_TILE: base + (j + 1) * DS_TILE]
                        for kk in range(4):
                            a = ldsm(Sc, [((2 * kk + ((l >> 3) >> 1)) * 8 + 2 * w + ((l >> 3) & 1)) * 64 + (l & 7) * 8 for l in range(32)], True)
                            assert not np.isnan(np.array(a, dtype=float)).any(), 'dQ read a dS entry never written'
                            for dp_ in range(D // 16):
                                b = load_b_kn(Ks, LD, 16 * kk, 16 * dp_)
                                mma(dQ[2 * dp_], a, [x[0] for x in b], [x[1] for x in b]); mma(dQ[2 * dp_ + 1], a, [x[2] for x in b], [x[3] for x in b])
                    add_frag_rows(dq[h], dQ, q0 + 16 * w, T, D)
    return dq, dk, dv

def bwd(q, k, v, dO, O, LSE, T, D, window, version=1):
    scale = 1 / np.sqrt(D); nT = (T + 63) // 64; scale2 = scale * LOG2E
    Drow = (dO * O).sum(1)
    dq = np.zeros((T, D)); dk = np.zeros((T, D)); dv = np.zeros((T, D))
    dOb = bf(dO)
    for j in range(nT):  # kv kernel
        k0 = j * 64; Ks = load_tile(k, k0, T, D); Vs = load_tile(v, k0, T, D)
        dSts = {}  # version 3: query tile -> the block's dS^T tile (every warp's rows)
        for w in range(4):
            dK = [[np.zeros(4) for _ in range(32)] for _ in range(D // 8)]
            dV = [[np.zeros(4) for _ in range(32)] for _ in range(D // 8)]
            for (_, i) in kv_steps(j, nT, 1, window, version):
                q0 = i * 64
                Qs = load_tile(q, q0, T, D); dOs = load_tile(dOb, q0, T, D)
                Ls = [LSE[q0 + c] * LOG2E if q0 + c < T else 0 for c in range(64)]
                Ds = [Drow[q0 + c] if q0 + c < T else 0 for c in range(64)]
                p = rows_times_tile_t(D, Ks, 16 * w, Qs)
                full = tile_visible(q0, k0, T, window)
                for n in range(8):
                    for lane in range(32):
                        g, t = lane // 4, lane % 4; key0 = k0 + 16 * w + g
                        for e in range(4):
                            c = 8 * n + 2 * t + (e & 1)
                            p[n][lane][e] = np.exp2(p[n][lane][e] * scale2 - Ls[c]) if full or visible(q0 + c, key0 + 8 * (e >> 1), T, window) else 0.0
                acc_times_tile_bf(D, dV, p, dOs)
                dp = rows_times_tile_t(D, Vs, 16 * w, dOs)
                ds_from_dp(dp, p, Ds, scale)
                if version == 3:  # the warp's rows of dS^T in bf16, as the kernel stores them
                    dSt = dSts.setdefault(i, np.full(64 * LDT, np.nan))
                    for n in range(8):
                        for lane in range(32):
                            g, t = lane // 4, lane % 4
                            for hh in range(2):
                                o = (16 * w + g + 8 * hh) * LDT + 8 * n + 2 * t
                                dSt[o:o + 2] = bf(dp[n][lane][2 * hh:2 * hh + 2])
                acc_times_tile_bf(D, dK, dp, Qs)
            add_kv_rows(dk, dv, dK, dV, k0, w, T, D)
        for i, dSt in dSts.items():  # version 3: after the barrier, every warp's query rows
            for w in range(4):
                add_dq_atomic(D, dq, dSt, Ks, i * 64, T, w)  # NaN = a row no warp wrote
    for i in range(nT if version != 3 else 0):  # q kernel
        q0 = i * 64; Qs = load_tile(q, q0, T, D); dOs = load_tile(dOb, q0, T, D)
        for w in range(4):
            dQ = [[np.zeros(4) for _ in range(32)] for _ in range(D // 8)]
            for j in range(first_key_tile(q0, window), i + 1):
                k0 = j * 64; Ks = load_tile(k, k0, T, D); Vs = load_tile(v, k0, T, D)
                p = rows_times_tile_t(D, Qs, 16 * w, Ks); dp = rows_times_tile_t(D, dOs, 16 * w, Vs)
                full = tile_visible(q0, k0, T, window)
                for n in range(8):
                    for lane in range(32):
                        g, t = lane // 4, lane % 4
                        for e in range(4):
                            hh = e >> 1; r = q0 + 16 * w + g + 8 * hh; key = k0 + 8 * n + 2 * t + (e & 1)
                            L = LSE[r] * LOG2E if r < T else 0; Dd = Drow[r] if r < T else 0
                            pv = np.exp2(p[n][lane][e] * scale2 - L) if full or visible(r, key, T, window) else 0.0
                            dp[n][lane][e] = pv * (dp[n][lane][e] - Dd) * scale
                acc_times_tile_bf(D, dQ, dp, Ks)
            for lane in range(32):
                g, t = lane // 4, lane % 4
                for hh in range(2):
                    r = q0 + 16 * w + g + 8 * hh
                    if r >= T: continue
                    for n in range(D // 8):
                        for u in range(2): dq[r, 8 * n + 2 * t + u] += dQ[n][lane][2 * hh + u]
    return dq, dk, dv

for (T, D, window, version) in [(70, 32, 0, 1), (130, 32, 40, 1), (192, 32, 0, 1), (70, 32, 0, 2), (130, 32, 40, 2),
                                (192, 32, 0, 2), (70, 32, 0, 3), (130, 80, 40, 3), (300, 32, 0, 3), (200, 32, 100, 3)]:
    q, k, v, dO = (bf(rng.standard_normal((T, D))) for _ in range(4))
    O, LSE = fwd(q, k, v, T, D, window, version)
    rO, rdq, rdk, rdv, rlse = dense(q, k, v, T, D, window, dO)
    rel = lambda a, b: np.abs(a - b).max() / np.abs(b).max()
    print('version', version, 'T', T, 'D', D, 'w', window, 'fwd', rel(O, rO), 'lse', rel(LSE, rlse))
    assert rel(O, rO) < 2e-2 and rel(LSE, rlse) < 1e-6, 'forward'
    dq, dk, dv = bwd(q, k, v, dO, O, LSE, T, D, window, version)
    print('   bwd dq', rel(dq, rdq), 'dk', rel(dk, rdk), 'dv', rel(dv, rdv))
    assert max(rel(dq, rdq), rel(dk, rdk), rel(dv, rdv)) < 5e-2, 'backward'
# forward 4 = forward 2 exactly; backward 4 against dense attention per head
for (T, D, window) in [(70, 32, 0), (200, 32, 48), (300, 32, 0), (130, 80, 150)]:
    q, k, v = (bf(rng.standard_normal((T, D))) for _ in range(3))
    O2, L2 = fwd(q, k, v, T, D, window, 2)
    O4, L4 = fwd(q, k, v, T, D, window, 4)
    assert np.array_equal(O2, O4) and np.array_equal(L2, L4), ('forward 4 != forward 2', T, D, window)
    print('forward 4 == forward 2: T', T, 'D', D, 'w', window)
for (T, D, window, NH, NKV, chunk) in [(130, 32, 0, 4, 2, 1), (200, 32, 70, 3, 1, 1), (70, 64, 0, 2, 2, 2),
                                        (260, 32, 100, 2, 1, 1)]:
    q, dO = (bf(rng.standard_normal((NH, T, D))) for _ in range(2))
    k, v = (bf(rng.standard_normal((NKV, T, D))) for _ in range(2))
    group = NH // NKV
    O = np.zeros((NH, T, D)); LSE = np.zeros((NH, T)); ref = []
    for h in range(NH):
        O[h], LSE[h] = fwd(q[h], k[h // group], v[h // group], T, D, window, 2)
        ref.append(dense(q[h], k[h // group], v[h // group], T, D, window, dO[h]))
    dq, dk, dv = bwd4(q, k, v, dO, O, LSE, T, D, window, NH, NKV, chunk)
    rdq = np.stack([r[1] for r in ref])
    rdk = np.stack([sum(ref[h][2] for h in range(kv * group, (kv + 1) * group)) for kv in range(NKV)])
    rdv = np.stack([sum(ref[h][3] for h in range(kv * group, (kv + 1) * group)) for kv in range(NKV)])
    rel = lambda a, b: np.abs(a - b).max() / np.abs(b).max()
    print('backward 4 T', T, 'D', D, 'w', window, 'H', NH, '/', NKV, 'chunk', chunk, 'dq', rel(dq, rdq), 'dk', rel(dk, rdk), 'dv', rel(dv, rdv))
    assert max(rel(dq, rdq), rel(dk, rdk), rel(dv, rdv)) < 5e-2, 'backward 4'
    dq7, dk7, dv7 = bwd4(q, k, v, dO, O, LSE, T, D, window, NH, NKV, chunk, dq2=True)
    assert np.array_equal(dq, dq7) and np.array_equal(dk, dk7) and np.array_equal(dv, dv7), 'backward 7 != backward 4'
    print('   backward 7 (k_bwd_dq2) == backward 4')
print('flash_mma model: all checks passed')
