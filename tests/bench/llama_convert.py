#!/usr/bin/env python3
"""Runs llama.cpp's convert_hf_to_gguf.py on models with a home-made GPT-2 style tokenizer.

usage: python llama_convert.py LLAMA_SRC [convert_hf_to_gguf.py arguments...]

Why: the converter names a BPE tokenizer's pre-tokenizer by hashing how the
tokenizer splits a fixed test string, and stops on a hash it does not list.
Our models (tiny-llama, the Qwen3 of train_small_qwen3.py) use a vocabulary
trained for this project, so no hash matches, although their pre-tokenizer is
exactly GPT-2's (a byte-level BPE whose tokenizer.json pre_tokenizer is
ByteLevel with use_regex true and no prefix space), which llama.cpp knows as
"gpt-2". When the lookup fails and tokenizer.json says so, this names
"gpt-2" (as the stock reference files in shared/ were made); any other
unknown tokenizer still fails as before. Everything else is the converter's
own code, run unchanged from LLAMA_SRC with the gguf package of that tree.
"""
import json
import os
import runpy
import sys


def gpt2_byte_level(model_dir):
    """True when model_dir/tokenizer.json is a BPE with GPT-2's byte-level pre-tokenizer."""
    try:
        with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
            tok = json.load(f)
    except (OSError, ValueError):
        return False
    pre = tok.get("pre_tokenizer") or {}
    return (tok.get("model", {}).get("type") == "BPE" and pre.get("type") == "ByteLevel"
            and pre.get("use_regex", True) and not pre.get("add_prefix_space", False))


def main():
    if len(sys.argv) < 2 or not os.path.isfile(os.path.join(sys.argv[1], "convert_hf_to_gguf.py")):
        sys.exit("usage: llama_convert.py LLAMA_SRC [convert_hf_to_gguf.py arguments...]")
    src = os.path.abspath(sys.argv[1])
    script = os.path.join(src, "convert_hf_to_gguf.py")
    sys.argv = [script] + sys.argv[2:]
    sys.path[0:0] = [src, os.path.join(src, "gguf-py")]

    from conversion import base

    by_hash = base.TextModel.get_vocab_base_pre

    def vocab_base_pre(self, tokenizer):
        try:
            return by_hash(self, tokenizer)
        except NotImplementedError:
            if not gpt2_byte_level(self.dir_model):
                raise
            print("llama_convert.py: unlisted tokenizer hash; tokenizer.json has GPT-2's byte-level "
                  "pre-tokenizer: writing tokenizer.ggml.pre = gpt-2", file=sys.stderr)
            return "gpt-2"

    base.TextModel.get_vocab_base_pre = vocab_base_pre
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
