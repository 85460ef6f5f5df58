#!/bin/sh
# The SignRound loss leaves out pad-token positions (AutoRound, spec §1.4):
# ar-calib records the tokenizer's pad id in META (tiny-llama: <|endoftext|> =
# 0; stories260K: none, null), ar-tune records the mask it used, and with pad
# tokens in the samples the iteration-0 loss of block 1 is smaller than on the
# same stream with the pad id hidden from META (masked rows add nothing).
set -eu
BIN=${AR_BIN:?AR_BIN not set}
SHARED=${AR_SHARED:?AR_SHARED not set}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
command -v zstd > /dev/null && command -v perl > /dev/null || { echo "skip: needs zstd and perl"; exit 0; }

# A text with a pad token after every sentence.
head -c 20000 "$SHARED/data/tinystories/TinyStories-validation-head.txt" | sed 's/\. /. <|endoftext|> /g' > "$T/pad.txt"
"$BIN/ar-calib" --model "$SHARED/models/tiny-llama" --dataset "$T/pad.txt" --nsamples 4 --seqlen 32 -o "$T/p.ars" --quiet
"$BIN/ar-dump" "$T/p.ars" | head -1 | grep -q '"pad_token_id":0' || fail "tiny-llama: META lacks pad_token_id 0"
"$BIN/ar-calib" --model "$SHARED/models/stories260K" --dataset "$T/pad.txt" --nsamples 2 --seqlen 32 -o "$T/s.ars" --quiet
"$BIN/ar-dump" "$T/s.ars" | head -1 | grep -q '"pad_token_id":null' || fail "stories260K: META lacks pad_token_id null"

# The same stream with the key renamed (same length, so the record stays valid).
zstd -dc "$T/p.ars" | perl -0777 -pe 's/"pad_token_id":0/"pad_token_xx":0/' | zstd -q --check -o "$T/q.ars"
loss0() {
  "$BIN/ar-tune" -i "$1" --iters 1 --batch_size 4 --threads 1 --progress -o "$2" 2>&1 |
    sed -n 's/.*block 1\/6 .*loss \([0-9.e-]*\) -> .*/\1/p'
}
masked=$(loss0 "$T/p.ars" "$T/p.out")
unmasked=$(loss0 "$T/q.ars" "$T/q.out")
[ -n "$masked" ] && [ -n "$unmasked" ] || fail "no loss on the progress lines"
awk -v m="$masked" -v u="$unmasked" 'BEGIN { exit !(m < u) }' ||
  fail "pad positions not masked: loss $masked with the pad id, $unmasked without"
"$BIN/ar-dump" "$T/p.out" | head -1 | grep -q '"loss_mask_pad_token_id":0' || fail "ar-tune META lacks the pad id"
"$BIN/ar-dump" "$T/q.out" | head -1 | grep -q 'loss_mask_pad_token_id' && fail "pad id recorded without one"
echo "loss_mask: masked $masked < unmasked $unmasked"
