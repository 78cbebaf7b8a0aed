//! Chat templates against transformers' `apply_chat_template` (jinja2): the
//! templates of Llama 2, Llama 3, ChatML and Mistral (two versions) and a
//! Llama-2 variant, on 13 multi-turn dialogs with and without a system
//! message, with and without the generation prompt: the rendered text, the
//! ids, and the exceptions the templates raise. Cases by
//! tools/scripts/make_template_cases.py (tests/data/chat/templates.json).
//! Also: the loss masks of ChatFormat cover the answers, and a GGUF's own
//! template is found and used.

use llama2::model::chat::{ChatFormat, Message, Role};
use llama2::model::template::ChatTemplate;
use llama2::model::tokenizer::{EncodeOptions, Tokenizer};
use serde_json::Value;
use std::path::{Path, PathBuf};

const NONE: EncodeOptions = EncodeOptions { bos: false, eos: false };

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(p)
}

fn dialog(v: &Value) -> Vec<Message> {
    v.as_array().unwrap().iter().map(|m| Message::new(Role::parse(m["role"].as_str().unwrap()).unwrap(), m["content"].as_str().unwrap())).collect()
}

fn tokenizer(spec: &str) -> Tokenizer {
    let (_, file) = spec.split_once(':').unwrap();
    Tokenizer::load(data(file)).unwrap()
}

#[test]
fn templates_render_and_encode_as_transformers() {
    let all: Value = serde_json::from_str(&std::fs::read_to_string(data("chat/templates.json")).unwrap()).unwrap();
    let dialogs: Vec<Vec<Message>> = all["dialogs"].as_array().unwrap().iter().map(dialog).collect();
    let mut n = 0;
    let mut raised = 0;
    for t in all["templates"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let tok = tokenizer(t["tokenizer"].as_str().unwrap());
        let tmpl = ChatTemplate::new(t["template"].as_str().unwrap(), name, t["bos_token"].as_str().unwrap(), t["eos_token"].as_str().unwrap()).unwrap();
        for c in t["cases"].as_array().unwrap() {
            let d = &dialogs[c["dialog"].as_u64().unwrap() as usize];
            let gen = c["add_generation_prompt"].as_bool().unwrap();
            let got = tmpl.render(d, gen);
            match c.get("error") {
                Some(e) => {
                    let msg = got.expect_err(&format!("{name}: dialog {} rendered but transformers raised {e}", c["dialog"])).to_string();
                    assert!(msg.contains(e.as_str().unwrap()), "{name}: {msg:?} lacks {e}");
                    raised += 1;
                }
                None => {
                    let text = got.unwrap();
                    assert_eq!(text, c["text"].as_str().unwrap(), "{name}: dialog {} (generation prompt {gen})", c["dialog"]);
                    let ids: Vec<u32> = c["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
                    assert_eq!(tok.encode_special(&text, NONE).unwrap(), ids, "{name}: ids of dialog {} (generation prompt {gen})", c["dialog"]);
                }
            }
            n += 1;
        }
    }
    eprintln!("{n} cases: text and ids identical to transformers ({raised} raise the template's own exception, as in transformers)");
    assert!(n >= 100);
}

#[test]
fn template_masks_cover_the_answers() {
    let all: Value = serde_json::from_str(&std::fs::read_to_string(data("chat/templates.json")).unwrap()).unwrap();
    let dialogs: Vec<Vec<Message>> = all["dialogs"].as_array().unwrap().iter().map(dialog).collect();
    let mut checked = 0;
    for t in all["templates"].as_array().unwrap() {
        let tok = tokenizer(t["tokenizer"].as_str().unwrap());
        let name = t["name"].as_str().unwrap();
        let fmt = ChatFormat::from_template(&tok, t["template"].as_str().unwrap(), name).unwrap();
        for d in dialogs.iter().filter(|d| d.last().map(|m| m.role) == Some(Role::Assistant)) {
            let Ok((ids, mask)) = fmt.encode_dialog(&tok, d) else { continue };
            assert_eq!(ids.len(), mask.len());
            // the ids are the template's (same as the text check above)
            let ChatFormat::Template(tm) = &fmt else { unreachable!() };
            assert_eq!(ids, tok.encode_special(&tm.render(d, false).unwrap(), NONE).unwrap());
            // each answer's text lies within the masked tokens, in order;
            // nothing of the users' turns is masked
            let masked: Vec<u32> = ids.iter().zip(&mask).filter(|(_, &m)| m).map(|(&i, _)| i).collect();
            let text = tok.decode(&masked).unwrap();
            let mut at = 0;
            for m in d.iter().filter(|m| m.role == Role::Assistant) {
                let a = m.content.trim();
                let p = text[at..].find(a).unwrap_or_else(|| panic!("{name}: answer {a:?} not in the masked text {text:?}"));
                at += p + a.len();
            }
            for m in d.iter().filter(|m| m.role == Role::User && m.content.trim().len() > 12) {
                assert!(!text.contains(m.content.trim()), "{name}: a user turn is masked: {text:?}");
            }
            // the mask ends each answer with the end of turn: the last masked token is a stop id
            let stops = fmt.stop_ids(&tok);
            assert!(stops.contains(masked.last().unwrap()), "{name}: last masked token {:?} is not a stop id {stops:?}", masked.last());
            checked += 1;
        }
    }
    eprintln!("{checked} dialogs: masks hold every answer and its end of turn, no user turn");
    assert!(checked >= 20);
}

#[test]
fn a_gguf_carries_its_template_and_stop_token() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/mixed_a.gguf");
    let tok = Tokenizer::load(&p).unwrap();
    assert!(tok.chat_template().is_some_and(|t| t.contains("<|im_start|>")));
    let fmt = ChatFormat::for_tokenizer(&tok).unwrap();
    assert!(fmt.name().starts_with("template"));
    let im_end = tok.piece_to_id("<|im_end|>").unwrap();
    assert!(fmt.stop_ids(&tok).contains(&im_end));
    let prompt = fmt.encode_prompt(&tok, &[Message::new(Role::User, "Hi")]).unwrap();
    assert_eq!(
        tok.decode_with(&prompt, llama2::model::tokenizer::DecodeOptions { keep_control: true, strip_dummy_prefix: false }).unwrap(),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    // a tokenizer without a template keeps the built-in Llama-2-chat format
    let spm = Tokenizer::load(data("tokenizer/ggml-vocab-llama-spm.gguf")).unwrap();
    assert!(matches!(ChatFormat::for_tokenizer(&spm).unwrap(), ChatFormat::Llama2));
}
