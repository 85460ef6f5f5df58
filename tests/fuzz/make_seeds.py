#!/usr/bin/env python3
"""Writes the seed corpora tests/fuzz/corpus/<target>/ (small, valid or nearly
valid inputs that show libFuzzer each format's structure). Run from the
repository root with build/venv/bin/python; it needs numpy, safetensors, gguf,
tokenizers and the zstd command. Seeds are generated, never copied from the
shared models."""
import json, os, struct, subprocess, sys
import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def zstd(data):
    return subprocess.run(["zstd", "-q", "-c", "--check"], input=data, stdout=subprocess.PIPE, check=True).stdout


def safetensors_seeds():
    from safetensors.numpy import save
    r = np.random.default_rng(0)
    put("safetensors", "f32_f16_bf16.st", save({
        "model.embed_tokens.weight": r.standard_normal((4, 8)).astype(np.float32),
        "model.norm.weight": r.standard_normal(8).astype(np.float16),
        "scalar": np.array(1.5, dtype=np.float32)}, metadata={"format": "pt"}))
    put("safetensors", "ints.st", save({"q.qweight": r.integers(0, 9, (2, 4)).astype(np.int32),
                                        "codes": r.integers(0, 255, (3, 3)).astype(np.uint8),
                                        "empty": np.zeros((0, 3), dtype=np.float32)}))
    # BF16 has no numpy dtype: write the header by hand
    hdr = json.dumps({"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}}).encode()
    put("safetensors", "bf16.st", struct.pack("<Q", len(hdr)) + hdr + bytes(range(8)))
    put("safetensors", "index.json", json.dumps({"metadata": {"total_size": 12},
                                                 "weight_map": {"x": "a.safetensors", "y": "a.safetensors"}}))


def config_seeds():
    fx = os.path.join(os.path.dirname(ROOT), "..", "fixtures", "models")
    for m in sorted(os.listdir(fx)):
        with open(os.path.join(fx, m, "config.json")) as f:
            put("config", m + ".json", f.read())
    put("config", "llama3_rope.json", json.dumps({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 172,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
        "bos_token_id": [1, 2], "eos_token_id": None, "torch_dtype": "bfloat16"}))


def tokenizer_seeds():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3, "b": 4, "ab": 5, "\u2581": 6, "\u2581a": 7, "<0x41>": 8}
    t = Tokenizer(models.BPE(vocab, [("a", "b"), ("\u2581", "a")], unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    t.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    t.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
    t.add_special_tokens(["<s>", "</s>"])
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    put("tokenizer", "spm_like.json", t.to_str())
    bl = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(bl))}
    vocab["\u0120a"] = len(vocab)
    t = Tokenizer(models.BPE(vocab, [("\u0120", "a")]))
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False)])
    t.decoder = decoders.ByteLevel()
    t.normalizer = normalizers.NFC()
    t.add_special_tokens(["<|endoftext|>"])
    put("tokenizer", "byte_level.json", t.to_str())
    t = Tokenizer(models.BPE({"x": 0, "y": 1, "xy": 2, "[UNK]": 3}, [("x", "y")], unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    t.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(), normalizers.Strip()])
    t.post_processor = processors.BertProcessing(("[UNK]", 3), ("xy", 2))
    put("tokenizer", "metaspace.json", t.to_str())


def stream_body(records):
    out = b"ARSTREAM" + struct.pack("<I", 1)
    for r in records:
        if r[0] == "M":
            j = json.dumps(r[1]).encode()
            out += b"M" + struct.pack("<I", len(j)) + j
        else:
            _, name, dtype, shape, attrs, payload = r
            j = json.dumps(attrs).encode()
            out += b"T" + struct.pack("<I", len(name)) + name.encode() + bytes([dtype, len(shape)])
            out += b"".join(struct.pack("<q", d) for d in shape)
            out += struct.pack("<I", len(j)) + j + struct.pack("<Q", len(payload)) + payload
    return out + b"E"


