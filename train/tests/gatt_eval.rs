//! GAtt evaluation pieces: the checkers on hand-written answers, the
//! adherence table on hand-made transcripts, the measured turns when the
//! context fills, the system message's token span, and a carried dialog on
//! a small random model (every answered turn in the transcript, the
//! attention on the system message a probability mass per layer).

use llama2_model::chat::encode_dialog_last;
use llama2_model::generate::Sampling;
use llama2_model::tokenizer::Tokenizer;
use llama2_model::{Config, Model};
use llama2_runtime::CpuBackend;
use llama2_train::gatt::eval::{eval_messages, system_span};
use llama2_train::gatt::{self, adherence, comply, measured_turns, passes, words, Check, Constraint, EvalDialog, EvalOpts, Instruction, Transcript};
use std::path::Path;

fn tok() -> Tokenizer {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/tokenizer/botchan_spm_llama_settings_1000.model");
    Tokenizer::load(&p).unwrap()
}

#[test]
fn checkers_on_hand_cases() {
    let end = Check::EndWord("amen".into());
    let max5 = Check::MaxWords(5);
    let tea = Check::Mention("tea".into());
    let caps = Check::Capitals;
    let small = Check::Lowercase;
    let cases: &[(&Check, &str, bool)] = &[
        (&end, "So be it, amen.", true),
        (&end, "So be it, AMEN!!", true),
        (&end, "amen", true),
        (&end, "Amen, so be it.", false),
        (&end, "So be it, amen. Truly", false),
        (&end, "So be it, amens.", false),
        (&end, "", false),
        (&end, "  ...  ", false),
        (&max5, "one two three four five", true),
        (&max5, "one two three four five six", false),
        (&max5, "One, two - three!", true), // the dash is no word
        (&max5, "", false),
        (&max5, "Yes.", true),
        (&tea, "I like Tea very much", true),
        (&tea, "tea.", true),
        (&tea, "I like teapots", false),
        (&tea, "steam", false),
        (&caps, "HELLO, WORLD 42!", true),
        (&caps, "HELLO, World", false),
        (&caps, "42 !", false), // no letter at all
        (&caps, "ÉTÉ", true),
        (&caps, "", false),
        (&small, "hello, world 42!", true),
        (&small, "hello, World", false),
        (&small, "42 !", false), // no letter at all
        (&small, "été", true),
        (&small, "", false),
    ];
    for (c, a, want) in cases {
        assert_eq!(passes(c, a), *want, "{c:?} on {a:?}");
    }
    assert_eq!(words("  Hello, (big) world!  -- 3.5 "), vec!["Hello", "big", "world", "3.5"]);
    // the rewrite obeys all checks at once, with the word budget counting what it adds
    let all = [&end, &max5, &tea, &caps];
    let out = comply("Making crepes is an easy and delicious process for anyone.", &all);
    assert!(all.iter().all(|c| passes(c, &out)), "{out}");
    assert_eq!(out, "TEA, MAKING CREPES IS AMEN.");
    let out = comply("Making crepes is easy. Try it!", &[&small, &tea]);
    assert_eq!(out, "tea, making crepes is easy. try it!");
    assert!(passes(&small, &out) && passes(&tea, &out));
    // an answer without a letter gets one
    assert!(passes(&small, &comply("42", &[&small])));
}

fn inst(checks: &[(&str, Check)]) -> Instruction {
    Instruction {
        text: "x".into(),
        short: false,
        constraints: checks.iter().map(|(f, c)| Constraint { family: f.to_string(), value: String::new(), check: Some(c.clone()) }).collect(),
    }
}

fn transcript(i: Instruction, answers: &[&str]) -> Transcript {
    Transcript {
        instruction: i.text.clone(),
        users: vec!["u".into(); 6],
        answers: answers.iter().map(|s| s.to_string()).collect(),
        ended: vec![true; answers.len()],
        inst: Some(i),
    }
}

#[test]
fn adherence_counts_per_family_and_for_all_checks() {
    let a = inst(&[("end_word", Check::EndWord("amen".into())), ("capitals", Check::Capitals)]);
    let b = inst(&[("end_word", Check::EndWord("sir".into()))]);
    let trs = vec![
        transcript(a.clone(), &["YES AMEN", "yes amen", "NO"]),
        transcript(b.clone(), &["yes sir", "no"]),
        transcript(a, &["no"]), // stopped after one turn (context full)
    ];
    let t = adherence(&trs, &[1, 2, 3]);
    assert_eq!(t.len(), 3);
    // turn 1: end_word 2/3 (YES AMEN, yes sir), capitals 1/2 (YES AMEN), all 2/3
    assert_eq!((t[0].dialogs, t[0].families["end_word"].pass, t[0].families["end_word"].n), (3, 2, 3));
    assert_eq!((t[0].families["capitals"].pass, t[0].families["capitals"].n), (1, 2));
    assert_eq!((t[0].all.pass, t[0].all.n), (2, 3));
    // turn 2: two dialogs; end_word 1/2 (yes amen), capitals 0/1, all 0/2
    assert_eq!((t[1].dialogs, t[1].families["end_word"].pass, t[1].all.pass), (2, 1, 0));
    // turn 3: one dialog
    assert_eq!((t[2].dialogs, t[2].all.pass, t[2].all.n), (1, 0, 1));
    assert_eq!(gatt::by_turn(&t)[&1], 2.0 / 3.0);
    // turns that nobody reached are replaced by the last one reached
    assert_eq!(measured_turns(&[2, 4, 6, 20], &trs), vec![2, 3]);
    assert_eq!(measured_turns(&[1, 2], &trs), vec![1, 2]);
    assert_eq!(measured_turns(&[5], &[]), Vec::<usize>::new());
}

