//! The Llama-2-chat format: token-exact with Meta's reference tokenisation
//! on multi-turn dialogs with and without a system message, and the loss
//! mask on a hand-made example.

use llama2::model::chat::{encode_dialog, encode_prompt, Message, Role};
use llama2::model::tokenizer::Tokenizer;
use std::path::Path;

fn llama_tokenizer() -> Tokenizer {
    Tokenizer::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer/ggml-vocab-llama-spm.gguf")).unwrap()
}

fn parse(d: &serde_json::Value) -> Vec<Message> {
    d.as_array().unwrap().iter().map(|m| Message::new(Role::parse(m["role"].as_str().unwrap()).unwrap(), m["content"].as_str().unwrap())).collect()
}

#[test]
fn token_exact_with_the_reference_chat_format() {
    let tok = llama_tokenizer();
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/chat/llama2_chat_cases.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 40);
    let (mut with_sys, mut multi) = (0, 0);
    for (i, c) in cases.iter().enumerate() {
        let dialog = parse(&c["dialog"]);
        let want: Vec<u32> = c["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let (ids, mask) = encode_dialog(&tok, &dialog).unwrap();
        assert_eq!(ids, want, "case {i}");
        assert_eq!(mask.len(), ids.len());
        if dialog.last().unwrap().role == Role::User {
            assert_eq!(encode_prompt(&tok, &dialog).unwrap(), want, "case {i} as a prompt");
            assert!(mask.iter().skip(ids.len() - 5).all(|&m| !m), "case {i}: the open prompt has no loss");
        }
        with_sys += (dialog[0].role == Role::System) as usize;
        multi += (dialog.iter().filter(|m| m.role == Role::User).count() > 1) as usize;
    }
    assert!(with_sys >= 3 && multi >= 10, "the cases cover system messages ({with_sys}) and multi-turn dialogs ({multi})");
}

#[test]
fn loss_mask_covers_exactly_the_answers_and_their_eos() {
    let tok = llama_tokenizer();
    let dialog = vec![
        Message::new(Role::System, "Be brief."),
        Message::new(Role::User, "What is 2+2?"),
        Message::new(Role::Assistant, "4."),
        Message::new(Role::User, "And 3+3?"),
        Message::new(Role::Assistant, "6."),
    ];
    let (ids, mask) = encode_dialog(&tok, &dialog).unwrap();
    // by hand: each pair is BOS, the prompt tokens (no loss), the answer
    // tokens and the trailing space (loss), EOS (loss)
    let mut spans: Vec<(bool, Vec<u32>)> = Vec::new();
    for (&id, &m) in ids.iter().zip(&mask) {
        match spans.last_mut() {
            Some((mm, v)) if *mm == m => v.push(id),
            _ => spans.push((m, vec![id])),
        }
    }
    assert_eq!(spans.len(), 4, "prompt, answer, prompt, answer");
    let text = |v: &[u32]| tok.decode(v).unwrap();
    let (bos, eos) = (tok.bos_id().unwrap(), tok.eos_id().unwrap());
    assert!(!spans[0].0 && spans[0].1[0] == bos);
    assert_eq!(text(&spans[0].1[1..]), "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is 2+2? [/INST]");
    assert!(spans[1].0 && *spans[1].1.last().unwrap() == eos);
    assert_eq!(text(&spans[1].1[..spans[1].1.len() - 1]).trim_end(), "4.");
    assert!(!spans[2].0 && spans[2].1[0] == bos);
    assert_eq!(text(&spans[2].1[1..]), "[INST] And 3+3? [/INST]");
    assert!(spans[3].0 && *spans[3].1.last().unwrap() == eos);
    assert_eq!(text(&spans[3].1[..spans[3].1.len() - 1]).trim_end(), "6.");
}

#[test]
fn malformed_dialogs_are_rejected() {
    let tok = llama_tokenizer();
    let u = |s: &str| Message::new(Role::User, s);
    let a = |s: &str| Message::new(Role::Assistant, s);
    assert!(encode_dialog(&tok, &[]).is_err());
    assert!(encode_dialog(&tok, &[a("hi")]).is_err());
    assert!(encode_dialog(&tok, &[u("a"), u("b")]).is_err());
    assert!(encode_dialog(&tok, &[Message::new(Role::System, "s")]).is_err());
    assert!(encode_prompt(&tok, &[u("a"), a("b")]).is_err());
}