def stream_seeds():
    # dtype codes from libar/base/dtype.h: 0 f32, 1 f16, 2 bf16, 3 i32, 4 i8, 5 u8 (see man ar-stream(5))
    body = stream_body([("M", {"tool": "seed", "nsamples": 2}),
                        ("T", "input_ids", 3, [2, 3], {}, bytes(range(24))),
                        ("T", "layers.0.scale", 0, [2], {"group_size": 2}, bytes(8)),
                        ("T", "scalar", 5, [], {}, b"\x07"),
                        ("T", "empty", 0, [0, 4], {}, b"")])
    put("stream", "body_mixed", b"\x01" + body)      # mode bit 0: compressed by the target, whole payload reads
    put("stream", "body_pieces", b"\x03" + body)     # piecewise reads
    put("stream", "body_skip", b"\x05" + body)       # payloads skipped
    put("stream", "zstd_frame", b"\x00" + zstd(body))
    put("stream", "body_truncated", b"\x01" + body[:40])


def gguf_seeds():
    import gguf
    d = os.path.join(ROOT, "gguf")
    os.makedirs(d, exist_ok=True)
    r = np.random.default_rng(1)
    for name, qtype in [("f32_f16", None), ("q8_0", gguf.GGMLQuantizationType.Q8_0),
                        ("q4_k", gguf.GGMLQuantizationType.Q4_K)]:
        path = os.path.join(d, name + ".gguf")
        w = gguf.GGUFWriter(path, "llama")
        w.add_uint32("llama.block_count", 1)
        w.add_float32("llama.rope.freq_base", 10000.0)
        w.add_bool("general.flag", True)
        w.add_string("general.name", "seed")
        w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "a", "b"])
        w.add_array("tokenizer.ggml.scores", [0.0, -1.0, -2.0, -3.0])
        w.add_array("tokenizer.ggml.token_type", [3, 3, 1, 1])
        if qtype is None:
            w.add_tensor("token_embd.weight", r.standard_normal((4, 32)).astype(np.float32))
            w.add_tensor("output_norm.weight", r.standard_normal(32).astype(np.float16))
        else:
            if qtype == gguf.GGMLQuantizationType.Q4_K:   # no Python quantizer: valid-size blocks of small bytes
                data = r.integers(0, 60, (2, 144)).astype(np.uint8)
            else:
                data = gguf.quantize(r.standard_normal((2, 32)).astype(np.float32), qtype)
            w.add_tensor("blk.0.attn_q.weight", data, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


def calib_seeds():
    text = "Once upon a time there was a little dog. The dog liked to run and play in the sun.\n" * 3
    lines = "".join(json.dumps({"text": t}) + "\n" for t in
                    ["Once upon a time there was a cat who sat on a mat all day long.",
                     "The sun was hot. The sky was blue and the birds sang songs.",
                     "tiny"])
    put("calib", "txt", bytes([0, 1, 8]) + text.encode())
    put("calib", "jsonl", bytes([1, 3, 6]) + lines.encode())
    put("calib", "txt_zst", bytes([2, 2, 10]) + zstd(text.encode()))
    put("calib", "jsonl_zst", bytes([3, 2, 4]) + lines.encode())
    put("calib", "jsonl_bad", bytes([1, 1, 4]) + b'{"text": "ok"}\n{"txt": 1}\n')


def layer_config_seeds():
    put("layer_config", "mixed.json", json.dumps({
        "model.layers.0.self_attn.q_proj": {"bits": 8, "group_size": 32, "sym": False},
        "mlp.experts.*": {"bits": 2, "data_type": "int"},
        "lm_head": "W8A16",
        "^model\\.layers\\.(1|2)\\.": {"scheme": "MXFP4", "act_bits": 16, "scale_dtype": "float32"},
        "down_proj$": {"bits": None, "super_bits": 6, "super_group_size": 16}}))
    put("layer_config", "bad_regex.json", json.dumps({"layers.[0-": {"bits": 4}}))
    put("layer_config", "empty.json", "{}")


if __name__ == "__main__":
    for f in [safetensors_seeds, config_seeds, tokenizer_seeds, stream_seeds, gguf_seeds, calib_seeds,
              layer_config_seeds]:
        f()
    print("seeds written under", ROOT, file=sys.stderr)
