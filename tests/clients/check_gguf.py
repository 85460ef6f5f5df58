#!/usr/bin/env python3
"""Real clients on the GGUF files our tools write.

usage: check_gguf.py [--shared DIR] [--bin DIR] [--kld] [--chunks N] [--keep DIR]

Installs what it needs into build/venv (pip install gguf llama-cpp-python;
llama-cpp-python compiles llama.cpp, several minutes) and re-runs itself there.
Makes stories260K files with the pipeline (ar-tune --scheme gguf:<mix> |
ar-pack --format gguf:<mix>: F32, Q8_0, Q4_0, Q4_K_M RTN, Q4_K_M with an
imatrix from a small calibration stream) and checks:
  1. the `gguf` Python reader opens each file and its dequantization
     (gguf.quants.dequantize) equals ours (libar's ar_ggml_dequantize, built
     into a small shared object) bit for bit, for every tensor;
  2. llama-cpp-python loads each file; greedy continuation (argmax) of a
     prompt gives the same ids as `ar-eval --prompt` on the same file;
  3. perplexity by llama-cpp-python equals ar-eval's within 0.5% (same
     protocol: non-overlapping windows from token 0, positions 1..T-1).
With --kld: KL divergence as llama-perplexity --kl-divergence measures it
(tiny-llama/gguf-reference/README.md): tiny-llama F32 GGUF as the base, 512-token
chunks of heldout.txt as llama.cpp tokenizes it, KL(F32 || quant) over the
second half of each chunk (positions 256..510), mean over all chunks, for
Q4_K_M RTN and Q4_K_M with an imatrix from the first 1,000,000 bytes of the
training corpus (as the stock file's), beside stock llama-quantize's figures.
Prints one line per check and a closing "N passed, N failed" line.
"""
import argparse
import ctypes
import json
import math
import os
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
VENV = os.path.join(ROOT, "build", "venv")
VPY = os.path.join(VENV, "bin", "python")
STOCK_Q4_K_M_IMATRIX_KLD = 0.007637   # tiny-llama/gguf-reference/README.md
STOCK_Q4_K_M_PLAIN_KLD = 0.008268
GREEDY_TIE = 0.05   # logit margin below which llama.cpp and ar-eval may pick differently


LLAMA_CMAKE_ARGS = ("-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
                    "-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF")


def ensure_env():
    """Re-exec under build/venv with gguf and llama_cpp importable."""
    if os.path.realpath(sys.prefix) != os.path.realpath(VENV):
        if not os.path.exists(VPY):
            subprocess.check_call([sys.executable, "-m", "venv", VENV])
        os.execv(VPY, [VPY] + sys.argv)
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError:
        # A portable llama.cpp build: with -march=native on a CPU that reports
        # AMX, ggml's AMX matmul crashed (SIGSEGV in ggml_backend_amx_mul_mat on
        # stock Q4_0/Q4_K_M files; tests/bench/llama_tools.sh saw SIGILL), so
        # the binding is built for x86-64-v3 like the llama.cpp tools.
        env = dict(os.environ, CMAKE_ARGS=LLAMA_CMAKE_ARGS)
        subprocess.check_call([VPY, "-m", "pip", "install", "gguf", "llama-cpp-python"], env=env)


results = []


