#!/usr/bin/env python3
"""ar's no-data GGUF files of a MoE model beside llama.cpp's own
convert_hf_to_gguf.py + quantizer on the same Hugging Face folder, tensor by
tensor (names, types, shapes, bytes) and key by key (architecture keys; the
tokenizer and general.* keys are left out).

usage: gguf_moe_identity.py MODEL_DIR OUT_DIR [MIX...]   (MIX: f32 q8_0 q4_k_m, default all three)

llama.cpp's side: convert_hf_to_gguf.py --outtype f32 of LLAMA_DIR/src (default
build/llama.cpp/src: the llama-cpp-python sdist that tests/bench/llama_tools.sh
unpacks), then llama_model_quantize of the binding (llama-quantize, no imatrix)
for Q8_0 / Q4_K_M. Our tiny models' tokenizers (SentencePiece-style BPE with
byte fallback) are not in the converter's pre-tokenizer table, which its
DeepSeek and gpt-oss classes consult: they are converted here with its Llama
vocabulary writer (_set_vocab_llama_hf), which changes tokenizer keys only.
ar's side: ar-tune --iters 0 (--bits 16 for f32) | ar-pack --format gguf:MIX.
"""
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
BIN = os.environ.get("AR_BIN", os.path.join(ROOT, "bin"))
SRC = os.path.join(os.environ.get("LLAMA_DIR", os.path.join(ROOT, "build", "llama.cpp")), "src")
FTYPE = {"q8_0": 7, "q4_k_m": 15}

CONVERT = """
import os, sys, runpy
src = sys.argv[1]
script = os.path.join(src, "convert_hf_to_gguf.py")
sys.argv = [script] + sys.argv[2:]
sys.path[0:0] = [src, os.path.join(src, "gguf-py")]
from conversion import deepseek, gpt_oss
def vocab(self):
    self._set_vocab_llama_hf()
deepseek.DeepseekV2Model.set_vocab = vocab
gpt_oss.GptOssModel.set_vocab = vocab
runpy.run_path(script, run_name="__main__")
"""


def run(cmd, **kw):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def ours(model, mix, out):
    stream = out + ".ars"
    tune = [os.path.join(BIN, "ar-tune"), "--quiet", "--model", model, "--iters", "0", "-o", stream]
    tune += ["--bits", "16"] if mix == "f32" else ["--scheme", "gguf:" + mix]
    run(tune)
    run([os.path.join(BIN, "ar-pack"), "--quiet", "-i", stream, "--format", "gguf:" + mix, "-o", out])
    os.unlink(stream)


def theirs(model, mix, out, f32):
    if mix == "f32":
        with open(out + ".log", "w") as log:
            run([sys.executable, "-c", CONVERT, SRC, model, "--outtype", "f32", "--outfile", out], stdout=log,
                stderr=subprocess.STDOUT)
        return
    import llama_cpp
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = FTYPE[mix]
    p.nthread = 1
    if llama_cpp.llama_model_quantize(f32.encode(), out.encode(), p):
        sys.exit(f"llama_model_quantize failed on {f32}")


def keys(r):
    out = {}
    for f in r.fields.values():
        if f.name.startswith(("tokenizer.", "general.", "GGUF.", "ar.")):
            continue
        try:
            out[f.name] = f.contents()
        except Exception:   # noqa: BLE001 (a type this gguf-py cannot show)
            out[f.name] = None
    return out


def compare(a, b):
    from gguf import GGUFReader
    ra, rb = GGUFReader(a), GGUFReader(b)
    ta, tb = {t.name: t for t in ra.tensors}, {t.name: t for t in rb.tensors}
    diff = [n for n in sorted(set(ta) | set(tb))
            if n not in ta or n not in tb or ta[n].tensor_type != tb[n].tensor_type
            or list(ta[n].shape) != list(tb[n].shape) or ta[n].data.tobytes() != tb[n].data.tobytes()]
    total = len(set(ta) | set(tb))
    print(f"  tensors: {total - len(diff)} of {total} identical" + (f"; differ: {', '.join(diff)}" if diff else ""))
    ka, kb = keys(ra), keys(rb)
    for k in sorted(set(ka) | set(kb)):
        va, vb = ka.get(k, "<absent>"), kb.get(k, "<absent>")
        if isinstance(va, float) and isinstance(vb, float) and abs(va - vb) <= 1e-6 * max(1.0, abs(va)):
            continue
        if va != vb:
            print(f"  key {k}: ar {va}, llama.cpp {vb}")
    return not diff


def main():
    model, out = sys.argv[1], sys.argv[2]
    mixes = sys.argv[3:] or ["f32", "q8_0", "q4_k_m"]
    os.makedirs(out, exist_ok=True)
    f32 = os.path.join(out, "llama-f32.gguf")
    if "f32" not in mixes:
        theirs(model, "f32", f32, None)
    ok = True
    for mix in mixes:
        a, b = os.path.join(out, f"ar-{mix}.gguf"), os.path.join(out, f"llama-{mix}.gguf")
        ours(model, mix, a)
        theirs(model, mix, b, f32)
        print(f"{os.path.basename(os.path.normpath(model))} {mix}: ar vs llama.cpp")
        ok &= compare(a, b)
    sys.exit(0 if ok else 1)


main()
