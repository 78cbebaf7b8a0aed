#!/usr/bin/env python3
"""Byte-level BPE reference cases for tests/bytelevel.rs, made with the
`tokenizers` package (PyPI, Apache-2.0), the library transformers uses.

Vocabularies (tests/data/tokenizer/):
- ggml-vocab-starcoder.gguf (+ .inp/.out): PyPI llama-cpp-python==0.3.36
  sdist, vendor/llama.cpp/models/ (MIT); the real StarCoder2 vocabulary
  (49152 tokens, 48872 merges, 38 special tokens; pre-tokenizer
  "starcoder": Digits(individual) + ByteLevel, the SmolLM / StarCoder
  family's). Given with --starcoder PATH. Its reference here is a
  `tokenizers` BPE built from the GGUF's tokens and merges with that
  pre-tokenizer; the script first checks that this reference reproduces
  llama.cpp's .out (ids the real HF tokenizer gave the .inp texts).
- bytelevel_gpt2.tokenizer.json: a 2000-token vocabulary trained here by
  `tokenizers`' BpeTrainer with GPT-2's pre-tokenizer (ByteLevel with its
  regex), special token <|endoftext|>, non-special added token [[NOTE]].
- bytelevel_llama3.tokenizer.json: the same with Llama 3's pre-tokenizer
  (Split on Llama 3's regex, Isolated, then ByteLevel without regex),
  ignore_merges true as Llama 3 sets it, and Llama 3's special tokens.

Cases (bytelevel_cases.json): >= 300 texts (prose from the corpora, many
scripts, emoji with ZWJ and flags, digits, whitespace runs, code, special
tokens inside text, contractions in any case, control characters,
combining marks), and for each vocabulary: `tokenizers`' ids
(`encode(text, add_special_tokens=False)`, which cuts added tokens out of
the text), the decode of those ids with and without skipping special
tokens, and the decodes of 100 random id sequences (bytes cut mid
character, lossy UTF-8).

Run: /work/pyref/venv/bin/python tools/scripts/make_bytelevel_cases.py --starcoder PATH/ggml-vocab-starcoder.gguf
"""

import argparse
import json
import os
import random
import shutil

import gguf
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers, AddedToken

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "tests", "data")
OUT = os.path.join(DATA, "tokenizer")
LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

MULTILINGUAL = [
    "北京是中华人民共和国的首都，也是全国的政治和文化中心。", "東京は日本の首都です。ひらがなとカタカナ、そして漢字。",
    "서울은 대한민국의 수도입니다.", "Москва — столица России, крупнейший город страны.", "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.",
    "القاهرة هي عاصمة مصر وأكبر مدنها.", "नई दिल्ली भारत की राजधानी है।", "ירושלים היא בירת ישראל.", "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย",
    "Hà Nội là thủ đô của Việt Nam.", "Zürich, Köln und München liegen in Mitteleuropa; Straße, Maß, Fuß.", "İstanbul Türkiye'nin en kalabalık şehridir.",
    "Ṱ̺̺̕o͞ ̷i̲̬͇̪͙n̝̗͕v̟̜̘̦͟o̶̙̰̠kè͚̮̺̪̹̱̤ ̖t̝͕̳̣̻̪͞h̼͓̲̦̳̘̲e͇̣̰̦̬͎ ̢̼̻̱̘h͚͎͙̜̣̲ͅi̦̲̣̰̤v̻͍e̺̭̳̪̰-m̢iͅn̖̺̞̲̯̰d̵̼̟͙̩̼̘̳",
    "🦙 llamas 🦙🦙 and 👨‍👩‍👧‍👦 families, flags 🇫🇷🇯🇵🏳️‍🌈, skin tones 👋🏽👋🏿, keycaps 1️⃣#️⃣",
    "Ελληνικά, Русский, 中文, 日本語, 한국어, العربية, עברית, हिन्दी mixed in one line.",
]

