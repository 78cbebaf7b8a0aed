//! Rejection-sampling fine-tuning (PAPER.md section 6; the paper's section
//! 3.2.3): sample K answers per prompt from the latest policy, score them
//! with the reward model(s), keep the best answer per prompt, fine-tune the
//! policy on the kept answers with the SFT loss (answer tokens only).
//!
//! The pieces, in the order an iteration calls them:
//! - [`load_prompts`]: the prompts (ids, text in the Llama-2-chat format, or
//!   messages), with their "unsafe" tags;
//! - [`sample_and_score`]: K answers per prompt from batched generation
//!   (`llama2_model::generate::generate_batch`, one seeded stream per
//!   (prompt, sample)), scored by [`crate::score`] with the paper's
//!   helpfulness/safety rule;
//! - [`best_per_prompt`]: the best answer of each prompt (ties: the first
//!   sample);
//! - [`update_pool`]: the training set. [`PoolMode::All`] (the paper's fix
//!   from RLHF-V3 on) keeps, per prompt, the best answer over ALL
//!   iterations so far; [`PoolMode::Last`] only this iteration's (the
//!   earlier variant, which regressed);
//! - [`training_examples`]: (prompt + answer ids, loss mask on the answer)
//!   for `crate::sft::SftData::from_encoded`, trained by the one trainer
//!   (`crate::step::LmTrainer`) from the previous iteration's policy;
//! - [`best_of_n`]: the paper's Figure 7 (and, per temperature, Figure 8):
//!   for N = 1..K, the mean over prompts of the max and of the median reward
//!   of the first N samples; [`distribution`]: a reward histogram.
//!
//! Every answer is an [`Answer`], written as one JSON line with all its
//! scores ([`write_answers`], [`read_answers`]), so a run can be inspected
//! and resumed stage by stage.
//!
//! Public items: [`RsPrompt`], [`load_prompts`], [`Rewarders`], [`Answer`],
//! [`sample_and_score`], [`score_answers`], [`best_per_prompt`],
//! [`PoolMode`], [`update_pool`], [`training_examples`], [`BestOfN`],
//! [`best_of_n`], [`median`], [`distribution`], [`mean_reward`],
//! [`write_answers`], [`read_answers`].

use crate::error::{Result, TrainError};
use crate::score::{combine, score_sequences};
use llama2_model::chat::{encode_prompt, Message, Role};
use llama2_model::generate::{generate_batch, BatchOptions, BatchStats, Completion, GenSink};
use llama2_model::tokenizer::Tokenizer;
use llama2_model::Model;
use llama2_runtime::Backend;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::Path;

/// One prompt of a rejection-sampling set.
#[derive(Clone, Debug, PartialEq)]
pub struct RsPrompt {
    /// the prompt's ids (BOS first; in the chat format for text prompts)
    pub ids: Vec<u32>,
    /// tagged as possibly unsafe: its answers are judged by the safety model
    pub unsafe_tag: bool,
}

fn bad(path: &Path, msg: String) -> TrainError {
    TrainError::BadFile {
        path: path.to_path_buf(),
        msg,
        hint: "one JSON object per line: {\"prompt_ids\": [...]}, or with a tokenizer {\"prompt\": \"...\"} or {\"messages\": [...]}; optional \"unsafe\": true or \"tag\": \"unsafe\"".into(),
    }
}

/// The prompt of one JSON record (line `n` of `path`, for messages).
pub fn parse_prompt(v: &Value, tok: Option<&Tokenizer>) -> std::result::Result<RsPrompt, String> {
    let o = v.as_object().ok_or("a record must be a JSON object")?;
    let unsafe_tag = o.get("unsafe").and_then(|x| x.as_bool()).unwrap_or(false) || o.get("tag").and_then(|x| x.as_str()) == Some("unsafe");
    let need_tok = |what: &str| tok.ok_or(format!("a `{what}` record needs a tokenizer (--tokenizer)"));
    let ids = if let Some(p) = o.get("prompt_ids") {
        let arr = p.as_array().ok_or("`prompt_ids` must be an array of ids")?;
        arr.iter()
            .map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()).ok_or(format!("`prompt_ids` holds {x}, not an id")))
            .collect::<std::result::Result<Vec<u32>, String>>()?
    } else if let Some(p) = o.get("prompt").and_then(|x| x.as_str()) {
        encode_prompt(need_tok("prompt")?, &[Message::new(Role::User, p)]).map_err(|e| e.to_string())?
    } else if let Some(m) = o.get("messages") {
        let mut d = crate::sft::parse_messages(m)?;
        if d.last().map(|m| m.role) == Some(Role::Assistant) {
            d.pop(); // a dialog with its answer: the prompt is what precedes it
        }
        encode_prompt(need_tok("messages")?, &d).map_err(|e| e.to_string())?
    } else {
        return Err("no `prompt_ids`, `prompt` or `messages` field".into());
    };
    if ids.is_empty() {
        return Err("the prompt is empty (start it with BOS)".into());
    }
    Ok(RsPrompt { ids, unsafe_tag })
}

