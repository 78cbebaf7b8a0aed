#!/usr/bin/env python3
"""Chat-template reference cases for tests/template.rs: transformers'
`apply_chat_template` (jinja2) rendering real templates, with and without
the generation prompt, on multi-turn dialogs with and without a system
message, to text and to ids.

Templates (tests/data/chat/templates.json records where each comes from):
- ChatML: teknium/OpenHermes-2.5-Mistral-7B, Mistral v0.2 "old pre-v1"
  (no system prompt; raises on one), Mistral v0.2 "v1" (with a system
  prompt), vigogne-2-70b-chat (a Llama-2-chat variant): the template
  strings of llama.cpp's tests/test-chat-template.cpp (PyPI
  llama-cpp-python==0.3.36 sdist, MIT; ../shared/data/chat_template/).
- Llama 3: the same file's "Llama-3" string, with the generation prompt
  under `{% if add_generation_prompt %}` as in Meta-Llama-3-8B-Instruct's
  tokenizer_config.json (llama.cpp's copy always adds it).
- Llama 2: Llama-2-7b-chat-hf's tokenizer_config.json template (Meta),
  written out here.

Tokenizers: the Llama 2 vocabulary (ggml-vocab-llama-spm.gguf, loaded by
transformers from the GGUF) for the [INST] templates; the Llama 3
pre-tokenizer vocabulary (bytelevel_llama3.tokenizer.json) for Llama 3;
the byte-level vocabulary with ChatML tokens of tests/fixtures/gguf/
mixed_a.gguf (loaded from the GGUF) for ChatML.

Run: /work/pyref/venv/bin/python tools/scripts/make_template_cases.py
"""

import ast
import json
import os
import re

from transformers import AutoTokenizer, PreTrainedTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPP = os.path.join(ROOT, "..", "..", "shared", "data", "chat_template", "test-chat-template.cpp")
if not os.path.exists(CPP):
    CPP = "/work/shared/data/chat_template/test-chat-template.cpp"
TOKDIR = os.path.join(ROOT, "tests", "data", "tokenizer")
OUT = os.path.join(ROOT, "tests", "data", "chat", "templates.json")

LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
          "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
          "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
          "{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
          "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
          "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")


def cpp_templates():
    src = open(CPP, encoding="utf-8").read()
    out = {}
    for m in re.finditer(r'/\* \.name= \*/ "((?:[^"\\]|\\.)*)",\s*/\* \.template_str= \*/ u?8?("(?:[^"\\]|\\.)*")', src):
        out[ast.literal_eval('"' + m.group(1) + '"')] = ast.literal_eval(m.group(2))
    return out


def dialogs():
    conv = [("system", "You are a helpful assistant"), ("user", "Hello"), ("assistant", "Hi there"), ("user", "Who are you"),
            ("assistant", "   I am an assistant   "), ("user", "Another question")]
    d = [conv, conv[1:], conv[:5], conv[1:5]]
    dpo = json.load(open(os.path.join(ROOT, "..", "..", "shared", "data", "sft", "dpo_en_demo.json"))) if os.path.exists(
        os.path.join(ROOT, "..", "..", "shared", "data", "sft", "dpo_en_demo.json")) else json.load(open("/work/shared/data/sft/dpo_en_demo.json"))
    picked = 0
    for r in dpo:
        conv = [("user" if c["from"] == "human" else "assistant", c["value"]) for c in r["conversations"]]
        if len(conv) >= 3 and picked < 4 and all(len(c[1]) < 600 for c in conv):
            d.append(conv + [("assistant", r["chosen"]["value"])])
            d.append([("system", "Answer briefly.")] + conv)
            picked += 1
    d.append([("user", "Emoji 🦙 and 中文?"), ("assistant", "Sí: 🦙🦙, 中文 ✓\n\nTwo lines.")])
    return [[{"role": r, "content": c} for r, c in x] for x in d]


def main():
    cpp = cpp_templates()
    llama3 = cpp["Llama-3"].replace("{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}",
                                    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
    assert llama3 != cpp["Llama-3"]
    spm = AutoTokenizer.from_pretrained(TOKDIR, gguf_file="ggml-vocab-llama-spm.gguf")
    l3 = PreTrainedTokenizerFast(tokenizer_file=os.path.join(TOKDIR, "bytelevel_llama3.tokenizer.json"), bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    chatml_tok = AutoTokenizer.from_pretrained(os.path.join(ROOT, "tests", "fixtures", "gguf"), gguf_file="mixed_a.gguf")
    templates = [
        ("llama2", "Llama-2-7b-chat-hf tokenizer_config.json (Meta)", LLAMA2, "gguf:tokenizer/ggml-vocab-llama-spm.gguf", spm),
        ("llama2-vigogne", "bofenghuang/vigogne-2-70b-chat (test-chat-template.cpp)", cpp["bofenghuang/vigogne-2-70b-chat"], "gguf:tokenizer/ggml-vocab-llama-spm.gguf", spm),
        ("mistral-v0.2-old", "mistralai/Mistral-7B-Instruct-v0.2, pre-v1 (test-chat-template.cpp)",
         cpp["mistralai/Mistral-7B-Instruct-v0.2 (NOTE: Old pre-v1 without a system prompt)"], "gguf:tokenizer/ggml-vocab-llama-spm.gguf", spm),
        ("mistral-v1", "mistralai/Mistral-7B-Instruct-v0.2, 'v1' with a system prompt (test-chat-template.cpp)",
         cpp["mistralai/Mistral-7B-Instruct-v0.2 (mistralai 'v1' template with a system prompt)"], "gguf:tokenizer/ggml-vocab-llama-spm.gguf", spm),
        ("llama3", "Llama-3 (test-chat-template.cpp) with Meta's add_generation_prompt condition", llama3, "json:tokenizer/bytelevel_llama3.tokenizer.json", l3),
        ("chatml", "teknium/OpenHermes-2.5-Mistral-7B (test-chat-template.cpp)", cpp["teknium/OpenHermes-2.5-Mistral-7B"], "gguf:../fixtures/gguf/mixed_a.gguf", chatml_tok),
    ]
    out = {"templates": [], "dialogs": dialogs()}
    n_cases = 0
    for name, origin, tmpl, tokfile, tok in templates:
        cases = []
        for i, d in enumerate(out["dialogs"]):
            for gen in ([True, False] if d[-1]["role"] == "user" else [False]):
                rec = {"dialog": i, "add_generation_prompt": gen}
                try:
                    rec["text"] = tok.apply_chat_template(d, chat_template=tmpl, tokenize=False, add_generation_prompt=gen)
                    ids = tok.apply_chat_template(d, chat_template=tmpl, tokenize=True, add_generation_prompt=gen, return_dict=False)
                    rec["ids"] = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
                except Exception as e:  # the template raised
                    rec["error"] = str(e)
                cases.append(rec)
                n_cases += 1
        out["templates"].append({"name": name, "origin": origin, "template": tmpl, "tokenizer": tokfile,
                                 "bos_token": tok.bos_token or "", "eos_token": tok.eos_token or "", "cases": cases})
        ok = sum("text" in c for c in cases)
        print(f"{name}: {len(cases)} cases ({ok} rendered, {len(cases) - ok} raised)")
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)
    print(f"{n_cases} cases over {len(out['dialogs'])} dialogs -> {OUT}")


if __name__ == "__main__":
    main()
