//! Rejection sampling works as the paper says (PAPER.md section 6), on a
//! tiny policy and a reward model built by hand:
//! - the gain of best-of-N over the median grows with N (Figure 7);
//! - one iteration (K samples per prompt, best kept, SFT on the kept
//!   answers through the one trainer) raises the mean reward of the policy
//!   on HELD-OUT prompts, judged by the reward model and by the quantity it
//!   stands for, counted directly (a scorer nothing was trained on).
//!
//! The reward model (`hand_made_rm`): a one-layer `LlamaForSequenceClassification`
//! whose score grows with the fraction of "good" tokens (ids >= V/2) in the
//! sequence: the embedding carries a constant and a good-token flag, the
//! attention has zero queries (so it averages the flags over the sequence),
//! o_proj writes the average into one channel, the MLP is zero, and the
//! score head reads that channel (minus a constant). The policy starts from
//! transformers' initialisation (std 0.02), so it samples nearly uniformly:
//! half of its tokens are good, with a spread best-of-K can select from.

use llama2::model::config::Head;
use llama2::model::generate::{BatchOptions, Sampling};
use llama2::model::{Config, Model, ParamId, ParamLayout};
use llama2::runtime::rng::Rng;
use llama2::runtime::CpuBackend;
use llama2::train::optim::AdamWConfig;
use llama2::train::rejection::{
    best_of_n, best_per_prompt, mean_reward, rewards_by_prompt, sample_and_score, training_examples, update_pool, Answer, PoolMode, Rewarders, RsPrompt,
};
use llama2::train::run::BatchSource;
use llama2::train::score::{check_reward_model, score_sequences};
use llama2::train::sft::{Packing, SftData};
use llama2::train::step::LmTrainer;

const V: usize = 64;
const K: usize = 8;
const NEW: usize = 16;

fn good(id: u32) -> bool {
    id as usize >= V / 2
}

/// The direct measure the reward model stands for: the fraction of good
/// tokens in an answer.
fn good_fraction(a: &Answer) -> f64 {
    a.ids.iter().filter(|&&x| good(x)).count() as f64 / a.ids.len().max(1) as f64
}

fn hand_made_rm(be: &CpuBackend) -> Model<CpuBackend> {
    hand_made_rm_scaled(be, 1.0)
}

/// The reward model above with its score multiplied by `sign` (-1: a
/// "safety" model that dislikes good tokens).
fn hand_made_rm_scaled(be: &CpuBackend, sign: f32) -> Model<CpuBackend> {
    let mut cfg = Config::new(V, 16, 16, 1, 1, 1);
    cfg.max_seq_len = 64;
    cfg.head = Head::Score;
    let lay = ParamLayout::new(&cfg);
    let mut w = vec![0f32; lay.total];
    let c = cfg.hidden;
    let mut set = |id: ParamId, i: usize, x: f32| {
        let (off, len) = lay.range(id, 0);
        assert!(i < len);
        w[off + i] = x;
    };
    for tok in 0..V {
        set(ParamId::Embed, tok * c, 10.0); // a constant channel: the norms stay ~constant
        set(ParamId::Embed, tok * c + 1, if good(tok as u32) { 1.0 } else { 0.0 });
    }
    for i in 0..c {
        set(ParamId::Ln1, i, 1.0);
        set(ParamId::Ln2, i, 1.0);
        set(ParamId::Lnf, i, 1.0);
    }
    // q = 0: uniform attention over the sequence; v[0] = the good flag
    set(ParamId::Wv, 1, 1.0); // Wv (kv_dim, C)[0][1]
    set(ParamId::Wo, 2 * c, 10.0); // Wo (C, q_dim)[2][0]: the average into channel 2
    set(ParamId::Score, 2, 4.0 * sign);
    set(ParamId::Score, 0, -0.8 * sign);
    Model::from_host(be, cfg, &w).unwrap()
}

