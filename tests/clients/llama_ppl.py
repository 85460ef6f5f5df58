#!/usr/bin/env python3
"""Perplexity of a GGUF file by llama.cpp (the llama_cpp binding), with
ar-eval's protocol: the text tokenized as llama.cpp tokenizes it (BOS as the
file's tokenizer.ggml.add_bos_token says), non-overlapping windows of SEQLEN
tokens from token 0, each scored at positions 1..SEQLEN-1, at most WINDOWS of
them. Prints the perplexity. Exit 3 when llama_cpp is not importable.

usage: llama_ppl.py FILE.gguf TEXT SEQLEN WINDOWS
"""
import math
import os
import sys

try:
    import numpy as np
    from llama_cpp import Llama
except ImportError:
    sys.exit(3)


def main():
    path, text, seqlen, windows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    # no AMX repacking (SIGILL where the VM has not granted the tile state):
    # the plain CPU kernels compute the same model
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from check_gguf import no_extra_buffer_types
    no_extra_buffer_types()
    llm = Llama(model_path=path, n_ctx=seqlen, n_batch=seqlen, n_ubatch=seqlen, logits_all=True, verbose=False,
                n_threads=1, seed=0)
    add_bos = str(llm.metadata.get("tokenizer.ggml.add_bos_token", "false")).lower() == "true"
    with open(text, encoding="utf-8") as f:
        toks = llm.tokenize(f.read().encode(), add_bos=add_bos, special=False)
    nll, n = 0.0, 0
    for w in range(min(windows, len(toks) // seqlen)):
        ids = toks[w * seqlen:(w + 1) * seqlen]
        llm.reset()
        llm.eval(ids)
        x = np.array(llm.scores[:seqlen], dtype=np.float64)
        x -= x.max(axis=-1, keepdims=True)
        lp = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
        nll -= float(lp[np.arange(seqlen - 1), ids[1:]].sum())
        n += seqlen - 1
    print(f"{math.exp(nll / n):.6f}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
