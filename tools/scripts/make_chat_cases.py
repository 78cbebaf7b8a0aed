#!/usr/bin/env python3
"""Reference token ids of the Llama-2-chat format, for tests/chat.rs.

Builds the Llama 2 SentencePiece model from the GGUF vocabulary (with
make_tokenizer_cases.py's rebuild), then tokenises dialogs exactly as Meta's
reference `chat_completion` (llama/generation.py) does:

    if dialog[0]["role"] == "system":
        dialog = [{"role": dialog[1]["role"],
                   "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}] + dialog[2:]
    tokens = sum([encode(f"{B_INST} {(p['content']).strip()} {E_INST} {(a['content']).strip()} ",
                         bos=True, eos=True) for p, a in zip(dialog[::2], dialog[1::2])], [])
    if len(dialog) % 2 == 1:   # a final user message awaiting an answer
        tokens += encode(f"{B_INST} {(dialog[-1]['content']).strip()} {E_INST}", bos=True, eos=False)

Dialogs: multi-turn ones from ../shared/data/sft/dpo_en_demo.json (with the
chosen answer as the last turn, and without it, i.e. ending with a user
message), with and without a system message, plus hand-written edge cases
(surrounding whitespace, newlines, non-ASCII, empty system message).

Usage: /work/pyref/venv/bin/python tools/scripts/make_chat_cases.py \
           --gguf tests/data/tokenizer/ggml-vocab-llama-spm.gguf \
           --dpo ../shared/data/sft/dpo_en_demo.json --out tests/data/chat/llama2_chat_cases.json
"""
import argparse, json, os, sys, tempfile
sys.path.insert(0, os.path.dirname(__file__))
import sentencepiece as spm
from make_tokenizer_cases import read_gguf_metadata, model_proto_from_gguf

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


def reference_ids(sp, dialog):
    if dialog[0]["role"] == "system":
        dialog = [{"role": dialog[1]["role"], "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}] + dialog[2:]
    assert all(m["role"] == "user" for m in dialog[::2]) and all(m["role"] == "assistant" for m in dialog[1::2])
    enc = lambda s, bos, eos: ([sp.bos_id()] if bos else []) + sp.encode(s) + ([sp.eos_id()] if eos else [])
    toks = sum([enc(f"{B_INST} {(p['content']).strip()} {E_INST} {(a['content']).strip()} ", True, True)
                for p, a in zip(dialog[::2], dialog[1::2])], [])
    if len(dialog) % 2 == 1:
        toks += enc(f"{B_INST} {(dialog[-1]['content']).strip()} {E_INST}", True, False)
    return toks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--dpo", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-dialogs", type=int, default=40)
    a = ap.parse_args()
    proto = model_proto_from_gguf(read_gguf_metadata(a.gguf))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "llama2.model")
        with open(path, "wb") as f:
            f.write(proto)
        sp = spm.SentencePieceProcessor(model_file=path)
    role = {"human": "user", "gpt": "assistant", "system": "system"}
    dialogs = []
    for rec in json.load(open(a.dpo)):
        conv = [{"role": role[m["from"]], "content": m["value"]} for m in rec["conversations"]]
        full = conv + [{"role": "assistant", "content": rec["chosen"]["value"]}]
        dialogs.append(full)       # ends with an answer: training
        dialogs.append(conv)       # ends with a user message: a prompt
        if len(dialogs) >= a.max_dialogs:
            break
    dialogs += [
        [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "  Hello there!  "},
         {"role": "assistant", "content": "\nArr, ahoy!\n"}, {"role": "user", "content": "Où est le trésor ? 宝物"},
         {"role": "assistant", "content": "Under the 3rd palm tree, 42 paces west."}],
        [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}],
        [{"role": "user", "content": "Tabs\tand  spaces"}],
    ]
    cases = [{"dialog": dlg, "ids": reference_ids(sp, dlg)} for dlg in dialogs]
    meta = {"source": "Meta llama generation.py chat_completion tokenisation, re-implemented above",
            "sentencepiece": spm.__version__, "gguf": os.path.basename(a.gguf)}
    with open(a.out, "w") as f:
        json.dump({"meta": meta, "cases": cases}, f, ensure_ascii=False)
    print(f"{len(cases)} dialogs -> {a.out}")


if __name__ == "__main__":
    main()