/// Every prompt of a JSON Lines file.
pub fn load_prompts(path: &Path, tok: Option<&Tokenizer>) -> Result<Vec<RsPrompt>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| bad(path, format!("line {}: not valid JSON: {e}", i + 1)))?;
        out.push(parse_prompt(&v, tok).map_err(|m| bad(path, format!("line {}: {m}", i + 1)))?);
    }
    if out.is_empty() {
        return Err(bad(path, "no prompts".into()));
    }
    Ok(out)
}

/// The reward model(s) that score answers.
pub struct Rewarders<'a, B: Backend> {
    pub helpfulness: &'a Model<B>,
    pub safety: Option<&'a Model<B>>,
    /// padded tokens per scoring forward
    pub batch_tokens: usize,
    /// the safety reward decides where `sigmoid(safety)` is below this (the
    /// paper's 0.15, [`crate::score::SAFETY_THRESHOLD`]) or the prompt is tagged unsafe
    pub safety_threshold: f32,
}

/// A scored answer, as written in `samples.jsonl` and `pool.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// index of the prompt in the prompt file
    pub prompt_index: usize,
    /// the iteration that sampled it (1-based)
    pub iteration: usize,
    /// its index among the prompt's K samples
    pub sample: usize,
    /// the generated ids (EOS last when it ended with EOS)
    pub ids: Vec<u32>,
    /// "eos" or "length"
    pub finish: String,
    /// the reward in (0, 1) that ranks it
    pub reward: f32,
    /// the reward model that decided it: "helpfulness" or "safety"
    pub rm: String,
    /// the helpfulness model's score (a logit)
    pub helpfulness: f32,
    /// the safety model's score (a logit), with a safety model
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety: Option<f32>,
    /// the decoded answer, with a tokenizer
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// Scores `answers` (to `prompts`) with the reward model(s).
pub fn score_answers<B: Backend>(be: &B, rw: &Rewarders<B>, prompts: &[RsPrompt], answers: &[Completion], iteration: usize) -> Result<Vec<Answer>> {
    let seqs: Vec<Vec<u32>> = answers.iter().map(|c| [prompts[c.prompt].ids.as_slice(), c.ids.as_slice()].concat()).collect();
    let h = score_sequences(be, rw.helpfulness, &seqs, rw.batch_tokens)?;
    let s = match rw.safety {
        Some(m) => Some(score_sequences(be, m, &seqs, rw.batch_tokens)?),
        None => None,
    };
    Ok(answers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let r = combine(h[i], s.as_ref().map(|s| s[i]), prompts[c.prompt].unsafe_tag, rw.safety_threshold);
            Answer {
                prompt_index: c.prompt,
                iteration,
                sample: c.sample,
                ids: c.ids.clone(),
                finish: c.finish.as_str().into(),
                reward: r.value,
                rm: r.source.as_str().into(),
                helpfulness: r.helpfulness,
                safety: r.safety,
                text: None,
            }
        })
        .collect())
}

/// K answers per prompt from `policy` (`o.samples` = K), scored; ordered
/// by (prompt, sample). `progress` sees the generation's totals after every
/// step.
pub fn sample_and_score<B: Backend>(
    be: &B,
    policy: &Model<B>,
    rw: &Rewarders<B>,
    prompts: &[RsPrompt],
    o: &BatchOptions,
    iteration: usize,
    progress: &mut (dyn FnMut(&BatchStats) + Send),
) -> Result<(Vec<Answer>, BatchStats)> {
    struct Collect<'a> {
        out: Vec<Completion>,
        progress: &'a mut (dyn FnMut(&BatchStats) + Send),
    }
    impl GenSink for Collect<'_> {
        fn done(&mut self, c: Completion) -> llama2_model::Result<()> {
            self.out.push(c);
            Ok(())
        }
        fn progress(&mut self, s: &BatchStats) {
            (self.progress)(s)
        }
    }
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
    let mut sink = Collect { out: Vec::with_capacity(ids.len() * o.samples), progress };
    let stats = generate_batch(be, policy, &ids, o, &mut sink)?;
    let mut out = sink.out;
    out.sort_by_key(|c| (c.prompt, c.sample));
    Ok((score_answers(be, rw, prompts, &out, iteration)?, stats))
}