fn prompts(rng: &mut Rng, n: usize) -> Vec<RsPrompt> {
    (0..n)
        .map(|_| {
            let len = 3 + rng.below(6) as usize;
            let mut ids = vec![1u32];
            ids.extend((1..len).map(|_| 3 + rng.below(V as u64 - 3) as u32));
            RsPrompt { ids, unsafe_tag: false }
        })
        .collect()
}

#[test]
fn the_reward_model_scores_the_fraction_of_good_tokens() {
    let be = CpuBackend::new(1).unwrap();
    let rm = hand_made_rm(&be);
    check_reward_model(&rm, "test").unwrap();
    // the same prompt with 0, 4 and 8 good tokens out of 8
    let p = [1u32, 5, 6];
    let seqs: Vec<Vec<u32>> = [0usize, 4, 8].iter().map(|&g| p.iter().copied().chain((0..8).map(|i| if i < g { 40 } else { 10 })).collect()).collect();
    let s = score_sequences(&be, &rm, &seqs, 4096).unwrap();
    assert!(s[0] < s[1] && s[1] < s[2], "{s:?}");
    // a policy is not a reward model
    let policy = Model::init_random(&be, Config::new(V, 32, 64, 1, 2, 1), 0).unwrap();
    let e = check_reward_model(&policy, "--rm x").unwrap_err().to_string();
    assert!(e.contains("not a reward model") && e.contains("HINT"), "{e}");
}

/// With a safety model, each answer's reward comes from the paper's rule:
/// the safety model where the prompt is tagged unsafe or the safety reward
/// is below 0.15, the helpfulness model elsewhere.
#[test]
fn the_safety_model_decides_where_the_paper_says() {
    let be = CpuBackend::new(1).unwrap();
    let (help, safety) = (hand_made_rm(&be), hand_made_rm_scaled(&be, -3.0));
    let rw = Rewarders { helpfulness: &help, safety: Some(&safety), batch_tokens: 4096, safety_threshold: llama2::train::score::SAFETY_THRESHOLD };
    let mut cfg = Config::new(V, 32, 64, 1, 2, 1);
    cfg.max_seq_len = 64;
    let policy = Model::init_random(&be, cfg, 4).unwrap();
    let mut ps = prompts(&mut Rng::new(8), 12);
    for p in ps.iter_mut().step_by(3) {
        p.unsafe_tag = true;
    }
    let mut o = BatchOptions::new(NEW, Sampling { temperature: 1.0, top_k: None, top_p: None }, 2);
    o.samples = 4;
    let (ans, _) = sample_and_score(&be, &policy, &rw, &ps, &o, 1, &mut |_: &llama2::model::generate::BatchStats| {}).unwrap();
    let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
    let (mut by_tag, mut by_threshold, mut helpful) = (0, 0, 0);
    for a in &ans {
        let s = a.safety.unwrap();
        let use_safety = ps[a.prompt_index].unsafe_tag || sig(s) < 0.15;
        assert_eq!(a.rm, if use_safety { "safety" } else { "helpfulness" }, "{a:?}");
        let want = if use_safety { sig(s) } else { sig(a.helpfulness) };
        assert!((a.reward - want).abs() < 1e-6, "{a:?}");
        match (ps[a.prompt_index].unsafe_tag, use_safety) {
            (true, _) => by_tag += 1,
            (false, true) => by_threshold += 1,
            (false, false) => helpful += 1,
        }
    }
    // all three cases occur, so the rule was exercised
    assert!(by_tag > 0 && by_threshold > 0 && helpful > 0, "tagged {by_tag}, below 0.15 {by_threshold}, helpfulness {helpful}");
}