def check(ok, what):
    results.append(bool(ok))
    print(("ok   " if ok else "FAIL ") + what, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


# ---- our dequantizer, from libar's sources -----------------------------------

def our_dequantizer(tmp):
    so = os.path.join(tmp, "libggufq.so")
    lib_dir = os.path.join(ROOT, "libar")
    src = [os.path.join(lib_dir, f) for f in ("quant/ggml_blocks.c", "base/dtype.c", "base/error.c")]
    inc = ["-I" + os.path.join(lib_dir, d) for d in sorted(os.listdir(lib_dir))
           if os.path.isdir(os.path.join(lib_dir, d))]   # the concept folders are include roots
    run(["cc", "-O2", "-std=c11", "-D_GNU_SOURCE", "-fPIC", "-shared", "-fopenmp", *inc, *src, "-o", so, "-lm"])
    lib = ctypes.CDLL(so)
    lib.ar_ggml_dequantize.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return lib


def check_dequant(lib, path):
    import gguf
    import numpy as np
    r = gguf.GGUFReader(path)
    bad = []
    for t in r.tensors:
        n = int(np.prod(t.shape))
        theirs = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(-1)
        raw = np.ascontiguousarray(t.data).view(np.uint8)
        ours = np.empty(n, dtype=np.float32)
        if lib.ar_ggml_dequantize(int(t.tensor_type), raw.ctypes.data, ours.ctypes.data, n) != 0:
            bad.append(t.name + " (ours failed)")
        elif theirs.size != n or not np.array_equal(theirs.view(np.uint32), ours.view(np.uint32)):
            bad.append(t.name)
    check(not bad, f"gguf reader: {os.path.basename(path)}: {len(r.tensors)} tensors dequantize as ours"
          + (f"; differ: {bad[:5]}" if bad else ""))


# ---- llama-cpp-python ------------------------------------------------------------

def no_extra_buffer_types():
    """Keep llama.cpp from repacking weights into its "extra" CPU buffer types:
    on CPUs that report AMX (Sapphire Rapids and later) it repacks for AMX
    tiles, which dies with SIGILL where the OS or hypervisor has not granted
    the tile state (seen on our VMs). The plain CPU kernels compute the same
    model."""
    import llama_cpp.llama_cpp as lc
    if getattr(lc, "_ar_patched", False):
        return
    default = lc.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p
    lc.llama_model_default_params = params
    lc._ar_patched = True


def load_llama(path, n_ctx=512):
    no_extra_buffer_types()
    from llama_cpp import Llama
    return Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True, verbose=False,
                 n_threads=os.cpu_count() or 1, seed=0)


def window_logits(llm, ids):
    """Logits [len(ids), V] of one sequence from position 0."""
    import numpy as np
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


def log_softmax(x):
    import numpy as np
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def adds_bos(llm):
    """Whether llama.cpp adds BOS for this file (its tokenizer.ggml.add_bos_token)."""
    return str(llm.metadata.get("tokenizer.ggml.add_bos_token", "false")).lower() == "true"


