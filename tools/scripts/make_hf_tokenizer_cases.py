#!/usr/bin/env python3
"""Build a Llama-style Hugging Face tokenizer.json and its reference ids.

Converts a SentencePiece BPE .model into a `tokenizers` BPE tokenizer the
way transformers' LlamaConverter does (vocabulary from the pieces, merges by
`transformers.convert_slow_tokenizer.generate_merges` ordered by piece score,
byte fallback, fuse_unk, control pieces as special added tokens), in either
layout transformers writes: the current one (Metaspace pre-tokenizer,
prepend_scheme "first", split false) or the legacy one (normalizer
Prepend("▁") + Replace(" ", "▁")). Then encodes the texts of
llama_spm_generated_cases.json with the `tokenizers` library and writes
those ids (without specials) beside it.

Needs `tokenizers`, `transformers`, `sentencepiece` and `protobuf` (not in the
shared reference venv):
  python3 -m venv .venv-hf && .venv-hf/bin/pip install tokenizers transformers sentencepiece protobuf
  .venv-hf/bin/python tools/scripts/make_hf_tokenizer_cases.py \
      --model tests/data/tokenizer/botchan_spm_llama_settings_1000.model \
      --out tests/data/tokenizer/botchan_llama_settings_tokenizer.json
Texts holding a control piece's text ("<s>", "</s>", "<unk>") are left out:
`tokenizers` splits added tokens out of the text, SentencePiece (and we) do not.
"""
import argparse
import json

import sentencepiece as spm
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from transformers.convert_slow_tokenizer import generate_merges


def convert(model_path, legacy):
    sp = spm.SentencePieceProcessor(model_file=model_path)
    n = sp.get_piece_size()
    vocab = {sp.id_to_piece(i): i for i in range(n)}
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(n)}
    merges = generate_merges(vocab, scores)
    unk = sp.id_to_piece(sp.unk_id())
    tk = Tokenizer(BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    tk.add_special_tokens([AddedToken(sp.id_to_piece(i), normalized=False, special=True)
                           for i in range(n) if sp.is_control(i) or sp.is_unknown(i)])
    if legacy:
        tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    else:
        tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(content=" ", left=1)])
    return tk, sp


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="SentencePiece BPE .model")
    ap.add_argument("--out", required=True, help="tokenizer.json to write; cases go to OUT with .cases.json")
    ap.add_argument("--cases", default="tests/data/tokenizer/llama_spm_generated_cases.json")
    ap.add_argument("--legacy", action="store_true", help="legacy layout (normalizer instead of pre-tokenizer)")
    args = ap.parse_args()
    tk, sp = convert(args.model, args.legacy)
    tk.save(args.out)
    texts = [c["text"] for c in json.load(open(args.cases, encoding="utf-8"))["encode_cases"]]
    specials = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)]
    texts = [t for t in texts if not any(s in t for s in specials)]
    cases = [{"text": t, "ids": tk.encode(t, add_special_tokens=False).ids} for t in texts]
    same_as_spm = sum(c["ids"] == sp.encode(c["text"]) for c in cases)
    out = args.out[:-len(".json")] + ".cases.json"
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"source": f"tokenizers encode of {args.cases} texts with {args.out}", "encode_cases": cases},
                  f, ensure_ascii=False, indent=0)
        f.write("\n")
    print(f"wrote {args.out} and {out}: {len(cases)} cases, {same_as_spm} identical to sentencepiece")


if __name__ == "__main__":
    main()
