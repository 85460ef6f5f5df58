#!/usr/bin/env python3
"""Write a synthetic Llama-shaped model (random BF16 weights, sharded safetensors)
for memory and speed measurements at 1B/8B/70B shapes. Not a test fixture: the
weights are noise, so only times, memory and byte-identity mean anything.

  build/venv/bin/python tests/bench/make_synthetic_llama.py --shape 8b --layers 16 -o /tmp/llama8b
  build/venv/bin/python tests/bench/make_synthetic_llama.py --shape 70b --layers 2 -o /tmp/llama70b

Shapes (hidden / intermediate / heads / kv heads / head_dim):
  1b   2048 / 8192  / 32 / 8 / 64    (Llama-3.2-1B's dimensions; 16 layers)
  8b   4096 / 14336 / 32 / 8 / 128   (Llama-3-8B; 32 layers)
  70b  8192 / 28672 / 64 / 8 / 128   (Llama-3-70B; 80 layers)
--layers sets the depth (default: 16 for 1b and 8b, 2 for 70b). The vocabulary is
the tokenizer's: tokenizer.json and tokenizer_config.json are copied from
--tokenizer (default $AR_SHARED/models/tiny-llama, 4096 tokens), so
embed_tokens and lm_head are [4096, hidden] rather than Llama-3's 128256 rows;
--vocab N pads the matrices to N rows (ids >= the tokenizer's are never used).

Weights: normal(0, --std) (default 0.02, Llama's initializer_range), RMSNorm
weights 1, drawn per tensor from a seeded generator and written tensor by
tensor in chunks of 16M elements, so memory stays near 130 MB whatever the
model size. Shards hold up to --shard_gb GB each
(model-0000K-of-0000N.safetensors + model.safetensors.index.json, the layout of
Hugging Face's save_pretrained). Needs numpy only.
"""
import argparse, json, os, shutil, struct, sys

import numpy as np

SHAPES = {  # hidden, intermediate, heads, kv_heads, head_dim, default layers, rope theta
    '1b': (2048, 8192, 32, 8, 64, 16, 500000.0),
    '8b': (4096, 14336, 32, 8, 128, 16, 500000.0),
    '70b': (8192, 28672, 64, 8, 128, 2, 500000.0),
}


def tensor_list(h, inter, nh, nkv, hd, layers, vocab):
    """(name, shape) in save_pretrained's order."""
    t = [('model.embed_tokens.weight', (vocab, h))]
    for i in range(layers):
        p = f'model.layers.{i}.'
        t += [(p + 'input_layernorm.weight', (h,)),
              (p + 'self_attn.q_proj.weight', (nh * hd, h)),
              (p + 'self_attn.k_proj.weight', (nkv * hd, h)),
              (p + 'self_attn.v_proj.weight', (nkv * hd, h)),
              (p + 'self_attn.o_proj.weight', (h, nh * hd)),
              (p + 'post_attention_layernorm.weight', (h,)),
              (p + 'mlp.gate_proj.weight', (inter, h)),
              (p + 'mlp.up_proj.weight', (inter, h)),
              (p + 'mlp.down_proj.weight', (h, inter))]
    t += [('model.norm.weight', (h,)), ('lm_head.weight', (vocab, h))]
    return t


