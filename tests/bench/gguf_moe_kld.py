#!/usr/bin/env python3
"""KL divergence of MoE Q4_K_M files against their F32 GGUF: ar's files beside
llama.cpp's own quantizer, without and with llama-imatrix's importance matrix
on the same calibration text, all judged by llama.cpp.

usage: gguf_moe_kld.py MODEL_DIR HELDOUT.txt CALIB.txt OUT_DIR [ITERS] [CHUNKS]

Files already in OUT_DIR are kept (remove one to redo it). Writes OUT_DIR/{f32,stock,stock_imatrix,rtn,imatrix,signround}.gguf:
  f32            ar-tune --bits 16 | ar-pack gguf:f32 (the base; its tensors are
                 convert_hf_to_gguf.py --outtype f32's, byte for byte, docs/moe.md §11)
  stock          llama.cpp's quantizer, Q4_K_M, from f32.gguf, no imatrix
                 (llama_model_quantize of the binding, = llama-quantize)
  stock_imatrix  llama-imatrix on CALIB.txt (32 chunks of 128 tokens: ar-calib's
                 32 x 128), then llama-quantize --imatrix f32.gguf Q4_K_M
                 (tools of tests/bench/llama_tools.sh in $LLAMA_DIR/bin, default
                 build/llama.cpp/bin; skipped with a line when absent)
  rtn            ar-tune --scheme gguf:q4_k_m --iters 0, no data (compared with
                 stock tensor by tensor: names, types, shapes, bytes)
  imatrix        the same with calibration data (imatrix-weighted search, iters 0)
  signround      the same with --iters ITERS (default 50): SignRound over the frozen scales
Calibration: ar-calib 32 x 128 windows of CALIB.txt, seed 42.
KLD: llama-perplexity --kl-divergence (-c 512 -b 512, second half of each chunk
scored) when the tool is there, else tests/clients/check_gguf.py's binding
loop, the same protocol; CHUNKS (default all) limits the chunks.
"""
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients"))
import check_gguf  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
BIN = os.environ.get("AR_BIN", os.path.join(ROOT, "bin"))
LLAMA_BIN = os.path.join(os.environ.get("LLAMA_DIR", os.path.join(ROOT, "build", "llama.cpp")), "bin")


def run(cmd, **kw):
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def tool(name):
    p = os.path.join(LLAMA_BIN, name)
    return p if os.access(p, os.X_OK) else None


def ours(model, out, scheme, calib=None, iters=0):
    if os.path.exists(out):   # kept from an earlier run (remove it to redo)
        return
    stream = out + ".ars"
    tune = [os.path.join(BIN, "ar-tune"), "--quiet", "--model", model, "--iters", str(iters), "-o", stream]
    tune += ["--bits", "16"] if scheme == "f32" else ["--scheme", "gguf:" + scheme]
    if calib:
        tune += ["-i", calib]
    run(tune)
    run([os.path.join(BIN, "ar-pack"), "--quiet", "-i", stream, "--format", "gguf:" + scheme, "-o", out])
    os.unlink(stream)


def stock(f32, out):
    if os.path.exists(out):
        return
    import llama_cpp
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = 15   # LLAMA_FTYPE_MOSTLY_Q4_K_M
    p.nthread = 1
    rc = llama_cpp.llama_model_quantize(f32.encode(), out.encode(), p)
    if rc:
        sys.exit(f"llama_model_quantize failed: {rc}")


def stock_imatrix(f32, calib_text, out):
    imx, q = tool("llama-imatrix"), tool("llama-quantize")
    if not imx or not q:
        print(f"skip stock_imatrix: no llama-imatrix / llama-quantize in {LLAMA_BIN} (sh tests/bench/llama_tools.sh)")
        return False
    if os.path.exists(out):
        return True
    dat = out + ".imatrix.gguf"
    with open(out + ".log", "w") as log:
        run([imx, "-m", f32, "-f", calib_text, "-o", dat, "-c", "128", "-b", "128", "--chunks", "32", "-t", "1"],
            stdout=log, stderr=subprocess.STDOUT)
        run([q, "--imatrix", dat, f32, out, "Q4_K_M", "1"], stdout=log, stderr=subprocess.STDOUT)
    return True


