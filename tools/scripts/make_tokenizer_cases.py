#!/usr/bin/env python3
"""Build the generated tokenizer reference set with the `sentencepiece` package.

What it does:
1. Reads the Llama 2 vocabulary from the GGUF file (pieces, scores, token
   types, bos/eos/unk ids), written by llama.cpp from Llama-2-7b's tokenizer,
   and rebuilds a SentencePiece `ModelProto` from it with the normalizer spec
   Llama 2 uses (identity normalisation, add_dummy_prefix true,
   remove_extra_whitespaces false, escape_whitespaces true) and its trainer
   spec (BPE, byte_fallback true, split_digits true). The protobuf is written
   by hand below (the `protobuf` package is not needed): this script is an
   independent reference and shares no code with the Rust reader/writer.
2. Encodes a varied text set with SentencePiece (several languages and
   scripts, emoji, digits and numbers, runs of spaces/tabs/newlines,
   characters outside the vocabulary, leading/trailing spaces, the empty
   string, plus random mixtures from a fixed seed) and writes the expected ids
   (without BOS) and SentencePiece's decode of each id list into
   tests/data/tokenizer/llama_spm_generated_cases.json.
3. Decode cases on arbitrary id sequences (byte pieces that form invalid
   UTF-8, control and unknown ids, leading spaces) with SentencePiece's
   DecodeIds result.

With --check-model PATH it instead loads PATH (a .model written by our Rust
code, `train-tool tokenizer convert`) in SentencePiece and checks it tokenizes
the whole case set exactly as the model rebuilt here does.

Usage (from the repository root):
  /work/pyref/venv/bin/python tools/scripts/make_tokenizer_cases.py \
      --gguf /work/shared/data/tokenizer/ggml-vocab-llama-spm.gguf
  /work/pyref/venv/bin/python tools/scripts/make_tokenizer_cases.py \
      --gguf tests/data/tokenizer/ggml-vocab-llama-spm.gguf --check-model /tmp/llama.model
"""
import argparse
import json
import os
import random
import struct
import sys

import sentencepiece as spm

# ---------------------------------------------------------------- GGUF reader
GGUF_TYPES = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def read_gguf_metadata(path):
    with open(path, "rb") as f:
        data = f.read()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0]

    def take_str():
        nonlocal pos
        n = take("Q")
        s = data[pos:pos + n].decode("utf-8")
        pos += n
        return s

    def take_value(t):
        if t == 8:
            return take_str()
        if t == 9:
            et = take("I")
            n = take("Q")
            return [take_value(et) for _ in range(n)]
        return take(GGUF_TYPES[t])

    assert data[:4] == b"GGUF", "not a GGUF file"
    pos = 4
    version = take("I")
    assert version in (2, 3), f"GGUF version {version}"
    _n_tensors = take("Q")
    n_kv = take("Q")
    meta = {}
    for _ in range(n_kv):
        k = take_str()
        t = take("I")
        meta[k] = take_value(t)
    return meta


# ------------------------------------------------------------ protobuf writer
def varint(n):
    if n < 0:
        n += 1 << 64  # int32 negative values are sign-extended to 10 bytes
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(num, v):
    return varint(num << 3 | 0) + varint(int(v))


def field_bytes(num, b):
    if isinstance(b, str):
        b = b.encode("utf-8")
    return varint(num << 3 | 2) + varint(len(b)) + b


def field_float(num, f):
    return varint(num << 3 | 5) + struct.pack("<f", f)


def model_proto_from_gguf(meta):
    assert meta["tokenizer.ggml.model"] == "llama"
    tokens = meta["tokenizer.ggml.tokens"]
    scores = meta["tokenizer.ggml.scores"]
    types = meta["tokenizer.ggml.token_type"]
    out = bytearray()
    for piece, score, typ in zip(tokens, scores, types):
        sp = field_bytes(1, piece) + field_float(2, score)
        if typ != 1:  # NORMAL is the default
            sp += field_varint(3, typ)
        out += field_bytes(1, sp)
    trainer = (
        field_varint(3, 2)  # model_type BPE
        + field_varint(4, len(tokens))  # vocab_size
        + field_varint(25, 1)  # split_digits
        + field_varint(26, 1)  # allow_whitespace_only_pieces
        + field_varint(35, 1)  # byte_fallback
        + field_varint(40, meta["tokenizer.ggml.unknown_token_id"])
        + field_varint(41, meta["tokenizer.ggml.bos_token_id"])
        + field_varint(42, meta["tokenizer.ggml.eos_token_id"])
        + field_varint(43, -1)  # pad_id
    )
    normalizer = (
        field_bytes(1, "identity")
        + field_varint(3, 1)  # add_dummy_prefix
        + field_varint(4, 0)  # remove_extra_whitespaces
        + field_varint(5, 1)  # escape_whitespaces
    )
    out += field_bytes(2, trainer)
    out += field_bytes(3, normalizer)
    return bytes(out)