#[test]
fn the_system_span_holds_the_instruction_text() {
    let tok = tok();
    let text = "Last word: indeed; Mention: garden";
    let msgs = eval_messages(text, &["How are you today?".to_string(), "And tomorrow?".to_string()], &["Fine.".to_string()], 2);
    assert_eq!(msgs.len(), 4);
    let (ids, _) = encode_dialog_last(&tok, &msgs, false).unwrap();
    let span = system_span(&tok, &ids, text).unwrap();
    let got = tok.decode(&ids[span.clone()]).unwrap();
    assert!(got.trim().starts_with("Last") && got.contains("Mention: garden"), "{got:?}");
    assert!(!got.contains("SYS") && !got.contains("How"), "{got:?}");
}

#[test]
fn a_random_model_carries_dialogs_and_its_attention_is_a_mass() {
    let be = CpuBackend::new(1).unwrap();
    let tok = tok();
    let mut cfg = Config::new(tok.vocab_size(), 32, 64, 2, 2, 1);
    cfg.max_seq_len = 160;
    let model = Model::init_random(&be, cfg, 4).unwrap();
    let i = inst(&[("mention", Check::Mention("tea".into()))]);
    let mut i = i;
    i.text = "Mention: tea".into();
    let dialogs: Vec<EvalDialog> = (0..3).map(|k| EvalDialog { instruction: i.clone(), users: vec![format!("question number {k}"); 10] }).collect();
    let o = EvalOpts { max_new: 8, sampling: Sampling { temperature: 1.0, top_k: None, top_p: None }, batch: 2, seed: 1, max_tokens: 160 };
    let trs = gatt::converse(&be, &model, &tok, &dialogs, &o).unwrap();
    for t in &trs {
        assert!(!t.answers.is_empty() && t.answers.len() < 10, "the context of 160 ends the dialog early: {}", t.answers.len());
        // the last answered turn fit the context
        let msgs = eval_messages(&t.instruction, &t.users, &t.answers, t.answers.len());
        assert!(encode_dialog_last(&tok, &msgs, true).unwrap().0.len() <= 160);
    }
    let again = gatt::converse(&be, &model, &tok, &dialogs, &o).unwrap();
    assert_eq!(trs, again, "seeded");
    let att = gatt::system_attention(&be, &model, &tok, &trs, 2).unwrap();
    assert_eq!(att.per_layer.len(), 2);
    assert!(att.dialogs >= 1);
    for x in att.per_layer.iter().chain(att.example.iter().flatten()) {
        assert!((0.0..=1.0 + 1e-9).contains(x), "{x}");
    }
    assert_eq!(att.example[0].len(), att.example_tokens.len());
}

#[test]
fn adherence_by_value_tells_apart_a_model_that_always_answers_one_way() {
    let case = |v: &str, c: Check| Instruction {
        text: format!("Letters: {v}"),
        short: true,
        constraints: vec![Constraint { family: "case".into(), value: v.into(), check: Some(c) }],
    };
    // a model that always shouts: every "capital" dialog obeys, no "small" one does
    let trs = vec![
        transcript(case("capital", Check::Capitals), &["YES"]),
        transcript(case("capital", Check::Capitals), &["NO"]),
        transcript(case("small", Check::Lowercase), &["YES"]),
    ];
    let t = adherence(&trs, &[1]);
    assert_eq!((t[0].families["case"].pass, t[0].families["case"].n), (2, 3));
    assert_eq!((t[0].by_value["case: capital"].pass, t[0].by_value["case: capital"].n), (2, 2));
    assert_eq!((t[0].by_value["case: small"].pass, t[0].by_value["case: small"].n), (0, 1));
    // a value-less family is keyed by its name alone
    let t = adherence(&[transcript(inst(&[("capitals", Check::Capitals)]), &["OK"])], &[1]);
    assert_eq!(t[0].by_value.keys().collect::<Vec<_>>(), vec!["capitals"]);
}
