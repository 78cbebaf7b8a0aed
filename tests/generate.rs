//! Batched generation (`llama2::model::generate::generate_batch`): exact
//! against one-prompt-at-a-time decoding and against transformers' greedy
//! `generate` (fixtures from tools/scripts/make_gen_fixtures.py, 16 prompts
//! of 1 to 200 tokens), independent of the batch, and accounted for (ended
//! rows cost no work).

use llama2::model::generate::{generate_all, BatchOptions, Completion, Finish, Generator, Sampling};
use llama2::model::weights::Checkpoint;
use llama2::model::Model;
use llama2::runtime::rng::Rng;
use llama2::runtime::CpuBackend;
use std::path::{Path, PathBuf};

const EOS: u32 = 2;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gen")
}

/// The 16 prompts and transformers' greedy continuation of each.
fn golden() -> (Vec<Vec<u32>>, Vec<Vec<u32>>, usize) {
    let r = Checkpoint::open(&fixture().join("reference.safetensors")).unwrap();
    let new: usize = r.metadata(0).unwrap()["new_tokens"].parse().unwrap();
    let ints = |name: String| r.read_ints(&name).unwrap().1.iter().map(|&x| x as u32).collect::<Vec<u32>>();
    let n = r.names().filter(|k| k.starts_with("prompt.")).count();
    assert_eq!(n, 16);
    ((0..n).map(|i| ints(format!("prompt.{i}"))).collect(), (0..n).map(|i| ints(format!("greedy.{i}"))).collect(), new)
}

#[test]
fn batched_greedy_equals_one_at_a_time_and_transformers() {
    let be = CpuBackend::new(2).unwrap();
    let model = Model::load(&be, &fixture()).unwrap();
    let (prompts, want, new) = golden();
    let lens: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
    assert_eq!((lens.iter().min(), lens.iter().max()), (Some(&1), Some(&200)), "the fixture spans prompt lengths 1 to 200");
    for batch in [16, 5] {
        let mut o = BatchOptions::new(new, Sampling::GREEDY, 0);
        o.batch = batch;
        let (out, stats) = generate_all(&be, &model, &prompts, &o).unwrap();
        assert_eq!(out.len(), 16);
        for (i, c) in out.iter().enumerate() {
            assert_eq!((c.prompt, c.sample), (i, 0));
            // transformers' generate, this prompt alone
            assert_eq!(c.ids, want[i], "batch {batch}: prompt {i} (length {}) vs transformers", lens[i]);
            let ends = c.ids.last() == Some(&EOS);
            assert_eq!(c.finish, if ends { Finish::Eos } else { Finish::Length }, "prompt {i}");
            assert!(ends || c.ids.len() == new, "prompt {i}: stopped early without EOS");
        }
        // one prompt at a time through the single-sequence Generator
        for (i, p) in prompts.iter().enumerate() {
            let mut g = Generator::new(&be, &model, 1, p.len() + new).unwrap();
            let alone = g.generate(&be, &model, std::slice::from_ref(p), new, &Sampling::GREEDY, &mut Rng::new(0), true).unwrap();
            assert_eq!(out[i].ids, alone.ids[0], "batch {batch}: prompt {i} vs one at a time");
        }
        // ended rows cost nothing: every decoded row-step made a token (the
        // first token of each answer comes from its prefill)
        let tokens: usize = out.iter().map(|c| c.ids.len()).sum();
        assert_eq!(stats.generated, tokens);
        assert_eq!(stats.row_steps, tokens - out.len(), "batch {batch}: decode rows that made no token");
        assert_eq!(stats.prefill_tokens, lens.iter().sum::<usize>(), "each prompt prefilled once");
        assert!(stats.decode_steps >= new - 1);
    }
}