# ------------------------------------------------------------------ text set
def fixed_texts():
    t = [
        "", " ", "  ", "   ", "\t", "\n", "\n\n", "\t\n", " \n ", "\r\n", "a", " a", "a ", "  a  ",
        "Hello world", " Hello world", "Hello world ", "Hello  world", "Hello\tworld", "Hello\nworld",
        "Hello\n\n\nworld\n", "    indented\n        more\n", "trailing spaces   ", "\t\ttabs\tand\ttabs",
        "The quick brown fox jumps over the lazy dog.",
        "I can't believe it's not butter! Isn't it?",
        "3.14159 2718 1,000,000 -42 +7 1e-10 0x1F 2024-05-20 12:30:45",
        "Phone: (555) 123-4567, ZIP 90210, room 101b",
        "1234567890" * 3, "000", "v1.2.3-rc4",
        "Übergrößenträger äöüß ÄÖÜ", "Ça va? Très bien, merci. Où est l'hôtel?",
        "¿Dónde está la biblioteca? ¡Olé!", "Cửa Việt, Hà Nội, Thành phố Hồ Chí Minh",
        "Привет, как дела? Съешь ещё этих мягких французских булок.",
        "Γειά σου Κόσμε, ελληνικά γράμματα", "שלום עולם, עברית", "مرحبا بالعالم، العربية",
        "नमस्ते दुनिया, हिन्दी", "こんにちは世界、カタカナとひらがな", "你好，世界！我想在apple工作1314151天～",
        "안녕하세요 세계", "สวัสดีชาวโลก", "ሰላም ለዓለም", "Բարեւ աշխարհ", "გამარჯობა მსოფლიო",
        "កាន់តែពិសេសអាចខលចេញ", "ᚠᚢᚦᚨᚱᚲ runes", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 𝒜𝒷𝒸",
        "🦙 llamas 🦙🦙", "🚀 (normal) 😶‍🌫️ (multiple emojis concatenated) ✅",
        "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👍🏽 skin tone", "emoji at end 😁", "😁😁😁",
        "Ꙋ🦙", "\u0000nul\u0001ctl\u007f", "zero\u200bwidth\u200djoiner\ufeffbom",
        "combining e\u0301 vs \u00e9, n\u0303", "ﬁ ligature, Ｆｕｌｌｗｉｄｔｈ, ①②③",
        "\U0001F9FF\U0001FA90\U0001FAE0 new emoji", "private \ue000\uf8ff use", "\U000E0041 tag char",
        "<s> literal control </s> <unk> <0x41>", "▁ literal meta symbol ▁▁", "a▁b",
        "def f(x):\n    return x ** 2  # square\n", "if (a && b) { c[i] = d->e; }",
        "<html><body class=\"x\">text &amp; more</body></html>",
        "https://example.com/path?q=1&r=2#frag", "user@example.org",
        "$100.00 €50 £20 ¥1000 ₹500", "½ ¼ ¾ ° ± × ÷ ∞ ≈ ≠ ≤ ≥ √ ∑ ∫",
        "!!!!!!", "??? ... --- ___ *** ===", "' era", " (", "\n =", " discards",
        "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～",
        "a" * 200, " " * 50 + "x", "x" + "\t" * 20, "\n" * 30,
    ]
    return t


def random_texts(vocab_pieces, n, seed):
    rng = random.Random(seed)
    words = [p.replace("\u2581", "") for p in vocab_pieces if p.startswith("\u2581") and len(p) > 2]
    chars = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'\"()[]{}-_\t\n")
    exotic = ["é", "ß", "ж", "λ", "中", "文", "あ", "ア", "한", "ไ", "ქ", "🦙", "😀", "🇫🇷", "\u0301",
              "\u200d", "\ue123", "𐍈", "ᚠ", "⚡", "‽", "\u00a0", "\u3000", "\x0b", "\x0c"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 25)):
            r = rng.random()
            if r < 0.5:
                parts.append(rng.choice(words))
            elif r < 0.7:
                parts.append("".join(rng.choice(chars) for _ in range(rng.randint(1, 6))))
            elif r < 0.85:
                parts.append("".join(rng.choice(exotic) for _ in range(rng.randint(1, 3))))
            else:
                parts.append(str(rng.randint(0, 10 ** rng.randint(1, 12))))
            parts.append(rng.choice([" ", " ", " ", "  ", "", "\n", "\t", "   "]))
        out.append("".join(parts))
    return out