def identical(a, b):
    """(same, total, differing names) over the tensors of two GGUF files."""
    from gguf import GGUFReader
    ta = {t.name: t for t in GGUFReader(a).tensors}
    tb = {t.name: t for t in GGUFReader(b).tensors}
    diff = [n for n in sorted(set(ta) | set(tb))
            if n not in ta or n not in tb or ta[n].tensor_type != tb[n].tensor_type
            or list(ta[n].shape) != list(tb[n].shape) or ta[n].data.tobytes() != tb[n].data.tobytes()]
    total = len(set(ta) | set(tb))
    return total - len(diff), total, diff


def kld_tool(f32, quants, heldout, chunks):
    """llama-perplexity --kl-divergence: [(mean KLD, same top %)], chunks."""
    ppl = tool("llama-perplexity")
    base = f32 + ".kld"
    lim = ["--chunks", str(chunks)] if chunks > 0 else []
    common = ["-f", heldout, "-c", "512", "-b", "512", "-t", "1"] + lim
    run([ppl, "-m", f32, "--kl-divergence-base", base] + common, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    res, n = [], 0
    for q in quants:
        # llama.cpp logs through a worker thread that can lose its last lines at
        # exit (seen here on 2 of 15 runs: the summary missing, exit 0): try again
        for _ in range(3):
            out = run([ppl, "-m", q, "--kl-divergence-base", base, "--kl-divergence"] + common, capture_output=True,
                      text=True)
            text = out.stdout + out.stderr
            d = re.search(r"Mean\s+KLD:\s+([-0-9.e]+)(?:\s+±\s+([0-9.e]+))?", text)
            top = re.search(r"Same top p:\s+([0-9.]+)", text)
            if d and top:
                break
        ch = re.search(r"(?:calculating perplexity|kl_divergence: computing) over (\d+) chunks", text)
        if not d or not top:
            sys.exit(f"llama-perplexity gave no KLD for {q}:\n{text[-2000:]}")
        res.append((float(d.group(1)), float(top.group(1)), float(d.group(2) or "nan")))
        n = int(ch.group(1)) if ch else n
    return res, n


def main():
    model, heldout, calib_text, out = sys.argv[1:5]
    iters = int(sys.argv[5]) if len(sys.argv) > 5 else 50
    chunks = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    os.makedirs(out, exist_ok=True)
    names = ["stock", "stock_imatrix", "rtn", "imatrix", "signround"]
    f = {k: os.path.join(out, k + ".gguf") for k in ["f32"] + names}
    calib = os.path.join(out, "calib.ars")
    if not os.path.exists(calib):
        run([os.path.join(BIN, "ar-calib"), "--quiet", "--model", model, "--dataset", calib_text, "--nsamples", "32",
             "--seqlen", "128", "--seed", "42", "-o", calib])
    ours(model, f["f32"], "f32")
    stock(f["f32"], f["stock"])
    if not stock_imatrix(f["f32"], calib_text, f["stock_imatrix"]):
        names.remove("stock_imatrix")
    ours(model, f["rtn"], "q4_k_m")
    ours(model, f["imatrix"], "q4_k_m", calib)
    ours(model, f["signround"], "q4_k_m", calib, iters)
    same, total, diff = identical(f["rtn"], f["stock"])
    print(f"rtn vs stock: {same} of {total} tensors identical" + (f"; differ: {', '.join(diff)}" if diff else ""))
    if tool("llama-perplexity"):
        res, nchunk = kld_tool(f["f32"], [f[k] for k in names], heldout, chunks)
        how = "llama-perplexity --kl-divergence"
    else:
        res, _, nchunk = check_gguf.kld(f["f32"], [f[k] for k in names], heldout, chunks)
        how = "the binding (check_gguf.kld)"
    print(f"KLD vs {f['f32']} over {nchunk} chunks of 512, by {how}")
    for k, r in zip(names, res):   # llama-perplexity also gives the KLD's ± (the binding's loop does not)
        pm = f" ± {r[2]:.6f}" if len(r) > 2 and r[2] == r[2] else ""
        print(f"  {k:14s} mean KLD {r[0]:.6f}{pm}  same top {r[1]:.2f}%")


main()
