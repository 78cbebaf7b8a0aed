//! Ghost Attention data construction (PAPER.md section 7): instructions
//! from the configured lists only, about half of them shortened under a
//! fixed seed; in the sampling context the instruction is on every user
//! turn; in the training sample it appears exactly once, as the first
//! turn's system message, and the loss mask is 1 exactly on the final
//! answer's tokens and its EOS; `build` on a small random policy keeps
//! those properties, cuts dialogs whose next turn does not fit, and the
//! baseline keeps the dataset's answers; bad input is refused or counted.

use llama2_model::chat::{encode_dialog_last, Message, Role, B_SYS, E_SYS};
use llama2_model::generate::Sampling;
use llama2_model::tokenizer::Tokenizer;
use llama2_model::{Config, Model};
use llama2_runtime::CpuBackend;
use llama2_train::gatt::{
    self, build::sampling_context, build::training_messages, build_dialogs, load_instructions, BuildOpts, Check, Dialog, DialogOpts, Examples, InstructionSet,
};
use llama2_train::sft::{load_records, LossOn, Packing, SftData};
use std::path::{Path, PathBuf};

fn tok() -> Tokenizer {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/tokenizer/botchan_spm_llama_settings_1000.model");
    Tokenizer::load(&p).unwrap()
}

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/gatt/instructions.json")
}

fn tmp(name: &str, text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("llama2-gatt-{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn instructions_use_only_the_configured_lists_and_half_are_short() {
    let set = load_instructions(&shipped(), &[]).unwrap();
    let n = 4000;
    let insts = set.sample_n(n, 42, "test", false).unwrap();
    let mut short = 0;
    let mut families_seen = std::collections::BTreeSet::new();
    for i in &insts {
        assert!((set.min_constraints..=set.max_constraints).contains(&i.constraints.len()), "{i:?}");
        let mut names: Vec<&str> = i.constraints.iter().map(|c| c.family.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), i.constraints.len(), "a family twice in {i:?}");
        for c in &i.constraints {
            let f = set.families.iter().find(|f| f.name == c.family).expect("unknown family");
            assert!(f.values.contains(&c.value), "value {:?} is not in the list of {}", c.value, f.name);
            // the text is built from this family's template of the chosen form
            let part = if i.short { &f.short } else { &f.long }.replace("{x}", &c.value);
            assert!(i.text.contains(&part), "{:?} lacks {part:?}", i.text);
            assert_eq!(c.check.is_some(), f.check.is_some());
            families_seen.insert(c.family.clone());
        }
        short += i.short as usize;
    }
    assert_eq!(families_seen.len(), set.families.len(), "every family is drawn");
    // binomial(4000, 0.5): sd = sqrt(4000 / 4) = 31.6; 4 sd either side
    let sd = (n as f64 * 0.25).sqrt();
    assert!(((short as f64) - n as f64 / 2.0).abs() < 4.0 * sd, "{short} short of {n}");
    // the paper's example, shortened
    let fig = set.families.iter().find(|f| f.name == "figure").unwrap();
    assert_eq!(fig.long.replace("{x}", "Napoleon"), "Always act as Napoleon from now.");
    assert_eq!(fig.short.replace("{x}", "Napoleon"), "Figure: Napoleon");
    // same seed, same instructions; another seed, others
    assert_eq!(insts, set.sample_n(n, 42, "test", false).unwrap());
    assert_ne!(insts, set.sample_n(n, 43, "test", false).unwrap());
    // --families keeps only those lists
    let only = load_instructions(&shipped(), &["mention".into(), "case".into()]).unwrap();
    for i in only.sample_n(200, 1, "t", false).unwrap() {
        assert!(i.constraints.iter().all(|c| c.family == "mention" || c.family == "case"));
    }
    // the case family: one value per instruction, each mapped to its check, both drawn
    let case = load_instructions(&shipped(), &["case".into()]).unwrap();
    let drawn = case.sample_n(400, 2, "t", true).unwrap();
    for i in &drawn {
        let c = &i.constraints[0];
        let want = if c.value == "capital" { Check::Capitals } else { Check::Lowercase };
        assert_eq!((i.constraints.len(), c.check.as_ref()), (1, Some(&want)), "{i:?}");
    }
    let capital = drawn.iter().filter(|i| i.constraints[0].value == "capital").count();
    assert!((150..=250).contains(&capital), "{capital} of 400 ask for capitals (binomial, sd 10)");
    // checkable-only draws always carry a check
    assert!(set.sample_n(300, 5, "t", true).unwrap().iter().all(|i| i.checks().next().is_some()));
}

