#!/usr/bin/env python3
"""KL divergence of MoE Q4_K_M files against their F32 GGUF, with
tests/clients/check_gguf.py's protocol (llama.cpp through the llama_cpp
binding; 512-token chunks, the second half of each scored, as
llama-perplexity --kl-divergence does): ar's files beside llama.cpp's own
quantizer run on the same F32 file (llama_model_quantize of the binding, i.e.
llama-quantize without an importance matrix: the binding cannot pass one, and
the llama-imatrix tool is not built here).

usage: gguf_moe_kld.py MODEL_DIR HELDOUT.txt CALIB.txt OUT_DIR [ITERS] [CHUNKS]

Writes OUT_DIR/{f32,stock,rtn,imatrix,signround}.gguf:
  f32        ar-tune --bits 16 | ar-pack gguf:f32 (the base)
  stock      llama.cpp's quantizer, Q4_K_M, from f32.gguf (no imatrix)
  rtn        ar-tune --scheme gguf:q4_k_m --iters 0, no data (should equal stock)
  imatrix    the same with calibration data (imatrix-weighted search, iters 0)
  signround  the same with --iters ITERS (default 50): SignRound over the frozen scales
Calibration: ar-calib 32 x 128 windows of CALIB.txt, seed 42.
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients"))
import check_gguf  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
BIN = os.environ.get("AR_BIN", os.path.join(ROOT, "bin"))


def run(cmd):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def ours(model, out, scheme, calib=None, iters=0):
    stream = out + ".ars"
    tune = [os.path.join(BIN, "ar-tune"), "--quiet", "--model", model, "--iters", str(iters), "-o", stream]
    tune += ["--bits", "16"] if scheme == "f32" else ["--scheme", "gguf:" + scheme]
    if calib:
        tune += ["-i", calib]
    run(tune)
    run([os.path.join(BIN, "ar-pack"), "--quiet", "-i", stream, "--format", "gguf:" + scheme, "-o", out])
    os.unlink(stream)


def stock(f32, out):
    import llama_cpp
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = 15   # LLAMA_FTYPE_MOSTLY_Q4_K_M
    p.nthread = 1
    rc = llama_cpp.llama_model_quantize(f32.encode(), out.encode(), p)
    if rc:
        sys.exit(f"llama_model_quantize failed: {rc}")


def main():
    model, heldout, calib_text, out = sys.argv[1:5]
    iters = int(sys.argv[5]) if len(sys.argv) > 5 else 50
    chunks = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    os.makedirs(out, exist_ok=True)
    f = {k: os.path.join(out, k + ".gguf") for k in ("f32", "stock", "rtn", "imatrix", "signround")}
    calib = os.path.join(out, "calib.ars")
    run([os.path.join(BIN, "ar-calib"), "--quiet", "--model", model, "--dataset", calib_text, "--nsamples", "32",
         "--seqlen", "128", "--seed", "42", "-o", calib])
    ours(model, f["f32"], "f32")
    stock(f["f32"], f["stock"])
    ours(model, f["rtn"], "q4_k_m")
    ours(model, f["imatrix"], "q4_k_m", calib)
    ours(model, f["signround"], "q4_k_m", calib, iters)
    names = ["stock", "rtn", "imatrix", "signround"]
    res, count, nchunk = check_gguf.kld(f["f32"], [f[k] for k in names], heldout, chunks)
    print(f"KLD vs {f['f32']} over {nchunk} chunks, {count} positions")
    for k, (d, top) in zip(names, res):
        print(f"  {k:10s} mean KLD {d:.6f}  same top {top:.2f}%")


main()