def decode_id_cases(sp, rng):
    byte_ids = {b: sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)}
    cases = [
        [1, 15043, 3186, 2],  # <s> Hello world </s>
        [0], [0, 0, 15043],  # unknown
        [29871], [29871, 29871], [259], [259, 15043],  # leading spaces
        [byte_ids[0x20], 15043],  # a byte space first
        [byte_ids[0xF0], byte_ids[0x9F], byte_ids[0xA6], byte_ids[0x99]],  # valid 4-byte UTF-8
        [byte_ids[0xF0], byte_ids[0x9F], 15043],  # truncated sequence then a piece
        [byte_ids[0xFF], byte_ids[0xFE]],  # never valid in UTF-8
        [byte_ids[0xC3]], [byte_ids[0x80]], [byte_ids[0xED], byte_ids[0xA0], byte_ids[0x80]],  # surrogate
        [byte_ids[0xC0], byte_ids[0xAF]],  # overlong
        [13, 13, 29871, 13], [1, 1, 2, 2], [2, 29871, 15043],
    ]
    n = sp.get_piece_size()
    for _ in range(40):
        ids = [rng.randrange(n) if rng.random() < 0.7 else byte_ids[rng.randrange(256)]
               for _ in range(rng.randint(1, 12))]
        cases.append(ids)
    return [{"ids": ids, "text": sp.decode_ids(ids)} for ids in cases]


def botchan_cases(model_path, botchan_txt, n_lines):
    """Cases for sentencepiece's own botchan BPE model: its nmt_nfkc charsmap,
    remove_extra_whitespaces, and no byte fallback (unknowns -> one UNK per run)."""
    sp = spm.SentencePieceProcessor(model_file=model_path)
    lines = open(botchan_txt, encoding="utf-8").read().split("\n")[:n_lines]
    extra = ["", "   ", "  Hello   world  ", "ＡＢＣ ① ﬁ ㍻ ½ ｶﾀｶﾅ", "Hello 中文 ☃ wörld  x", "tab\there\nnew line",
             "Ǆ ǅ Å Å ﬀ ℌ ⅷ", "naïve café", "😀😀 x 😀", "\u00a0nbsp\u3000ideographic", "\u200bzw\u00adsoft"]
    cases = []
    for t in extra + lines:
        ids = sp.encode(t)
        cases.append({"text": t, "ids": ids, "decoded": sp.decode(ids)})
    return cases


def train_peer_botchan(botchan_txt, out_model):
    """sentencepiece's own BPE trainer on botchan.txt with the Llama settings
    (the same as `train-tool tokenizer train` defaults), V=1000: the peer our
    trainer's compression is compared with."""
    prefix = out_model[:-len(".model")]
    spm.SentencePieceTrainer.train(
        input=botchan_txt, model_prefix=prefix, model_type="bpe", vocab_size=1000, byte_fallback=True,
        split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, character_coverage=0.99995, add_dummy_prefix=True, minloglevel=2)
    os.remove(prefix + ".vocab")


