#!/usr/bin/env python3
"""Copy the checked-in tiny Qwen3-MoE (tests/fixtures/moe/tiny/qwen3_moe,
mlp_only_layers [1]) as a model whose every layer is a mixture — the only
Qwen3-MoE llama.cpp's qwen3moe can load: layer 1's dense MLP is replaced by
layer 0's router and experts (bytes copied), mlp_only_layers emptied. Not a
transformers reference: gguf_moe.test.sh compares files made from it with
ar-eval on this very folder. Standard library only (the e2e suite has no torch).

usage: qwen3_moe_all.py SRC_DIR OUT_DIR
"""
import json
import os
import shutil
import struct
import sys


def main():
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(src):
        if f not in ("model.safetensors", "config.json", "reference.json"):
            shutil.copy(os.path.join(src, f), out)
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["mlp_only_layers"] = []
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
    with open(os.path.join(src, "model.safetensors"), "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        data = f.read()
    tensors = {}
    for name, info in head.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        tensors[name] = (info["dtype"], info["shape"], data[a:b])
    for name in [k for k in tensors if k.startswith("model.layers.1.mlp.")]:
        del tensors[name]
    for name in [k for k in tensors if k.startswith("model.layers.0.mlp.")]:
        tensors[name.replace("model.layers.0.", "model.layers.1.", 1)] = tensors[name]
    head, blob, off = {}, bytearray(), 0
    for name in sorted(tensors):
        dtype, shape, raw = tensors[name]
        head[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blob += raw
        off += len(raw)
    h = json.dumps(head).encode()
    h += b" " * (-len(h) % 8)
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + bytes(blob))


main()
