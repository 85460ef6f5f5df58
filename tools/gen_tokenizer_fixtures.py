#!/usr/bin/env python3
"""Generate the tokenizer fixtures under tests/fixtures/tokenizer/.

Run from the repository root with the project venv:
    build/venv/bin/python tools/gen_tokenizer_fixtures.py [SHARED_DIR]

It does two things:
 1. trains small but real BPE tokenizers with the Hugging Face `tokenizers`
    library in the configurations of popular model families that we have no
    files for (Qwen2, Llama 3, Llama 2 / Mistral Metaspace), and saves them as
    tests/fixtures/tokenizer/<name>.tokenizer.json;
 2. for those and for the two real tokenizers in SHARED/models, records the ids
    Hugging Face gives for a list of tricky strings and a few hundred real text
    lines, plus the decoded text, in tests/fixtures/tokenizer/<name>.cases.json.

The C tests then need no Python. Invalid UTF-8 inputs are recorded as the ids of
the text decoded with errors="replace" (each maximal invalid subsequence becomes
U+FFFD), which is the behaviour ar_tokenizer_encode documents.
"""
import json
import os
import subprocess
import sys

import tokenizers
from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models,
                        normalizers, pre_tokenizers, processors, trainers)

SHARED = sys.argv[1] if len(sys.argv) > 1 else os.path.abspath("../shared")
OUT = "tests/fixtures/tokenizer"
SCRIPT = "tools/gen_tokenizer_fixtures.py"

QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
            r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
             r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Strings that stress every stage: whitespace runs, digits, punctuation,
# contractions, NFC, CJK, emoji, special tokens inside text, invalid UTF-8.
TRICKY = [
    "", " ", "  ", "   leading spaces", "trailing spaces   ", "multiple   inner    spaces",
    "\t", "tab\tseparated\tvalues", "\n", "line one\nline two", "windows\r\nline\r\nends",
    "\n\n\nthree newlines", " \n \n", "mixed \t\n \r\n whitespace  \n",
    "123", "1234567890123456789012345", "3.14159 and 2,718,281", "Year 2024: 12% of $5.99",
    "!!!???...", "Hello, world!!! (yes) [no] {maybe} <tag> --- ***", "a-b_c/d\\e|f~g`h",
    "I'm you're he's we've they'll I'd can't WON'T It'S", "don't\u2019t curly\u2019s quotes \u201cquoted\u201d",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9", "cafe\u0301 nai\u0308ve re\u0301sume\u0301",
    "\u00c5ngstr\u00f6m vs A\u030angstro\u0308m", "Stra\u00dfe \u0130stanbul \u03a3\u03bf\u03c6\u03af\u03b1",
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u6211\u4eec\u5728\u5b66\u4e60\u3002", "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 mixed with English",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8", "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "emoji \U0001f600\U0001f680\U0001f44d\U0001f3fd!", "family \U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 and flag \U0001f1fa\U0001f1f8",
    "zero\u200bwidth\u200cjoiners\u200d", "nbsp\u00a0here and\u2003em space", "\u2581already\u2581has\u2581meta",
    "Once upon a time, there was a little girl named Lily.",
    "The quick brown fox jumps over the lazy dog. " * 40,
    "a" * 300, "ab" * 150 + " " + "xyz" * 80,
    "\u00ff\u00fe control \x01\x02\x7f chars",
]
# Raw byte strings (invalid UTF-8 and friends).
TRICKY_BYTES = [
    b"bad \xff byte", b"\xc3\x28 broken pair", b"trunc \xe2\x82", b"\xf0\x9f\x98 cut emoji",
    b"overlong \xc0\xaf and surrogate \xed\xa0\x80 end", b"\x80\x80\x80",
]


def special_strings(names):
    """Strings with the tokenizer's added tokens embedded in text."""
    out = []
    for n in names:
        out += [n, f"{n}Hello", f"before {n} after", f"x{n}{n}y", f" {n} ", f"{n}\n{n}"]
    if len(names) > 1:
        out.append(" ".join(names) + " tail")
    return out


def read_lines(path, n, skip, min_len=1):
    with open(path, encoding="utf-8") as f:
        lines = [l.rstrip("\n") for l in f]
    lines = [l for l in lines if len(l.strip()) >= min_len]
    return lines[::skip][:n]


def gutenberg(nbytes):
    z = os.path.join(SHARED, "data/corpus/gutenberg_en_prose.txt.zst")
    raw = subprocess.run(f"zstd -dc '{z}' | head -c {nbytes}", shell=True,
                         capture_output=True, check=True).stdout
    return raw.decode("utf-8", errors="ignore")


def real_lines():
    wiki = read_lines(os.path.join(SHARED, "data/wikitext-2-raw/wiki.test.raw"), 120, 23, 2)
    stories = read_lines(os.path.join(SHARED, "data/tinystories/TinyStories-validation-head.txt"), 60, 53, 2)
    gut = [l for l in gutenberg(400000).split("\n") if l.strip()][::53][:70]
    return wiki + stories + gut


def training_text():
    text = gutenberg(1500000)
    extra = "\n".join(TRICKY) * 20
    with open(os.path.join(SHARED, "data/wikitext-2-raw/wiki.test.raw"), encoding="utf-8") as f:
        text += f.read()[:300000]
    return [text[i:i + 2000] for i in range(0, len(text), 2000)] + [extra]


def train(tok, vocab_size, special, alphabet=None):
    kw = dict(vocab_size=vocab_size, special_tokens=special, show_progress=False)
    if alphabet is not None:
        kw["initial_alphabet"] = alphabet
    tok.train_from_iterator(training_text(), trainers.BpeTrainer(**kw))
    return tok