def exotic_model(base_model, out_model):
    """A model with the piece types Llama 2 lacks: the botchan Llama-settings
    model with some pieces turned UNUSED (they merge, then are split back),
    USER_DEFINED pieces (matched whole in the text, one with U+2581 inside,
    which stops word splitting) and an extra CONTROL piece (never matched)."""
    sp = spm.SentencePieceProcessor(model_file=base_model)
    unused = {"▁the", "ing", "er", "▁a"}
    out = bytearray()
    for i in range(sp.get_piece_size()):
        p = sp.id_to_piece(i)
        typ = 2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 5 if p in unused else 1
        out += field_bytes(1, field_bytes(1, p) + field_float(2, sp.get_score(i)) + field_varint(3, typ))
    for p, typ in [("<|im_start|>", 4), ("@@", 4), ("hello▁world", 4), ("▁▁▁", 4), ("<ctrl>", 3)]:
        out += field_bytes(1, field_bytes(1, p) + field_float(2, 0.0) + field_varint(3, typ))
    trainer = (field_varint(3, 2) + field_varint(4, sp.get_piece_size() + 5) + field_varint(35, 1)
               + field_varint(40, 0) + field_varint(41, 1) + field_varint(42, 2) + field_varint(43, -1))
    normalizer = field_bytes(1, "identity") + field_varint(3, 1) + field_varint(4, 0) + field_varint(5, 1)
    out += field_bytes(2, trainer) + field_bytes(3, normalizer)
    with open(out_model, "wb") as f:
        f.write(bytes(out))
    return spm.SentencePieceProcessor(model_file=out_model)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True, help="the Llama 2 vocabulary as GGUF")
    ap.add_argument("--out", default="tests/data/tokenizer/llama_spm_generated_cases.json")
    ap.add_argument("--n-random", type=int, default=400, help="random mixed texts (fixed seed)")
    ap.add_argument("--seed", type=int, default=20240520)
    ap.add_argument("--botchan-dir", default="tests/data/corpora/botchan",
                    help="botchan.txt and botchan_en_bpe_1000.model (sentencepiece's test data)")
    ap.add_argument("--botchan-lines", type=int, default=400)
    ap.add_argument("--check-model", help="a .model written by our Rust code to compare against")
    ap.add_argument("--write-model", help="also save the rebuilt .model here")
    args = ap.parse_args()

    meta = read_gguf_metadata(args.gguf)
    proto = model_proto_from_gguf(meta)
    if args.write_model:
        with open(args.write_model, "wb") as f:
            f.write(proto)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    assert sp.get_piece_size() == len(meta["tokenizer.ggml.tokens"])

    pieces = meta["tokenizer.ggml.tokens"]
    texts = fixed_texts() + random_texts(pieces, args.n_random, args.seed)

    if args.check_model:
        ours = spm.SentencePieceProcessor(model_file=args.check_model)
        bad = 0
        for t in texts:
            a, b = sp.encode(t), ours.encode(t)
            if a != b:
                bad += 1
                if bad <= 5:
                    print(f"MISMATCH {t!r}: reference {a} ours {b}")
        for i in range(sp.get_piece_size()):
            if (sp.id_to_piece(i), sp.get_score(i), sp.is_control(i), sp.is_byte(i), sp.is_unknown(i)) != (
                    ours.id_to_piece(i), ours.get_score(i), ours.is_control(i), ours.is_byte(i), ours.is_unknown(i)):
                bad += 1
                print(f"PIECE MISMATCH at id {i}")
                break
        print(f"{len(texts) - bad if bad < len(texts) else 0}/{len(texts)} texts identical; "
              f"{'OK' if bad == 0 else 'FAILED'}")
        sys.exit(1 if bad else 0)

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    train_peer_botchan(os.path.join(args.botchan_dir, "botchan.txt"),
                       os.path.join(os.path.dirname(args.out), "botchan_spm_llama_settings_1000.model"))
    ex = exotic_model(os.path.join(os.path.dirname(args.out), "botchan_spm_llama_settings_1000.model"),
                      os.path.join(os.path.dirname(args.out), "exotic_pieces.model"))
    ex_texts = texts[:120] + ["<|im_start|>user hello world@@ the thing", "hello world", "hello  world",
                              "   three   spaces    four", "@@@@@", "<ctrl> <s> literal", "the theater bringing water"]
    rng = random.Random(args.seed + 1)
    cases = [{"text": t, "ids": sp.encode(t), "decoded": sp.decode(sp.encode(t))} for t in texts]
    out = {
        "source": "generated by tools/scripts/make_tokenizer_cases.py with sentencepiece "
                  f"{spm.__version__} from the Llama 2 vocabulary (ggml-vocab-llama-spm.gguf); ids without BOS",
        "encode_cases": cases,
        "decode_cases": decode_id_cases(sp, rng),
        "exotic_cases": [{"text": t, "ids": ex.encode(t), "decoded": ex.decode(ex.encode(t))} for t in ex_texts],
        "botchan_bpe_cases": botchan_cases(os.path.join(args.botchan_dir, "botchan_en_bpe_1000.model"),
                                           os.path.join(args.botchan_dir, "botchan.txt"), args.botchan_lines),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)
        f.write("\n")
    n_ids = sum(len(c["ids"]) for c in cases)
    print(f"wrote {args.out}: {len(cases)} encode cases ({n_ids} ids), {len(out['decode_cases'])} decode cases")


if __name__ == "__main__":
    main()