#[test]
fn bad_instruction_files_are_refused_with_a_hint() {
    let cases = [
        (r#"{"families": []}"#, "empty"),
        (r#"{"families": [{"name": "a", "long": "x {x}", "short": "y {x}", "values": []}]}"#, "empty value list"),
        (r#"{"families": [{"name": "a", "check": "rhyme", "long": "x {x}", "short": "y {x}", "values": ["b"]}]}"#, "unknown check"),
        (r#"{"families": [{"name": "a", "check": "max_words", "long": "x {x}", "short": "y {x}", "values": ["many"]}]}"#, "whole number"),
        (r#"{"families": [{"name": "a", "check": "end_word", "long": "x {x}", "short": "y {x}", "values": ["two words"]}]}"#, "one word"),
        (r#"{"max_constraints": 3, "families": [{"name": "a", "long": "x {x}", "short": "y {x}", "values": ["b"]}]}"#, "max_constraints"),
        (r#"{"families": [{"name": "a", "check": "case", "long": "x {x}", "short": "y {x}", "values": ["upper"]}]}"#, "`capital` or `small`"),
        (r#"{"families": "#, "not a valid"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let p = tmp(&format!("bad{i}.json"), text);
        let e = load_instructions(&p, &[]).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains("HINT"), "case {i}: {e}");
        let _ = std::fs::remove_file(p);
    }
    let e = load_instructions(&shipped(), &["astrology".into()]).unwrap_err().to_string();
    assert!(e.contains("astrology") && e.contains("HINT"), "{e}");
    let uncheckable = load_instructions(&shipped(), &["hobby".into()]).unwrap();
    assert!(uncheckable.sample_n(3, 0, "t", true).unwrap_err().to_string().contains("HINT"));
}

fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("question {i} about the weather")).collect()
}

fn answers(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("reply {i} is rather long and kind")).collect()
}

#[test]
fn the_instruction_is_on_every_user_turn_while_sampling_and_once_in_the_sample() {
    let inst = "Figure: Napoleon; Last word: amen";
    for turn in 0..5 {
        let ctx = sampling_context(inst, &users(turn + 1), &answers(turn)).unwrap();
        assert_eq!(ctx.len(), 2 * turn + 1);
        assert_eq!(ctx.last().unwrap().role, Role::User);
        for (i, m) in ctx.iter().enumerate() {
            match m.role {
                Role::User => assert_eq!(m.content, format!("{B_SYS}{inst}{E_SYS}question {} about the weather", i / 2)),
                Role::Assistant => assert!(!m.content.contains(inst)),
                Role::System => panic!("no separate system message while sampling"),
            }
        }
    }
    assert!(sampling_context(inst, &users(2), &answers(2)).is_err());
    // the training sample: the instruction once, as the system message of turn 1
    let tok = tok();
    let d = training_messages(inst, &users(4), &answers(4)).unwrap();
    assert_eq!(d[0], Message::new(Role::System, inst));
    assert_eq!(d.iter().filter(|m| m.content.contains(inst)).count(), 1);
    let (ids, _) = encode_dialog_last(&tok, &d, true).unwrap();
    let text = tok.decode(&ids).unwrap();
    assert_eq!(text.matches("Napoleon").count(), 1, "{text}");
    assert!(text.find("Napoleon").unwrap() < text.find("question 0").unwrap(), "the system message comes before the first user turn: {text}");
}

/// Checks the loss mask of a built record: true exactly on the final
/// answer's tokens and its EOS.
fn check_last_only_mask(tok: &Tokenizer, msgs: &[Message]) {
    let (ids, mask) = encode_dialog_last(tok, msgs, true).unwrap();
    let eos = tok.eos_id().unwrap();
    let bos = tok.bos_id().unwrap();
    let learned: Vec<usize> = (0..ids.len()).filter(|&i| mask[i]).collect();
    // a contiguous run that ends with the final EOS
    assert_eq!(*learned.last().unwrap(), ids.len() - 1);
    assert_eq!(ids[ids.len() - 1], eos);
    assert!(learned.windows(2).all(|w| w[1] == w[0] + 1), "mask is not one run");
    // inside the last turn (after its BOS), and decoding to the last answer
    let last_bos = ids.iter().rposition(|&x| x == bos).unwrap();
    assert!(learned[0] > last_bos);
    let answer = &learned[..learned.len() - 1];
    let got = tok.decode(&answer.iter().map(|&i| ids[i]).collect::<Vec<_>>()).unwrap();
    assert_eq!(got.trim(), msgs.last().unwrap().content.trim());
    // every earlier EOS (the end of earlier answers) carries no loss
    for (i, &x) in ids.iter().enumerate().take(ids.len() - 1) {
        if x == eos {
            assert!(!mask[i], "an earlier answer's EOS is learned");
        }
    }
}

fn policy(be: &CpuBackend, vocab: usize) -> Model<CpuBackend> {
    let mut cfg = Config::new(vocab, 32, 64, 2, 2, 1);
    cfg.max_seq_len = 512;
    Model::init_random(be, cfg, 3).unwrap()
}

fn opts(max_tokens: usize, ex: Examples) -> BuildOpts {
    BuildOpts {
        max_new: 6,
        sampling: Sampling { temperature: 1.0, top_k: None, top_p: None },
        batch: 4,
        seed: 9,
        examples: ex,
        max_tokens,
        k: 1,
        by_checks: false,
        comply: false,
    }
}

#[test]
fn build_makes_sft_records_with_the_loss_on_the_last_answer() {
    let be = CpuBackend::new(1).unwrap();
    let tok = tok();
    let model = policy(&be, tok.vocab_size());
    let set = load_instructions(&shipped(), &[]).unwrap();
    let dialogs: Vec<Dialog> = (0..5).map(|k| Dialog { users: users(2 + k % 3), answers: answers(2 + k % 3) }).collect();
    let insts = set.sample_n(dialogs.len(), 1, "t", false).unwrap();
    for ex in [Examples::Last, Examples::Prefixes] {
        let built = gatt::build(&be, &model, &tok, &dialogs, &insts, None, &opts(400, ex)).unwrap();
        let turns: usize = dialogs.iter().map(|d| d.users.len()).sum();
        assert_eq!(built.stats.answers, turns, "every turn re-sampled");
        let want = match ex {
            Examples::Last => dialogs.len(),
            Examples::Prefixes => turns,
        };
        assert_eq!((built.gatt.len(), built.baseline.len()), (want, want));
        // write, read back through the SFT loader, check every record
        let path = tmp(&format!("built-{ex:?}.jsonl"), &built.gatt.iter().map(|s| s.to_json().to_string() + "\n").collect::<String>());
        let recs = load_records(&path).unwrap();
        assert_eq!(recs.len(), want);
        for (r, s) in recs.iter().zip(&built.gatt) {
            assert_eq!(r.loss, LossOn::LastAnswer);
            assert_eq!(r.messages, s.messages);
            assert_eq!(r.messages[0].role, Role::System);
            assert_eq!(r.messages.iter().filter(|m| m.content.contains(&s.instruction.text)).count(), 1);
            check_last_only_mask(&tok, &r.messages);
        }
        // the baseline: same users and instruction, the dataset's answers
        for (g, b) in built.gatt.iter().zip(&built.baseline) {
            assert_eq!(g.instruction, b.instruction);
            let u = |m: &[Message]| m.iter().filter(|x| x.role == Role::User).map(|x| x.content.clone()).collect::<Vec<_>>();
            assert_eq!(u(&g.messages), u(&b.messages));
            let a: Vec<String> = b.messages.iter().filter(|x| x.role == Role::Assistant).map(|x| x.content.clone()).collect();
            assert_eq!(a, answers(a.len()));
        }
        // whole packing: every row holds one record, its loss on its last answer
        let data = SftData::from_records(&tok, &recs, 1, 400, None, true, Packing::Whole).unwrap();
        assert_eq!((data.skipped, data.batches_per_epoch()), (0, recs.len()));
        let _ = std::fs::remove_file(path);
    }
    // the same seed gives the same samples
    let a = gatt::build(&be, &model, &tok, &dialogs, &insts, None, &opts(400, Examples::Last)).unwrap();
    let b = gatt::build(&be, &model, &tok, &dialogs, &insts, None, &opts(400, Examples::Last)).unwrap();
    assert_eq!(a.gatt, b.gatt);
}

#[test]
fn turns_that_no_longer_fit_are_cut_and_counted() {
    let be = CpuBackend::new(1).unwrap();
    let tok = tok();
    let model = policy(&be, tok.vocab_size());
    let set = load_instructions(&shipped(), &[]).unwrap();
    let long = Dialog { users: users(8), answers: answers(8) };
    let huge = Dialog { users: vec!["word ".repeat(300)], answers: vec!["a".into()] };
    let insts = set.sample_n(2, 1, "t", false).unwrap();
    let built = gatt::build(&be, &model, &tok, &[long, huge], &insts, None, &opts(90, Examples::Last)).unwrap();
    let st = &built.stats;
    assert_eq!((st.dropped, st.cut_by_context, st.dialogs_used), (1, 1, 1), "{st:?}");
    assert!(st.answers < 8 && st.answers >= 1, "{st:?}");
    for s in &built.gatt {
        assert!(encode_dialog_last(&tok, &s.messages, true).unwrap().0.len() <= 90);
    }
    // mismatched inputs are errors, not panics
    assert!(gatt::build(&be, &model, &tok, &[], &insts, None, &opts(90, Examples::Last)).is_err());
    let mut o = opts(90, Examples::Last);
    o.k = 4;
    let e = gatt::build(&be, &model, &tok, &[Dialog { users: users(1), answers: answers(1) }], &insts[..1], None, &o).unwrap_err().to_string();
    assert!(e.contains("reward model"), "{e}");
}

#[test]
fn dialogs_are_chained_to_the_asked_lengths_and_bad_sources_skipped() {
    let m = |r, c: &str| Message::new(r, c);
    let single: Vec<Vec<Message>> = (0..7).map(|i| vec![m(Role::User, &format!("q{i}")), m(Role::Assistant, &format!("a{i}"))]).collect();
    let mut sources = single.clone();
    // a multi-turn record with a system message (dropped: GAtt brings its own)
    sources.push(vec![
        m(Role::System, "s"),
        m(Role::User, "u1"),
        m(Role::Assistant, "r1"),
        m(Role::User, "u2"),
        m(Role::Assistant, "r2"),
        m(Role::User, "u3"),
        m(Role::Assistant, "r3"),
    ]);
    // no user turn; turns out of order
    sources.push(vec![m(Role::System, "s"), m(Role::Assistant, "x")]);
    sources.push(vec![m(Role::Assistant, "x"), m(Role::User, "y")]);
    let d = build_dialogs(&sources, DialogOpts { min_turns: 2, max_turns: 4, count: 30, seed: 5 }).unwrap();
    assert_eq!(d.skipped, 2);
    assert_eq!(d.dialogs.len(), 30);
    assert_eq!(d.dialogs.iter().filter(|x| x.users[0] == "u1").count(), 1, "the multi-turn record is used once, as it is");
    for x in &d.dialogs {
        assert!((2..=4).contains(&x.users.len()) || x.users[0] == "u1");
        assert_eq!(x.users.len(), x.answers.len());
        for (u, a) in x.users.iter().zip(&x.answers) {
            if let Some(i) = u.strip_prefix('q') {
                assert_eq!(a, &format!("a{i}"), "a chained turn keeps its own answer");
            }
        }
    }
    let lens: std::collections::BTreeSet<usize> = d.dialogs.iter().filter(|x| x.users[0] != "u1").map(|x| x.users.len()).collect();
    assert_eq!(lens, [2, 3, 4].into_iter().collect(), "every length in the range occurs");
    let cut = build_dialogs(&sources, DialogOpts { min_turns: 1, max_turns: 2, count: 1, seed: 5 }).unwrap();
    assert_eq!(cut.dialogs[0].users, vec!["u1", "u2"], "multi-turn records are cut to max_turns");
    let e = build_dialogs(&sources[7..], DialogOpts { min_turns: 1, max_turns: 2, count: 3, seed: 5 });
    assert!(e.is_ok(), "one usable multi-turn record is enough");
    let e = build_dialogs(&sources[8..], DialogOpts { min_turns: 1, max_turns: 2, count: 3, seed: 5 }).unwrap_err().to_string();
    assert!(e.contains("no") && e.contains("HINT"), "{e}");
    assert!(build_dialogs(&single, DialogOpts { min_turns: 3, max_turns: 2, count: 3, seed: 5 }).is_err());
}

#[test]
fn demonstrations_obey_their_checkable_constraints() {
    let set: InstructionSet = load_instructions(&shipped(), &[]).unwrap();
    let texts = [
        "The car accelerated rapidly.",
        "Making crepes is easy: mix flour, eggs and milk, then cook thin layers in a hot pan for a minute on each side.",
        "\"Chillax\" - a combination of chill and relax.",
        "",
        "1. 2. 3.",
    ];
    let sources: Vec<Vec<Message>> =
        (0..300).map(|i| vec![Message::new(Role::User, format!("q{i}")), Message::new(Role::Assistant, texts[i % texts.len()])]).collect();
    let (demos, insts) = gatt::demos(&sources, &set, 11).unwrap();
    assert_eq!(demos.len(), 300);
    let mut checked = 0;
    for (i, (d, inst)) in demos.iter().zip(&insts).enumerate() {
        assert_eq!(d[0], Message::new(Role::System, inst.text.clone()));
        for (fam, c) in inst.checks() {
            assert!(gatt::passes(c, &d[2].content), "{fam} {c:?} fails on {:?}", d[2].content);
            checked += 1;
        }
        if inst.checks().next().is_none() {
            assert_eq!(d[2].content, texts[i % texts.len()], "the paper's families leave the answer alone");
        }
    }
    assert!(checked > 100);
}

#[test]
fn best_of_k_keeps_the_reward_models_favourite() {
    let be = CpuBackend::new(1).unwrap();
    let tok = tok();
    let model = policy(&be, tok.vocab_size());
    let mut rcfg = Config::new(tok.vocab_size(), 32, 64, 2, 2, 1);
    rcfg.max_seq_len = 512;
    rcfg.head = llama2_model::config::Head::Score;
    let rm = Model::init_random(&be, rcfg, 8).unwrap();
    let set = load_instructions(&shipped(), &[]).unwrap();
    let dialogs: Vec<Dialog> = (0..4).map(|_| Dialog { users: users(2), answers: answers(2) }).collect();
    let insts = set.sample_n(4, 1, "t", false).unwrap();
    let mut o = opts(400, Examples::Last);
    o.k = 4;
    let st = gatt::build(&be, &model, &tok, &dialogs, &insts, Some(&rm), &o).unwrap().stats;
    let (best, all) = (st.rm_best_mean.unwrap(), st.rm_all_mean.unwrap());
    assert!(best > all, "the kept answers score above the mean of all samples: {best} vs {all}");
    o.k = 1;
    let st = gatt::build(&be, &model, &tok, &dialogs, &insts, Some(&rm), &o).unwrap().stats;
    assert_eq!(st.rm_best_mean, st.rm_all_mean, "with one sample the kept one is the only one");
    // a model without a score head is refused
    o.k = 2;
    let e = gatt::build(&be, &model, &tok, &dialogs, &insts, Some(&model), &o).unwrap_err().to_string();
    assert!(e.contains("score head") && e.contains("HINT"), "{e}");
}

#[test]
fn choose_prefers_passed_checks_then_the_reward_then_the_first() {
    // checks first: the only sample passing two checks wins over a higher reward
    assert_eq!(gatt::choose(&[1, 2, 0, 1], Some(&[5.0, 0.1, 9.0, 5.0])), 1);
    // among the samples passing the most checks, the reward model's best
    assert_eq!(gatt::choose(&[1, 0, 1, 1], Some(&[0.5, 9.0, 0.7, 0.6])), 2);
    // reward ties: the first
    assert_eq!(gatt::choose(&[0, 0, 0], Some(&[0.3, 0.3, 0.1])), 0);
    // no reward model: the first of the candidates
    assert_eq!(gatt::choose(&[0, 1, 0, 1], None), 1);
    assert_eq!(gatt::choose(&[0, 0], None), 0);
}

#[test]
fn best_of_k_by_checks_keeps_answers_that_obey() {
    let be = CpuBackend::new(1).unwrap();
    let tok = tok();
    let model = policy(&be, tok.vocab_size());
    // one checkable family a random model obeys now and then: at most 5, 10 or 15 words in
    // answers of 12 random tokens
    let set = load_instructions(&shipped(), &["max_words".to_string()]).unwrap();
    let dialogs: Vec<Dialog> = (0..12).map(|_| Dialog { users: users(2), answers: answers(2) }).collect();
    let insts = set.sample_n(dialogs.len(), 1, "t", false).unwrap();
    let rate = |st: &gatt::BuildStats| {
        let r = &st.sampled_adherence["max_words"];
        r.pass as f64 / r.n as f64
    };
    let mut o = opts(400, Examples::Last);
    o.max_new = 12;
    let one = rate(&gatt::build(&be, &model, &tok, &dialogs, &insts, None, &o).unwrap().stats);
    o.k = 6;
    o.by_checks = true;
    let best = rate(&gatt::build(&be, &model, &tok, &dialogs, &insts, None, &o).unwrap().stats);
    assert!(one < 0.9 && best > one, "keeping the obeying sample of 6 raises adherence: {best} vs {one}");
    // K > 1 with neither a reward model nor the checks is refused
    o.by_checks = false;
    let e = gatt::build(&be, &model, &tok, &dialogs, &insts, None, &o).unwrap_err().to_string();
    assert!(e.contains("HINT"), "{e}");
}

#[test]
fn comply_makes_every_kept_answer_obey_and_is_the_next_turns_context() {
    let be = CpuBackend::new(1).unwrap();
    let tok = tok();
    let model = policy(&be, tok.vocab_size());
    // every checkable family; a random model obeys almost none of them
    let set = load_instructions(&shipped(), &["end_word".into(), "max_words".into(), "mention".into(), "case".into()]).unwrap();
    let dialogs: Vec<Dialog> = (0..8).map(|_| Dialog { users: users(3), answers: answers(3) }).collect();
    let insts = set.sample_n(dialogs.len(), 3, "t", true).unwrap();
    let mut o = opts(800, Examples::Prefixes);
    o.max_new = 10;
    let plain = gatt::build(&be, &model, &tok, &dialogs, &insts, None, &o).unwrap();
    o.comply = true;
    let fixed = gatt::build(&be, &model, &tok, &dialogs, &insts, None, &o).unwrap();
    // the same samples were drawn: adherence as sampled is the same, and the rewrite counted
    assert_eq!(plain.stats.sampled_adherence, fixed.stats.sampled_adherence);
    let broke: usize = plain.gatt.iter().filter(|s| s.instruction.checks().any(|(_, c)| !gatt::checks::passes(c, &s.messages.last().unwrap().content))).count();
    assert!(broke > 0 && plain.stats.rewritten == 0, "a random model breaks some constraint ({broke} samples)");
    assert!(fixed.stats.rewritten > 0);
    for s in &fixed.gatt {
        // every assistant message of every sample obeys every check (learned or context)
        for m in s.messages.iter().filter(|m| m.role == Role::Assistant) {
            for (fam, c) in s.instruction.checks() {
                assert!(gatt::checks::passes(c, &m.content), "{fam} broken in {:?}", m.content);
            }
        }
        // the instruction stays once, in the system message
        assert_eq!(s.messages.iter().filter(|m| m.content.contains(&s.instruction.text)).count(), 1);
    }
    // the baseline keeps the dataset's answers either way
    assert_eq!(plain.baseline, fixed.baseline);
    // the every-turn control: the same answers, the instruction on every user turn, no system message
    assert_eq!((fixed.every_turn.len(), fixed.stats.every_turn_too_long), (fixed.gatt.len(), 0));
    assert!(!fixed.every_turn.is_empty());
    for (e, g) in fixed.every_turn.iter().zip(&fixed.gatt) {
        assert_eq!(e.messages.len() + 1, g.messages.len());
        assert!(e.messages.iter().all(|m| m.role != Role::System));
        for (em, gm) in e.messages.iter().zip(&g.messages[1..]) {
            match em.role {
                Role::User => assert_eq!(em.content, format!("{B_SYS}{}{E_SYS}{}", g.instruction.text, gm.content)),
                _ => assert_eq!(em, gm),
            }
        }
    }
}