def first_difference(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def check_greedy(llm, path, bindir, prompt, n_new):
    out = json.loads(run([os.path.join(bindir, "ar-eval"), "--quiet", "--json", "--threads", "1", "--model", path,
                          "--prompt", prompt, "-n", str(n_new)]))
    ref = list(out["ids"])
    ids = list(llm.tokenize(prompt.encode(), add_bos=adds_bos(llm), special=False))
    same_prompt = ids == ref[:out["prompt_tokens"]]
    for _ in range(n_new):
        ids.append(int(window_logits(llm, ids)[-1].argmax()))
        if ids[-1] == llm.token_eos():
            break
    if ids == ref:
        check(same_prompt, f"llama.cpp greedy: {os.path.basename(path)}: {len(ids)} ids equal ar-eval's")
        return
    # llama.cpp multiplies quantized weights with activations rounded to 8 bits,
    # so two nearly equal logits may swap: accept a divergence only at such a tie.
    i = first_difference(ids, ref)
    logits = window_logits(llm, ids[:i])[-1] if i < len(ids) and i < len(ref) else None
    margin = float(logits[ids[i]] - logits[ref[i]]) if logits is not None else float("inf")
    check(same_prompt and margin <= GREEDY_TIE,
          f"llama.cpp greedy: {os.path.basename(path)}: equal to ar-eval's up to index {i}, where llama.cpp's "
          f"logits of the two choices differ by {margin:.4f} (a tie if <= {GREEDY_TIE})")


def llama_ppl(llm, text, seqlen, windows):
    import numpy as np
    toks = llm.tokenize(text.encode(), add_bos=adds_bos(llm), special=False)
    nwin = min(windows, len(toks) // seqlen)
    nll, n = 0.0, 0
    for w in range(nwin):
        ids = toks[w * seqlen:(w + 1) * seqlen]
        lp = log_softmax(window_logits(llm, ids))
        nll -= float(lp[np.arange(seqlen - 1), ids[1:]].sum())
        n += seqlen - 1
    return math.exp(nll / n)


def check_ppl(llm, path, bindir, text_path, seqlen, windows):
    ours = json.loads(run([os.path.join(bindir, "ar-eval"), "--quiet", "--json", "--threads", "1", "--model", path,
                           "--text", text_path, "--seqlen", str(seqlen), "--windows", str(windows)]))["ppl"]
    with open(text_path, encoding="utf-8") as f:
        theirs = llama_ppl(llm, f.read(), seqlen, windows)
    rel = abs(theirs / ours - 1)
    check(rel <= 0.005, f"llama.cpp perplexity: {os.path.basename(path)}: {theirs:.4f} vs ar-eval {ours:.4f} ({100 * rel:.3f}%)")


# ---- KL divergence as llama-perplexity measures it ----------------------------------

def kld(base_path, quant_paths, text_path, chunks):
    import numpy as np
    base = load_llama(base_path)
    quants = [load_llama(p) for p in quant_paths]
    with open(text_path, encoding="utf-8") as f:
        add_bos = adds_bos(base)
        toks = base.tokenize(f.read().encode(), add_bos=add_bos, special=False)
    n_ctx = 512
    first = n_ctx // 2
    nchunk = len(toks) // n_ctx if chunks <= 0 else min(chunks, len(toks) // n_ctx)
    sums = [0.0] * len(quants)
    agree = [0] * len(quants)
    count = 0
    for c in range(nchunk):
        ids = list(toks[c * n_ctx:(c + 1) * n_ctx])
        if add_bos:
            ids[0] = base.token_bos()
        lb = log_softmax(window_logits(base, ids)[first:n_ctx - 1])
        pb = np.exp(lb)
        for i, q in enumerate(quants):
            lq = log_softmax(window_logits(q, ids)[first:n_ctx - 1])
            sums[i] += float((pb * (lb - lq)).sum())
            agree[i] += int((lb.argmax(-1) == lq.argmax(-1)).sum())
        count += n_ctx - 1 - first
    return [(s / count, 100.0 * a / count) for s, a in zip(sums, agree)], count, nchunk


# ---- files -------------------------------------------------------------------------

def make_gguf(bindir, model, mix, out, calib=None):
    tune = [os.path.join(bindir, "ar-tune"), "--quiet"]
    if mix == "f32":
        tune += ["--model", model, "--bits", "16"]       # nothing tuned: ar-pack converts everything
    elif calib:
        tune += ["-i", calib, "--scheme", "gguf:" + mix]
    else:
        tune += ["--model", model, "--scheme", "gguf:" + mix]
    stream = out + ".ars"
    run(tune + ["-o", stream])
    run([os.path.join(bindir, "ar-pack"), "--quiet", "-i", stream, "--format", "gguf:" + mix, "-o", out])
    os.unlink(stream)
    return out


def calib_stream(bindir, model, text, nsamples, seqlen, out):
    run([os.path.join(bindir, "ar-calib"), "--quiet", "--model", model, "--dataset", text, "--nsamples", str(nsamples),
         "--seqlen", str(seqlen), "-o", out])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=os.environ.get("AR_SHARED", os.path.join(ROOT, "..", "shared")))
    ap.add_argument("--bin", default=os.environ.get("AR_BIN", os.path.join(ROOT, "bin")))
    ap.add_argument("--kld", action="store_true", help="also tiny-llama's KL divergence table (minutes)")
    ap.add_argument("--chunks", type=int, default=0, help="KLD chunks (0 = all, as llama-perplexity)")
    ap.add_argument("--keep", help="write the files here and keep them")
    ap.add_argument("--kld-files", nargs="+", metavar="GGUF",
                    help="only measure KLD on tiny-llama's heldout.txt: the first file is the F32 base")
    a = ap.parse_args()
    ensure_env()
    if a.kld_files:
        measure_kld_files(a)
        return
    tmp = a.keep or tempfile.mkdtemp(prefix="ar-check-gguf-")
    os.makedirs(tmp, exist_ok=True)
    s260 = os.path.join(a.shared, "models", "stories260K")
    stories = os.path.join(a.shared, "data", "tinystories", "TinyStories-validation-head.txt")
    calib = calib_stream(a.bin, s260, stories, 16, 128, os.path.join(tmp, "s260-calib.ars"))
    files = [make_gguf(a.bin, s260, m, os.path.join(tmp, f"stories260K-{m}.gguf")) for m in ("f32", "q8_0", "q4_0", "q4_k_m")]
    files.append(make_gguf(a.bin, s260, "q4_k_m", os.path.join(tmp, "stories260K-q4_k_m-imatrix.gguf"), calib))
    lib = our_dequantizer(tmp)
    for f in files:
        check_dequant(lib, f)
    for f in files:
        llm = load_llama(f)
        check_greedy(llm, f, a.bin, "Once upon a time", 48)
        check_ppl(llm, f, a.bin, stories, 256, 20)
        del llm
    if a.kld:
        run_kld(a, tmp, lib)
    print(f"check_gguf: {sum(results)} passed, {len(results) - sum(results)} failed")
    sys.exit(0 if all(results) else 1)


def measure_kld_files(a):
    heldout = os.path.join(a.shared, "models", "tiny-llama", "heldout.txt")
    res, count, nchunk = kld(a.kld_files[0], a.kld_files[1:], heldout, a.chunks)
    print(f"KLD vs {a.kld_files[0]} over {nchunk} chunks, {count} positions")
    for path, (k, top) in zip(a.kld_files[1:], res):
        print(f"  {path}: mean KLD {k:.6f}  same top {top:.2f}%")


def run_kld(a, tmp, lib):
    tl = os.path.join(a.shared, "models", "tiny-llama")
    corpus = os.path.join(tmp, "corpus-1MB.txt")
    raw = subprocess.run(["zstd", "-dc", os.path.join(a.shared, "data", "corpus", "gutenberg_en_prose.txt.zst")],
                         check=True, capture_output=True).stdout[:1000000]
    with open(corpus, "wb") as f:
        f.write(raw)
    calib = calib_stream(a.bin, tl, corpus, 488, 512, os.path.join(tmp, "tl-calib.ars"))
    f32 = make_gguf(a.bin, tl, "f32", os.path.join(tmp, "tiny-llama-f32.gguf"))
    rtn = make_gguf(a.bin, tl, "q4_k_m", os.path.join(tmp, "tiny-llama-q4_k_m.gguf"))
    imx = make_gguf(a.bin, tl, "q4_k_m", os.path.join(tmp, "tiny-llama-q4_k_m-imatrix.gguf"), calib)
    for f in (f32, rtn, imx):
        check_dequant(lib, f)
    res, count, nchunk = kld(f32, [rtn, imx], os.path.join(tl, "heldout.txt"), a.chunks)
    print(f"KLD over {nchunk} chunks, {count} positions (stock llama-quantize Q4_K_M: "
          f"{STOCK_Q4_K_M_PLAIN_KLD} plain, {STOCK_Q4_K_M_IMATRIX_KLD} with imatrix)")
    (k_rtn, t_rtn), (k_imx, t_imx) = res
    print(f"  Q4_K_M RTN            mean KLD {k_rtn:.6f}  same top {t_rtn:.2f}%")
    print(f"  Q4_K_M imatrix (ours) mean KLD {k_imx:.6f}  same top {t_imx:.2f}%")
    if a.chunks <= 0:
        check(abs(k_rtn / STOCK_Q4_K_M_PLAIN_KLD - 1) < 0.05, "RTN Q4_K_M KLD matches stock llama-quantize's within 5%")
        check(k_imx <= STOCK_Q4_K_M_IMATRIX_KLD, "imatrix Q4_K_M KLD no worse than stock llama-quantize --imatrix")


if __name__ == "__main__":
    main()