CODE = [
    "def f(x):\n    return x ** 2  # square\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }\n",
    "fn main() {\n\tprintln!(\"{}\", 1 + 2);\n}\n", "SELECT name, COUNT(*) FROM t WHERE x >= 10 GROUP BY name;",
    "<html><body class=\"x\">&nbsp;&amp;</body></html>", "x = {'a': [1, 2, 3], \"b\": None}\nprint(x['a'][-1])",
    "    indented\n\t\ttabs\n  \t mixed  \n", "https://example.com/path?q=1&r=2#frag", "C:\\Users\\name\\file.txt",
    "#include <stdio.h>\nint main(void){return 0;}", "$ cargo test --release -- --nocapture 2>&1 | tail -n 20",
]

SPECIAL_USES = [
    "Hello<|endoftext|>world", "<|endoftext|><|endoftext|>", "text <|endoftext|> more text", "<|endoftext",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>", "[[NOTE]] a note [[NOTE]][[NOTE]]",
    "<fim_prefix>def f():<fim_suffix>\n<fim_middle>", "<|eot_id|>", "a<|eot_id|>b", "<issue_start>bug<issue_comment>fix",
]


def texts(seed=0):
    rnd = random.Random(seed)
    out = []
    for name in ["botchan/botchan.txt", "shakespeare/sonnets_gut.txt", "janeausten/persuasion.txt"]:
        lines = [l for l in open(os.path.join(DATA, "corpora", name), encoding="utf-8").read().splitlines() if l.strip()]
        for _ in range(40):
            i = rnd.randrange(len(lines) - 3)
            out.append("\n".join(lines[i:i + rnd.randint(1, 3)]))
    out += MULTILINGUAL + CODE + SPECIAL_USES
    # digits
    for _ in range(25):
        n = rnd.randint(1, 30)
        out.append(rnd.choice(["", "x", "Total: ", "v", "+"]) + "".join(rnd.choice("0123456789") for _ in range(n)) + rnd.choice(["", ".5", " apples", "%", "\n"]))
    out += ["3.14159", "1,000,000", "2024-05-20T12:34:56Z", "+1 (555) 123-4567", "٣٤٥ ١٢", "१२३", "Ⅻ ½ ² ³ ⁴"]
    # whitespace runs
    ws = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\u00a0", "\u3000", "\u2009", "\v", "\f"]
    for _ in range(30):
        out.append("".join(rnd.choice(ws) + rnd.choice(["a", "word", "X", "", "1", "!", "é"]) for _ in range(rnd.randint(1, 6))))
    out += ["", " ", "  ", "\n", "\n\n\n", "\t\t", " leading", "trailing ", "  both  ", "a  b   c    d"]
    # contractions in any case
    for w in ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]:
        out.append(f"it{w} He{w.upper()} x{w}y {w}")
    out += ["I'm", "DON'T", "we'Ll", "'''", "rock 'n' roll", "l'homme", "’s curly"]
    # random code points from many blocks
    blocks = [(0x20, 0x7e), (0xa0, 0x24f), (0x370, 0x3ff), (0x400, 0x4ff), (0x590, 0x6ff), (0x900, 0x97f), (0x3040, 0x30ff), (0x4e00, 0x4fff),
              (0xac00, 0xad00), (0x1f300, 0x1f64f), (0x1f900, 0x1f9ff), (0x300, 0x36f), (0x2000, 0x206f), (0x0, 0x1f)]
    for _ in range(60):
        s = []
        for _ in range(rnd.randint(1, 25)):
            a, b = rnd.choice(blocks)
            s.append(chr(rnd.randint(a, b)))
        out.append("".join(s))
    # llama.cpp's tokenizer test texts
    inp = open(os.path.join(OUT, "ggml-vocab-llama-spm.gguf.inp"), encoding="utf-8").read().split("\n__ggml_vocab_test__\n")
    out += inp
    return out


def gguf_vocab(path):
    r = gguf.GGUFReader(path)
    f = r.fields
    tokens = f["tokenizer.ggml.tokens"].contents()
    types = f["tokenizer.ggml.token_type"].contents()
    merges = f["tokenizer.ggml.merges"].contents()
    return tokens, types, merges