/// The index (into `answers`) of each prompt's best answer: the highest
/// reward, ties to the first sample. `answers` are ordered by (prompt,
/// sample); prompts without answers get none.
pub fn best_per_prompt(answers: &[Answer], n_prompts: usize) -> Vec<Option<usize>> {
    let mut best: Vec<Option<usize>> = vec![None; n_prompts];
    for (i, a) in answers.iter().enumerate() {
        let b = &mut best[a.prompt_index];
        // strictly greater: an equal reward does not displace an earlier sample
        if b.is_none_or(|j| a.reward > answers[j].reward) {
            *b = Some(i);
        }
    }
    best
}

/// Which answers an iteration trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    /// per prompt, the best answer of all iterations so far (the paper)
    All,
    /// per prompt, this iteration's best answer (the variant that regressed)
    Last,
}

/// The next pool: per prompt, this iteration's best answer (`Last`), or the
/// better of it and the pool's (`All`; ties keep the pool's, the earlier).
pub fn update_pool(pool: &[Option<Answer>], best: &[Option<Answer>], mode: PoolMode) -> Vec<Option<Answer>> {
    (0..best.len().max(pool.len()))
        .map(|i| {
            let (old, new) = (pool.get(i).cloned().flatten(), best.get(i).cloned().flatten());
            match (mode, old, new) {
                (PoolMode::Last, _, n) => n,
                (PoolMode::All, Some(o), Some(n)) => Some(if n.reward > o.reward { n } else { o }),
                (PoolMode::All, o, n) => n.or(o),
            }
        })
        .collect()
}

/// (prompt ids + answer ids, loss mask: the answer only) of every pool entry.
pub fn training_examples(pool: &[Option<Answer>], prompts: &[RsPrompt]) -> Vec<(Vec<u32>, Vec<bool>)> {
    pool.iter()
        .flatten()
        .map(|a| {
            let p = &prompts[a.prompt_index].ids;
            let ids = [p.as_slice(), a.ids.as_slice()].concat();
            let mask = (0..ids.len()).map(|j| j >= p.len()).collect();
            (ids, mask)
        })
        .collect()
}

/// The paper's Figure 7 for one set of samples: for `n[i]` samples, the
/// mean over prompts of the best and of the median reward of the first
/// `n[i]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BestOfN {
    pub n: Vec<usize>,
    pub mean_max: Vec<f64>,
    pub mean_median: Vec<f64>,
}