def qwen2():
    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    train(tok, 1500, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], pre_tokenizers.ByteLevel.alphabet())
    tok.add_tokens([AddedToken("<think>", normalized=False, special=False)])
    return tok, ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>"]


def llama3():
    tok = Tokenizer(models.BPE(byte_fallback=False, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=True)])
    tok.decoder = decoders.ByteLevel()
    train(tok, 1500, ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"], pre_tokenizers.ByteLevel.alphabet())
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    data = json.loads(tok.to_str())
    data["model"]["ignore_merges"] = True
    return Tokenizer.from_str(json.dumps(data)), ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]


def metaspace(scheme, split, lowercase):
    """SentencePiece-style BPE with byte fallback, as converted Llama-2/Mistral files."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    train(tok, 1200, ["<unk>", "<s>", "</s>"] + byte_tokens)
    data = json.loads(tok.to_str())
    # Byte tokens are plain vocabulary entries in real files, not added tokens.
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in byte_tokens]
    data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581",
                             "prepend_scheme": scheme, "split": split}
    data["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]} if scheme == "first" else \
        {"type": "Sequence", "decoders": [{"type": "ByteFallback"},
                                          {"type": "Metaspace", "replacement": "\u2581",
                                           "prepend_scheme": scheme, "split": split}]}
    tok = Tokenizer.from_str(json.dumps(data))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=False, special=True)])
    tok.add_tokens([AddedToken("[SEP]", rstrip=True, special=False, normalized=False),
                    AddedToken("word", single_word=True, special=False, normalized=True)])
    return tok, ["<s>", "</s>", "<unk>", "<mask>", "[SEP]", "word"]


def misc(variant):
    """Less common stages: unk without byte fallback, Digits, Whitespace(Split),
    string Split, every split behaviour, Strip/Lowercase/Replace normalizers,
    Roberta/Bert post-processors and no decoder at all."""
    a = variant == "a"
    tok = Tokenizer(models.BPE(unk_token="[UNK]", fuse_unk=a))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Lowercase()] if a else
        [normalizers.NFD(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("-", behavior="merged_with_previous"),
         pre_tokenizers.Split(Regex(r"[.,;:!?]"), behavior="merged_with_next"),
         pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.WhitespaceSplit()] if a else
        [pre_tokenizers.Split(Regex(r"[aeiou]+"), behavior="isolated", invert=True),
         pre_tokenizers.Split(Regex(r"'"), behavior="contiguous"),
         pre_tokenizers.Digits(individual_digits=False), pre_tokenizers.Whitespace()])
    tok.add_special_tokens(["[UNK]", "<s>", "</s>"])
    tok.train_from_iterator(training_text(), trainers.BpeTrainer(
        vocab_size=800, special_tokens=["[UNK]", "<s>", "</s>"], limit_alphabet=70, show_progress=False))
    cls, sep = ("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))
    tok.post_processor = processors.RobertaProcessing(sep, cls) if a else processors.BertProcessing(sep, cls)
    return tok, ["<s>", "</s>", "[UNK]"]


def record(name, tok, tok_path, specials, extra_lines):
    cases = []
    texts = [t.encode("utf-8") for t in TRICKY + special_strings(specials) + extra_lines] + TRICKY_BYTES
    for raw in texts:
        text = raw.decode("utf-8", errors="replace")
        ids = tok.encode(text, add_special_tokens=True).ids
        case = {"text": text} if text.encode("utf-8") == raw else {"hex": raw.hex()}
        case["ids"] = ids
        # "decoded" is left out when it equals a valid UTF-8 text, "decoded_skip" when it equals "decoded".
        decoded = tok.decode(ids, skip_special_tokens=False)
        skipped = tok.decode(ids, skip_special_tokens=True)
        if decoded != text or "text" not in case:
            case["decoded"] = decoded
        if skipped != decoded:
            case["decoded_skip"] = skipped
        cases.append(case)
    doc = {"provenance": f"{SCRIPT} with tokenizers {tokenizers.__version__}; "
                         "encode(text, add_special_tokens=True), decode(ids, skip_special_tokens=False/True); "
                         "input = text, or bytes.fromhex(hex).decode('utf-8', errors='replace'); "
                         "decoded defaults to the text, decoded_skip to decoded",
           "tokenizer": tok_path, "cases": cases}
    with open(os.path.join(OUT, f"{name}.cases.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(name, len(cases), "cases")


def main():
    os.makedirs(OUT, exist_ok=True)
    lines = real_lines()
    for model in ("stories260K", "tiny-llama"):
        tok = Tokenizer.from_file(os.path.join(SHARED, "models", model, "tokenizer.json"))
        specials = [t.content for t in tok.get_added_tokens_decoder().values()]
        record(model, tok, f"$AR_SHARED/models/{model}/tokenizer.json", specials, lines)
    builds = {"qwen2": qwen2, "llama3": llama3,
              "metaspace_first": lambda: metaspace("first", False, False),
              "metaspace_always": lambda: metaspace("always", True, True),
              "misc_a": lambda: misc("a"), "misc_b": lambda: misc("b")}
    for name, build in builds.items():
        tok, specials = build()
        path = os.path.join(OUT, f"{name}.tokenizer.json")
        tok.save(path, pretty=False)
        tok = Tokenizer.from_file(path)
        # The misc tokenizers check rarer stages; a quarter of the lines will do.
        record(name, tok, path, specials, lines[::4] if name.startswith("misc") else lines)


if __name__ == "__main__":
    main()