def bf16_normal(rng, shape, std, rows_per_chunk):
    """Yield the tensor's bf16 bytes in row chunks (round to nearest even)."""
    if len(shape) == 1:
        yield np.full(shape, 0x3F80, dtype='<u2').tobytes()  # 1.0
        return
    rows, cols = shape
    for r in range(0, rows, rows_per_chunk):
        n = min(rows_per_chunk, rows - r)
        x = rng.standard_normal((n, cols), dtype=np.float32)
        x *= std
        u = x.view(np.uint32)
        u += 0x7FFF + ((u >> 16) & 1)
        yield (u >> 16).astype('<u2').tobytes()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--shape', choices=sorted(SHAPES), default='8b')
    ap.add_argument('--layers', type=int)
    ap.add_argument('--vocab', type=int, help='rows of embed_tokens/lm_head (default: the tokenizer\'s)')
    ap.add_argument('--std', type=float, default=0.02)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--shard_gb', type=float, default=5.0)
    ap.add_argument('--tokenizer', default=os.path.join(os.environ.get('AR_SHARED', '/work/shared'),
                                                        'models', 'tiny-llama'))
    ap.add_argument('-o', '--output', required=True)
    a = ap.parse_args()

    h, inter, nh, nkv, hd, default_layers, theta = SHAPES[a.shape]
    layers = a.layers or default_layers
    with open(os.path.join(a.tokenizer, 'tokenizer.json')) as f:
        tok = json.load(f)
    tok_vocab = len(tok['model']['vocab']) + sum(1 for t in tok.get('added_tokens', [])
                                                  if t['content'] not in tok['model']['vocab'])
    vocab = a.vocab or tok_vocab
    if vocab < tok_vocab:
        sys.exit(f'--vocab {vocab} is below the tokenizer\'s {tok_vocab} tokens')
    with open(os.path.join(a.tokenizer, 'config.json')) as f:
        tcfg = json.load(f)

    os.makedirs(a.output, exist_ok=True)
    for name in ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json'):
        src = os.path.join(a.tokenizer, name)
        if os.path.exists(src):
            shutil.copy(src, a.output)
    config = {
        'architectures': ['LlamaForCausalLM'], 'model_type': 'llama',
        'hidden_size': h, 'intermediate_size': inter, 'num_hidden_layers': layers,
        'num_attention_heads': nh, 'num_key_value_heads': nkv, 'head_dim': hd,
        'vocab_size': vocab, 'hidden_act': 'silu', 'rms_norm_eps': 1e-5,
        'max_position_embeddings': 8192, 'attention_bias': False, 'attention_dropout': 0.0,
        'mlp_bias': False, 'pretraining_tp': 1, 'initializer_range': a.std,
        'rope_parameters': {'rope_theta': theta, 'rope_type': 'default'},
        'tie_word_embeddings': False, 'dtype': 'bfloat16', 'use_cache': True,
        'bos_token_id': tcfg.get('bos_token_id'), 'eos_token_id': tcfg.get('eos_token_id'),
        'pad_token_id': tcfg.get('pad_token_id'),
        'synthetic': {'generator': 'tests/bench/make_synthetic_llama.py', 'shape': a.shape,
                      'std': a.std, 'seed': a.seed},
    }
    with open(os.path.join(a.output, 'config.json'), 'w') as f:
        json.dump(config, f, indent=2)

    # Split into shards of at most shard_gb (a tensor never straddles two).
    tensors = tensor_list(h, inter, nh, nkv, hd, layers, vocab)
    limit = int(a.shard_gb * 1e9)
    shards, cur, cur_bytes = [], [], 0
    for name, shape in tensors:
        nb = 2 * int(np.prod(shape))
        if cur and cur_bytes + nb > limit:
            shards.append(cur); cur, cur_bytes = [], 0
        cur.append((name, shape, nb)); cur_bytes += nb
    shards.append(cur)

    rng = np.random.default_rng(a.seed)
    weight_map, total = {}, 0
    n = len(shards)
    for k, shard in enumerate(shards, 1):
        fname = f'model-{k:05d}-of-{n:05d}.safetensors' if n > 1 else 'model.safetensors'
        header, off = {'__metadata__': {'format': 'pt'}}, 0
        for name, shape, nb in shard:
            header[name] = {'dtype': 'BF16', 'shape': list(shape), 'data_offsets': [off, off + nb]}
            off += nb
            weight_map[name] = fname
        hj = json.dumps(header, separators=(',', ':')).encode()
        hj += b' ' * (-len(hj) % 8)
        path = os.path.join(a.output, fname)
        with open(path + '.part', 'wb') as f:
            f.write(struct.pack('<Q', len(hj)) + hj)
            for name, shape, nb in shard:
                rows_per_chunk = max(1, (1 << 24) // (shape[-1] if len(shape) == 2 else 1))
                for chunk in bf16_normal(rng, shape, a.std, rows_per_chunk):
                    f.write(chunk)
        os.replace(path + '.part', path)
        total += off
        print(f'{fname}: {len(shard)} tensors, {off / 1e9:.2f} GB', flush=True)
    if n > 1:
        with open(os.path.join(a.output, 'model.safetensors.index.json'), 'w') as f:
            json.dump({'metadata': {'total_size': total}, 'weight_map': weight_map}, f, indent=2)
    print(f'{a.output}: {a.shape}-shaped, {layers} layers, vocab {vocab}, {total / 1e9:.2f} GB BF16 in {n} shard(s)')


if __name__ == '__main__':
    main()