/// Median (mean of the two middle values for an even count; NaN if empty).
pub fn median(x: &[f32]) -> f64 {
    let mut s: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

/// [`BestOfN`] from each prompt's rewards in sample order, for N = 1 up to
/// the fewest samples any prompt has.
pub fn best_of_n(rewards: &[Vec<f32>]) -> BestOfN {
    let k = rewards.iter().map(|r| r.len()).min().unwrap_or(0);
    let np = rewards.len().max(1) as f64;
    let mut out = BestOfN { n: Vec::new(), mean_max: Vec::new(), mean_median: Vec::new() };
    for n in 1..=k {
        out.n.push(n);
        out.mean_max.push(rewards.iter().map(|r| r[..n].iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64).sum::<f64>() / np);
        out.mean_median.push(rewards.iter().map(|r| median(&r[..n])).sum::<f64>() / np);
    }
    out
}

/// Each prompt's rewards in sample order.
pub fn rewards_by_prompt(answers: &[Answer], n_prompts: usize) -> Vec<Vec<f32>> {
    let mut out = vec![Vec::new(); n_prompts];
    for a in answers {
        out[a.prompt_index].push(a.reward);
    }
    out
}

/// Count, mean, quantiles and a 20-bin histogram over [0, 1] of rewards.
pub fn distribution(x: &[f32]) -> Value {
    const BINS: usize = 20;
    let mut s: Vec<f32> = x.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| if s.is_empty() { f64::NAN } else { s[((p * (s.len() - 1) as f64).round() as usize).min(s.len() - 1)] as f64 };
    let mut hist = [0usize; BINS];
    for &v in &s {
        hist[((v.clamp(0.0, 1.0) * BINS as f32) as usize).min(BINS - 1)] += 1;
    }
    json!({
        "count": s.len(), "mean": mean_reward_of(x),
        "min": q(0.0), "p10": q(0.1), "p25": q(0.25), "median": median(x), "p75": q(0.75), "p90": q(0.9), "max": q(1.0),
        "histogram": {"edges": (0..=BINS).map(|i| i as f64 / BINS as f64).collect::<Vec<_>>(), "counts": hist.to_vec()},
    })
}

fn mean_reward_of(x: &[f32]) -> f64 {
    if x.is_empty() {
        f64::NAN
    } else {
        x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64
    }
}

/// Mean reward of answers (NaN if none).
pub fn mean_reward(answers: &[Answer]) -> f64 {
    mean_reward_of(&answers.iter().map(|a| a.reward).collect::<Vec<_>>())
}

/// Writes answers as JSON Lines, atomically.
pub fn write_answers(path: &Path, answers: &[Answer]) -> Result<()> {
    let mut text = String::new();
    for a in answers {
        text.push_str(&serde_json::to_string(a).map_err(|e| TrainError::Invalid(e.to_string()))?);
        text.push('\n');
    }
    llama2_model::weights::write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// Reads answers written by [`write_answers`].
pub fn read_answers(path: &Path) -> Result<Vec<Answer>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| TrainError::BadFile {
                path: path.to_path_buf(),
                msg: format!("line {}: {e}", i + 1),
                hint: "the file was written by `train-tool rs`; delete it to redo its stage".into(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ans(p: usize, it: usize, s: usize, r: f32) -> Answer {
        Answer {
            prompt_index: p,
            iteration: it,
            sample: s,
            ids: vec![s as u32],
            finish: "eos".into(),
            reward: r,
            rm: "helpfulness".into(),
            helpfulness: r,
            safety: None,
            text: None,
        }
    }

    #[test]
    fn best_answer_ties_go_to_the_first_sample() {
        let a = vec![ans(0, 1, 0, 0.5), ans(0, 1, 1, 0.7), ans(0, 1, 2, 0.7), ans(1, 1, 0, 0.2), ans(1, 1, 1, 0.2)];
        assert_eq!(best_per_prompt(&a, 3), vec![Some(1), Some(3), None]);
    }

    #[test]
    fn the_pool_keeps_the_best_of_all_iterations() {
        let pool = vec![Some(ans(0, 1, 0, 0.9)), Some(ans(1, 1, 0, 0.3)), Some(ans(2, 1, 0, 0.5))];
        let best = vec![Some(ans(0, 2, 3, 0.8)), Some(ans(1, 2, 1, 0.4)), Some(ans(2, 2, 1, 0.5))];
        let all = update_pool(&pool, &best, PoolMode::All);
        // prompt 0: the older 0.9 stays; prompt 1: the new 0.4; prompt 2: a tie keeps the older
        assert_eq!(all.iter().map(|a| a.as_ref().map(|a| (a.iteration, a.reward))).collect::<Vec<_>>(), vec![Some((1, 0.9)), Some((2, 0.4)), Some((1, 0.5))]);
        let last = update_pool(&pool, &best, PoolMode::Last);
        assert_eq!(last, best);
        // the first iteration: no pool yet
        assert_eq!(update_pool(&[], &best, PoolMode::All), best);
    }

    #[test]
    fn examples_learn_the_answer_only() {
        let prompts = vec![RsPrompt { ids: vec![1, 5, 6], unsafe_tag: false }];
        let mut a = ans(0, 1, 0, 0.5);
        a.ids = vec![7, 8, 2];
        let ex = training_examples(&[Some(a)], &prompts);
        assert_eq!(ex, vec![(vec![1, 5, 6, 7, 8, 2], vec![false, false, false, true, true, true])]);
    }

    /// Hand-computed: prompt 0 rewards 0.1, 0.5, 0.3, 0.9; prompt 1 0.4,
    /// 0.2, 0.8, 0.6.
    #[test]
    fn best_of_n_by_hand() {
        let r = vec![vec![0.1, 0.5, 0.3, 0.9], vec![0.4, 0.2, 0.8, 0.6]];
        let b = best_of_n(&r);
        assert_eq!(b.n, vec![1, 2, 3, 4]);
        // max of the first N: (0.1, 0.4) (0.5, 0.4) (0.5, 0.8) (0.9, 0.8)
        let want_max = [0.25, 0.45, 0.65, 0.85];
        // median of the first N: (0.1, 0.4) (0.3, 0.3) (0.3, 0.4) (0.4, 0.5)
        let want_med = [0.25, 0.3, 0.35, 0.45];
        for i in 0..4 {
            assert!((b.mean_max[i] - want_max[i]).abs() < 1e-6, "{b:?}");
            assert!((b.mean_median[i] - want_med[i]).abs() < 1e-6, "{b:?}");
        }
    }

    #[test]
    fn prompt_records() {
        let p = |s: &str| parse_prompt(&serde_json::from_str(s).unwrap(), None);
        assert_eq!(p(r#"{"prompt_ids": [1, 4], "tag": "unsafe"}"#).unwrap(), RsPrompt { ids: vec![1, 4], unsafe_tag: true });
        assert!(p(r#"{"prompt_ids": []}"#).unwrap_err().contains("empty"));
        assert!(p(r#"{"prompt": "hi"}"#).unwrap_err().contains("tokenizer"));
        assert!(p(r#"{"prompt_ids": [1, -3]}"#).unwrap_err().contains("not an id"));
        assert!(p(r#"{"text": "hi"}"#).unwrap_err().contains("no `prompt_ids`"));
    }
}