def tokenizer_from_gguf(path, pre):
    tokens, types, merges = gguf_vocab(path)
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab, [tuple(m.split(" ", 1)) for m in merges], ignore_merges=False))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens([AddedToken(t, special=(ty == 3), normalized=False) for t, ty in zip(tokens, types) if ty in (3, 4)])
    return tok


def train(name, pre, specials, added, ignore_merges, corpus):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=2000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=specials, show_progress=False)
    tok.train_from_iterator(corpus, tr)
    tok.add_tokens([AddedToken(a, special=False, normalized=False) for a in added])
    j = json.loads(tok.to_str())
    j["model"]["ignore_merges"] = ignore_merges
    path = os.path.join(OUT, f"bytelevel_{name}.tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False)
    return Tokenizer.from_file(path), path


def cases(tok, ts, rnd):
    n = tok.get_vocab_size(with_added_tokens=True)
    ids = [tok.encode(t, add_special_tokens=False).ids for t in ts]
    rand = [[rnd.randrange(n) for _ in range(rnd.randint(1, 12))] for _ in range(100)]
    return {
        "ids": ids,
        "decode": [tok.decode(i, skip_special_tokens=False) for i in ids],
        "decode_skip": [tok.decode(i, skip_special_tokens=True) for i in ids],
        "random_ids": rand,
        "random_decode": [tok.decode(i, skip_special_tokens=False) for i in rand],
        "random_decode_skip": [tok.decode(i, skip_special_tokens=True) for i in rand],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--starcoder", required=True, help="ggml-vocab-starcoder.gguf from the llama-cpp-python sdist")
    a = ap.parse_args()
    rnd = random.Random(1)
    ts = texts()
    assert len(ts) >= 300, len(ts)
    out = {"texts": ts, "vocabs": {}}

    # the real StarCoder2 vocabulary, checked against llama.cpp's .inp/.out first
    for ext in ["", ".inp", ".out"]:
        shutil.copy(a.starcoder + ext, os.path.join(OUT, "ggml-vocab-starcoder.gguf" + ext))
    pre = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    sc = tokenizer_from_gguf(a.starcoder, pre)
    inp = open(a.starcoder + ".inp", encoding="utf-8").read().split("\n__ggml_vocab_test__\n")
    outl = open(a.starcoder + ".out", encoding="utf-8").read().split("\n")
    for t, o in zip(inp, outl):
        want = [int(x) for x in o.split()]
        got = sc.encode(t, add_special_tokens=False).ids
        assert got == want, (t, got, want)
    print(f"starcoder: tokenizers-from-GGUF reproduces llama.cpp's {len(inp)} reference encodings")
    out["vocabs"]["starcoder"] = {"file": "ggml-vocab-starcoder.gguf", **cases(sc, ts, rnd)}

    corpus = []
    for name in ["botchan/botchan.txt", "shakespeare/hamlet_gut.txt"]:
        corpus += open(os.path.join(DATA, "corpora", name), encoding="utf-8").read().splitlines()
    corpus += MULTILINGUAL * 20 + CODE * 20
    g, gpath = train("gpt2", pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), ["<|endoftext|>"], ["[[NOTE]]"], False, corpus)
    out["vocabs"]["gpt2"] = {"file": os.path.basename(gpath), **cases(g, ts, rnd)}
    l3pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    l3, lpath = train("llama3", l3pre, LLAMA3_SPECIALS, [], True, corpus)
    out["vocabs"]["llama3"] = {"file": os.path.basename(lpath), **cases(l3, ts, rnd)}
    with open(os.path.join(OUT, "bytelevel_cases.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
    for k, v in out["vocabs"].items():
        print(f"{k}: {len(v['ids'])} texts, {sum(map(len, v['ids']))} ids, {len(v['random_ids'])} random id sequences")


if __name__ == "__main__":
    main()
