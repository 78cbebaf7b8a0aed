//! SFT data: every record format gives the dialog it should, bad records
//! are refused with the record's number, and packing cuts the concatenated
//! dialogs into batches whose targets carry loss exactly on answer tokens.

use llama2_model::chat::{encode_dialog, Message, Role};
use llama2_model::tokenizer::Tokenizer;
use llama2_train::data::DataPosition;
use llama2_train::run::BatchSource;
use llama2_train::sft::{load_dialogs, parse_record, split_dialogs, SftData};
use serde_json::json;
use std::path::{Path, PathBuf};

fn tok() -> Tokenizer {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/tokenizer/botchan_spm_llama_settings_1000.model");
    Tokenizer::load(&p).unwrap()
}

fn tmp(name: &str, text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("llama2-sft-{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn every_record_format_gives_its_dialog() {
    let m = |r: Role, c: &str| Message::new(r, c);
    let cases = [
        (
            json!({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}),
            vec![m(Role::System, "be brief"), m(Role::User, "hi"), m(Role::Assistant, "hello")],
        ),
        // sharegpt with a system field and a preference record's chosen answer
        (
            json!({"conversations": [{"from": "human", "value": "q"}], "system": "sys", "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}}),
            vec![m(Role::System, "sys"), m(Role::User, "q"), m(Role::Assistant, "a")],
        ),
        (json!({"prompt": "p", "completion": "c"}), vec![m(Role::User, "p"), m(Role::Assistant, "c")]),
        (json!({"instruction": "do", "input": "this", "output": "done"}), vec![m(Role::User, "do\n\nthis"), m(Role::Assistant, "done")]),
        (json!({"instruction": "do", "input": "  ", "output": "done"}), vec![m(Role::User, "do"), m(Role::Assistant, "done")]),
        // a record ending with a question has nothing to learn from
        (json!({"messages": [{"role": "user", "content": "hi"}]}), vec![]),
    ];
    for (rec, want) in cases {
        assert_eq!(parse_record(&rec).unwrap(), want, "{rec}");
    }
    for bad in [json!([1, 2]), json!({"messages": [{"role": "robot", "content": "x"}]}), json!({"messages": [{"content": "x"}]}), json!({"text": "x"})] {
        assert!(parse_record(&bad).is_err(), "{bad} should be refused");
    }
}

#[test]
fn files_in_jsonl_and_array_form_and_errors_name_the_line() {
    let rec = r#"{"prompt": "p", "completion": "c"}"#;
    let jsonl = tmp("a.jsonl", &format!("{rec}\n\n{rec}\n"));
    let arr = tmp("a.json", &format!("[{rec}, {rec}]"));
    assert_eq!(load_dialogs(&jsonl).unwrap(), load_dialogs(&arr).unwrap());
    assert_eq!(load_dialogs(&jsonl).unwrap().len(), 2);
    let broken = tmp("b.jsonl", &format!("{rec}\n{{not json\n"));
    let e = load_dialogs(&broken).unwrap_err().to_string();
    assert!(e.contains("line 2") && e.contains("HINT"), "{e}");
    let empty = tmp("c.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}\n");
    assert!(load_dialogs(&empty).unwrap_err().to_string().contains("no dialog"));
    for p in [jsonl, arr, broken, empty] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn packing_masks_exactly_the_answers_and_is_seeded() {
    let tok = tok();
    let dialogs: Vec<Vec<Message>> = (0..12)
        .map(|i| vec![Message::new(Role::User, format!("question number {i}")), Message::new(Role::Assistant, format!("the answer is {}", i * 7))])
        .collect();
    let (b, t) = (2, 16);
    let mut d = SftData::new(&tok, &dialogs, b, t, Some(3), false).unwrap();
    assert!(d.batches_per_epoch() >= 2);
    // the stream is the dialogs in some order: every (input, target) pair that
    // carries loss is an answer token of some dialog, predicted from its predecessor
    let enc: Vec<(Vec<u32>, Vec<bool>)> = dialogs.iter().map(|x| encode_dialog(&tok, x).unwrap()).collect();
    let answer_pairs: std::collections::HashSet<(u32, u32)> =
        enc.iter().flat_map(|(ids, mask)| (1..ids.len()).filter(|&j| mask[j]).map(|j| (ids[j - 1], ids[j])).collect::<Vec<_>>()).collect();
    let mut counted = 0;
    for _ in 0..d.batches_per_epoch() {
        let mb = d.next_batch().unwrap().unwrap();
        assert_eq!((mb.inputs.len(), mb.targets.len()), (b * t, b * t));
        for (x, y) in mb.inputs.iter().zip(&mb.targets) {
            if *y >= 0 {
                counted += 1;
                assert!(answer_pairs.contains(&(*x, *y as u32)), "target {y} after {x} is not an answer token");
            }
        }
    }
    assert!(counted > 0);
    // the same seed gives the same batches; seek returns to a position exactly
    let mut d2 = SftData::new(&tok, &dialogs, b, t, Some(3), false).unwrap();
    let first = d2.next_batch().unwrap().unwrap();
    let second = d2.next_batch().unwrap().unwrap();
    d2.seek(DataPosition { shard: 0, window: 1, pass: 0 }).unwrap();
    assert_eq!(d2.next_batch().unwrap().unwrap(), second);
    d2.seek(DataPosition::default()).unwrap();
    assert_eq!(d2.next_batch().unwrap().unwrap(), first);
    // a new epoch reshuffles; a single-pass reader (validation) stops
    let mut once = SftData::new(&tok, &dialogs, b, t, None, true).unwrap();
    let n = (0..).take_while(|_| once.next_batch().unwrap().is_some()).count();
    assert_eq!(n, once.batches_per_epoch());
    // too little data for one batch is an error with a hint
    let e = SftData::new(&tok, &dialogs[..1], 8, 512, None, false).err().unwrap().to_string();
    assert!(e.contains("HINT"), "{e}");
}

#[test]
fn held_out_split_is_seeded_and_never_empty_on_either_side() {
    let dialogs: Vec<Vec<Message>> = (0..10).map(|i| vec![Message::new(Role::User, format!("{i}")), Message::new(Role::Assistant, "a")]).collect();
    let (a1, h1) = split_dialogs(dialogs.clone(), 0.2, 9);
    let (a2, h2) = split_dialogs(dialogs.clone(), 0.2, 9);
    assert_eq!((a1.len(), h1.len()), (8, 2));
    assert_eq!((&a1, &h1), (&a2, &h2));
    let (a, h) = split_dialogs(dialogs.clone(), 0.01, 9);
    assert_eq!((a.len(), h.len()), (9, 1));
    let (a, h) = split_dialogs(dialogs[..1].to_vec(), 0.5, 9);
    assert_eq!((a.len(), h.len()), (1, 0));
}

#[test]
fn loss_field_and_whole_packing() {
    use llama2_train::sft::{load_records, parse_loss, LossOn, Packing};
    assert_eq!(parse_loss(&json!({"prompt": "p"})).unwrap(), LossOn::Answers);
    assert_eq!(parse_loss(&json!({"loss": "answers"})).unwrap(), LossOn::Answers);
    assert_eq!(parse_loss(&json!({"loss": "last"})).unwrap(), LossOn::LastAnswer);
    assert!(parse_loss(&json!({"loss": "first"})).is_err());
    let two_turns = r#"{"messages": [{"role": "user", "content": "one"}, {"role": "assistant", "content": "first answer"}, {"role": "user", "content": "two"}, {"role": "assistant", "content": "second answer"}]"#;
    let p = tmp("loss.jsonl", &format!("{two_turns}, \"loss\": \"last\"}}\n{two_turns}}}\n"));
    let recs = load_records(&p).unwrap();
    assert_eq!((recs[0].loss, recs[1].loss), (LossOn::LastAnswer, LossOn::Answers));
    let bad = tmp("loss-bad.jsonl", &format!("{two_turns}, \"loss\": 3}}\n"));
    let e = load_records(&bad).unwrap_err().to_string();
    assert!(e.contains("record 1") && e.contains("loss") && e.contains("HINT"), "{e}");
    // whole packing: one record per row, padded, targets only on the learned tokens of that record
    let tok = tok();
    let t = 48;
    let d = SftData::from_records(&tok, &recs, 1, t, None, true, Packing::Whole).unwrap();
    assert_eq!((d.batches_per_epoch(), d.skipped), (2, 0));
    let mut d = d;
    for r in &recs {
        let (ids, mask) = llama2_model::chat::encode_dialog_last(&tok, &r.messages, r.loss == LossOn::LastAnswer).unwrap();
        let mb = d.next_batch().unwrap().unwrap();
        assert_eq!(&mb.inputs[..ids.len()], &ids[..], "the row starts with the whole dialog");
        for j in 0..t {
            let want = if j + 1 < ids.len() && mask[j + 1] { ids[j + 1] as i32 } else { -1 };
            assert_eq!(mb.targets[j], want, "position {j}");
        }
    }
    // a dialog longer than a row is skipped and counted, not cut
    let short = SftData::from_records(&tok, &recs, 1, 12, None, true, Packing::Whole);
    let e = short.err().unwrap().to_string();
    assert!(e.contains("2 dialogs longer than 12 tokens skipped") && e.contains("--seq-len"), "{e}");
    for f in [p, bad] {
        let _ = std::fs::remove_file(f);
    }
}
