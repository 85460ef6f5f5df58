#!/bin/sh
# FP8 checkpoints with broken scales, for machines without torch
# (fp8_source.test.sh needs torch to write its copies and skips otherwise):
# stories260K copies written with the Python standard library whose layer-0
# q_proj is stored F8_E4M3 (every byte 0x38 = 1.0; only the scales matter
# here), in the DeepSeek layout (quant_method fp8, 32 x 32 blocks,
# weight_scale_inv) and the compressed-tensors one (float-quantized,
# per-channel weight_scale):
#   - the scale missing,
#   - the scale of the wrong shape,
# each refused by ar-eval, ar-calib, ar-tune and ar-pack (the source given
# with --model) with one line naming the file and the tensor, exit 1, and no
# output left behind. Control: the copy with a right scale is accepted.
. "$(dirname "$0")/lib.sh"
command -v python3 > /dev/null || { echo "skip: needs python3"; exit 0; }
"$BIN/ar-tune" --quiet --model "$M" --iters 0 --disable_opt_rtn -o "$T/good.ars"

# mk DIR LAYOUT BREAK: LAYOUT fp8 | ct; BREAK none | missing | shape
mk() {
  python3 - "$M" "$1" "$2" "$3" <<'EOF'
import json, os, shutil, struct, sys
src, out, layout, brk = sys.argv[1:]
os.makedirs(out)
with open(os.path.join(src, "model.safetensors"), "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]; head = json.loads(f.read(n)); data = f.read()
t = {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in head.items() if k != "__metadata__"}
q = "model.layers.0.self_attn.q_proj.weight"
rows, cols = t[q][1]
t[q] = ("F8_E4M3", [rows, cols], b"\x38" * (rows * cols))
if layout == "fp8":
    sname, shape = q + "_scale_inv", [(rows + 31) // 32, (cols + 31) // 32]
    qc = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [32, 32]}
else:
    sname, shape = q[:-len("weight")] + "weight_scale", [rows, 1]
    qc = {"quant_method": "compressed-tensors", "format": "float-quantized",
          "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float",
                                        "symmetric": True, "strategy": "channel", "dynamic": False}}}}
if brk == "shape":
    shape = shape[::-1] if shape[0] != shape[1] else [shape[0] + 1, shape[1]]
if brk != "missing":
    n = shape[0] * shape[1]
    t[sname] = ("F32", shape, struct.pack("<%df" % n, *([0.01] * n)))
h, off, blobs = {}, 0, []
for k, (dt, sh, b) in t.items():
    h[k] = {"dtype": dt, "shape": sh, "data_offsets": [off, off + len(b)]}; off += len(b); blobs.append(b)
hb = json.dumps(h).encode(); hb += b" " * (-len(hb) % 8)
open(os.path.join(out, "model.safetensors"), "wb").write(struct.pack("<Q", len(hb)) + hb + b"".join(blobs))
cfg = json.load(open(os.path.join(src, "config.json"))); cfg["quantization_config"] = qc
json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
for fn in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(src, fn), os.path.join(out, fn))
EOF
}

check_bad() { # DIR WANT
  for tool in eval calib tune pack; do
    rc=0
    case $tool in
      eval) "$BIN/ar-eval" --model "$1" --text "$STORIES_TEXT" --windows 1 --seqlen 32 > "$T/out" 2> "$T/err" || rc=$? ;;
      calib) "$BIN/ar-calib" --model "$1" --dataset "$STORIES_TEXT" --nsamples 1 --seqlen 32 -o "$T/o.ars" 2> "$T/err" || rc=$? ;;
      tune) "$BIN/ar-tune" --model "$1" --iters 0 -o "$T/o.ars" 2> "$T/err" || rc=$? ;;
      pack) "$BIN/ar-pack" -i "$T/good.ars" --model "$1" --format auto_round -o "$T/o.dir" 2> "$T/err" || rc=$? ;;
    esac
    [ "$rc" = 1 ] || fail "ar-$tool on $1: exit $rc"
    [ "$(wc -l < "$T/err")" = 1 ] && grep -qF "$1/model.safetensors: $2" "$T/err" || fail "ar-$tool: $(cat "$T/err")"
    [ ! -e "$T/o.ars" ] && [ ! -e "$T/o.dir" ] || fail "ar-$tool left output behind"
  done
  echo "ok   $(head -c 160 "$T/err")"
}

Q=model.layers.0.self_attn.q_proj
for layout in fp8 ct; do
  mk "$T/$layout-none" $layout none; mk "$T/$layout-missing" $layout missing; mk "$T/$layout-shape" $layout shape
  # control: the same copy with its scale evaluates
  "$BIN/ar-eval" --quiet --model "$T/$layout-none" --text "$STORIES_TEXT" --windows 1 --seqlen 32 > /dev/null ||
    fail "$layout copy with a right scale refused"
done
check_bad "$T/fp8-missing" "FP8 tensor '$Q.weight' has no scale '$Q.weight_scale_inv'"
check_bad "$T/fp8-shape" "scale '$Q.weight_scale_inv' has shape [3, 2], expected [2, 2] for the 32 x 32 blocks"
check_bad "$T/ct-missing" "FP8 tensor '$Q.weight' has no scale '$Q.weight_scale'"
check_bad "$T/ct-shape" "scale '$Q.weight_scale' has shape [1, 64]"
echo "fp8_bad_input: all checks passed"