/// A sampled answer is bit for bit the same (ids and log-probabilities) for
/// batch sizes 1, 5 and 16, with other prompts around it (so at other rows
/// of the batch) and with its K samples spread over rows.
#[test]
fn sampled_answers_do_not_depend_on_the_batch() {
    let be = CpuBackend::new(2).unwrap();
    let model = Model::load(&be, &fixture()).unwrap();
    let (prompts, _, _) = golden();
    let sampling = Sampling { temperature: 1.0, top_k: Some(50), top_p: Some(0.95) };
    let run = |ps: &[Vec<u32>], batch: usize| -> Vec<Completion> {
        let mut o = BatchOptions::new(16, sampling, 77);
        o.samples = 3;
        o.batch = batch;
        o.logprobs = true;
        generate_all(&be, &model, ps, &o).unwrap().0
    };
    let base = run(&prompts, 1);
    assert_eq!(base.len(), 48);
    // the K samples of a prompt differ (one stream each)
    let differ = (0..16).filter(|&i| base[3 * i].ids != base[3 * i + 1].ids).count();
    assert!(differ >= 12, "only {differ} prompts got different samples");
    for batch in [5, 16] {
        assert_same(&run(&prompts, batch), &base, &format!("batch {batch}"));
    }
    // with 8 more prompts (other lengths) in the schedule, every answer of the
    // first 16 sits next to other rows, at other positions
    let mut rng = Rng::new(3);
    let mut more = prompts.clone();
    more.extend((0..8).map(|j| (0..7 + 23 * j).map(|_| 3 + rng.below(250) as u32).collect::<Vec<u32>>()));
    let mixed = run(&more, 16);
    assert_same(&mixed[..48], &base, "with other prompts in the batch");
    for c in &base {
        let lp = c.logprobs.as_ref().unwrap();
        assert_eq!(lp.len(), c.ids.len());
        assert!(lp.iter().all(|&x| x <= 0.0 && x.is_finite()));
    }
}

/// Bit-for-bit equality of two runs; on failure, the first answer that
/// differs (not all 48).
fn assert_same(got: &[Completion], want: &[Completion], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: number of answers");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!("{what}: answer {i} differs:\n  got  {:?}\n  want {:?}", got[i], want[i]);
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let be = CpuBackend::new(1).unwrap();
    let model = Model::load(&be, &fixture()).unwrap();
    let o = BatchOptions::new(4, Sampling::GREEDY, 0);
    let err = |ps: &[Vec<u32>], o: &BatchOptions| generate_all(&be, &model, ps, o).unwrap_err().to_string();
    let e = err(&[vec![1, 5], vec![]], &o);
    assert!(e.contains("prompt 1 is empty") && e.contains("HINT"), "{e}");
    let e = err(&[vec![1; 256]], &o);
    assert!(e.contains("256 tokens") && e.contains("context is 256") && e.contains("HINT"), "{e}");
    let e = err(&[vec![1, 999]], &o);
    assert!(e.contains("outside the vocabulary"), "{e}");
    let mut k0 = o.clone();
    k0.samples = 0;
    let e = err(&[vec![1]], &k0);
    assert!(e.contains("0 samples") && e.contains("HINT"), "{e}");
    let rm = Model::load(&be, &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/heads/seqcls")).unwrap();
    let e = generate_all(&be, &rm, &[vec![1]], &o).unwrap_err().to_string();
    assert!(e.contains("score head") && e.contains("HINT"), "{e}");
}

/// A prompt near the end of the context gets the positions that are left,
/// and stops there with `Length`.
#[test]
fn answers_stop_at_the_end_of_the_context() {
    let be = CpuBackend::new(1).unwrap();
    let model = Model::load(&be, &fixture()).unwrap();
    let mut rng = Rng::new(9);
    let long: Vec<u32> = (0..250).map(|_| 3 + rng.below(250) as u32).collect();
    let mut o = BatchOptions::new(20, Sampling::GREEDY, 0);
    o.stop_at_eos = false;
    let (out, _) = generate_all(&be, &model, &[vec![1, 7, 9], long], &o).unwrap();
    assert_eq!(out[0].ids.len(), 20);
    assert_eq!((out[1].ids.len(), out[1].finish), (6, Finish::Length), "256 positions - 250 prompt tokens");
}