#[test]
fn one_iteration_improves_the_policy_on_held_out_prompts() {
    let be = CpuBackend::new(2).unwrap();
    let rm = hand_made_rm(&be);
    let rw = Rewarders { helpfulness: &rm, safety: None, batch_tokens: 4096, safety_threshold: llama2::train::score::SAFETY_THRESHOLD };
    let mut cfg = Config::new(V, 32, 64, 2, 4, 2);
    cfg.max_seq_len = 64;
    let policy = Model::init_random(&be, cfg, 11).unwrap();
    let mut rng = Rng::new(5);
    let (train, held) = (prompts(&mut rng, 48), prompts(&mut rng, 32));
    let t1 = Sampling { temperature: 1.0, top_k: None, top_p: None };
    let opts = |k: usize, seed: u64| {
        let mut o = BatchOptions::new(NEW, t1, seed);
        o.samples = k;
        o
    };
    let none = &mut |_: &llama2::model::generate::BatchStats| {};

    // the starting policy on held-out prompts (4 answers each)
    let (before, _) = sample_and_score(&be, &policy, &rw, &held, &opts(4, 99), 0, none).unwrap();

    // iteration 1: K answers per training prompt; Figure 7
    let (samples, _) = sample_and_score(&be, &policy, &rw, &train, &opts(K, 1), 1, none).unwrap();
    let fig7 = best_of_n(&rewards_by_prompt(&samples, train.len()));
    let gap: Vec<f64> = fig7.mean_max.iter().zip(&fig7.mean_median).map(|(m, d)| m - d).collect();
    eprintln!("Figure 7 (K = {K}, {} prompts): max {:?}\n median {:?}\n gap {:?}", train.len(), fig7.mean_max, fig7.mean_median, gap);
    assert_eq!(gap[0], 0.0, "one sample: its max is its median");
    // at powers of two (adjacent N can swap by noise; these cannot here)
    assert!(gap[1] > 0.0 && gap[3] > gap[1] && gap[7] > gap[3], "max - median must grow with N: {gap:?}");

    // the best answer per prompt, the pool, the SFT examples (answer tokens only)
    let best: Vec<Option<Answer>> = best_per_prompt(&samples, train.len()).iter().map(|i| i.map(|i| samples[i].clone())).collect();
    let pool = update_pool(&[], &best, PoolMode::All);
    let kept = pool.iter().flatten().map(|a| a.reward as f64).sum::<f64>() / train.len() as f64;
    assert!(kept > mean_reward(&samples), "the kept answers are better than the average sample");
    let examples = training_examples(&pool, &train);
    let (b, t) = (4, 32);
    let mut data = SftData::from_encoded(examples, b, t, Some(3), false, Packing::Concat).unwrap();
    let mut tr = LmTrainer::new(&be, policy, b, t, AdamWConfig::default()).unwrap();
    let steps = 8 * data.batches_per_epoch();
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..steps {
        let mb = data.next_batch().unwrap().unwrap();
        let st = tr.step(&be, std::slice::from_ref(&mb), 2e-3).unwrap();
        first.get_or_insert(st.loss);
        last = st.loss;
    }
    eprintln!("SFT on the {} kept answers: {steps} steps, loss {:.4} -> {last:.4}", pool.len(), first.unwrap());

    // the fine-tuned policy on the same held-out prompts, same streams
    let (after, _) = sample_and_score(&be, &tr.model, &rw, &held, &opts(4, 99), 1, none).unwrap();
    let (r0, r1) = (mean_reward(&before), mean_reward(&after));
    let frac = |a: &[Answer]| a.iter().map(good_fraction).sum::<f64>() / a.len() as f64;
    let (g0, g1) = (frac(&before), frac(&after));
    eprintln!(
        "held-out ({} prompts x 4): mean reward {r0:.4} -> {r1:.4}; good-token fraction {g0:.4} -> {g1:.4}; kept answers' mean reward {kept:.4}",
        held.len()
    );
    assert!(r1 > r0, "the reward model's mean reward on held-out prompts did not rise: {r0} -> {r1}");
    assert!(g1 > g0, "the good-token fraction on held-out prompts did not rise: {g0} -> {g1}");
}
