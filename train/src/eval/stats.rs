//! The arithmetic of the evaluations, on plain numbers and words (no
//! model): BLEU and Self-BLEU, win rates with ties and standard errors,
//! rates and means with standard errors.
//!
//! ## BLEU (as nltk's `sentence_bleu` with `SmoothingFunction().method1`)
//! For a hypothesis h and references R (word lists), with weights `1/N`
//! for n = 1..N:
//! ```text
//! m_n  = Σ_g min(count_h(g), max_r count_r(g))      (g: the n-grams of h)
//! d_n  = max(1, number of n-grams of h)
//! p_n  = m_n / d_n, or BLEU_EPSILON / d_n when m_n = 0 (smoothing "method 1")
//! BP   = 1 if c > r, else exp(1 - r/c)   (c = |h|, r = the reference length closest to c, the shorter on a tie; BP = 0 if c = 0)
//! BLEU = 0 if m_1 = 0 (no word in common), else BP · exp(Σ_n log(p_n) / N)
//! ```
//! The smoothing is Texygen's (Zhu et al., 2018, the benchmark that
//! introduced Self-BLEU; its `SelfBleu.py` calls nltk's `sentence_bleu`
//! with `SmoothingFunction().method1`): without it, every sample
//! that shares no trigram with the others scores 0 and Self-BLEU of short,
//! varied answers sits at 0 for most temperatures.
//!
//! ## Self-BLEU (Zhu et al., Texygen, 2018; the paper's Figure 21)
//! For the k >= 2 samples of one prompt, the mean over i of BLEU-3 of
//! sample i against the other k - 1 samples (never itself); over prompts,
//! the mean of the per-prompt values. Samples are split into words with
//! [`super::annotator::words`].
//!
//! ## Win rate
//! Each prompt's two answers (the model's m, the baseline's b) are judged
//! in both orders, (m, b) and (b, m); each judgement is a win (1), a tie
//! (1/2) or a loss (0) for the model, and the prompt's score s_i is the
//! mean of its two. Win rate = mean of s_i; standard error = sample
//! standard deviation of s_i / sqrt(n) (the prompts are the independent
//! units; n >= 2).
//!
//! Public items: [`BLEU_EPSILON`], [`ngram_counts`], [`bleu`], [`self_bleu`],
//! [`self_bleu_prompts`], [`Outcome`], [`WinRate`], [`win_rate`],
//! [`Rate`], [`MeanSe`].

use crate::error::{Result, TrainError};
use std::collections::HashMap;

/// The n-grams of `w` with their counts.
pub fn ngram_counts(w: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut m = HashMap::new();
    if n > 0 && w.len() >= n {
        for g in w.windows(n) {
            *m.entry(g).or_insert(0) += 1;
        }
    }
    m
}

/// Added to a zero n-gram match count (nltk's `SmoothingFunction`
/// default epsilon).
pub const BLEU_EPSILON: f64 = 0.1;

/// Sentence BLEU-`max_n` of `hyp` against `refs` with uniform weights (see
/// the module header).
pub fn bleu(refs: &[&[String]], hyp: &[String], max_n: usize) -> Result<f64> {
    if refs.is_empty() || max_n == 0 {
        return Err(TrainError::Invalid("BLEU needs at least one reference and n >= 1".into()));
    }
    let c = hyp.len();
    if c == 0 {
        return Ok(0.0);
    }
    let mut log_sum = 0.0;
    for n in 1..=max_n {
        let h = ngram_counts(hyp, n);
        let ref_counts: Vec<HashMap<&[String], usize>> = refs.iter().map(|r| ngram_counts(r, n)).collect();
        let clipped: usize = h.iter().map(|(g, &k)| k.min(ref_counts.iter().map(|rc| rc.get(g).copied().unwrap_or(0)).max().unwrap_or(0))).sum();
        let total = c.saturating_sub(n - 1).max(1) as f64;
        log_sum += match clipped {
            0 if n == 1 => return Ok(0.0),
            0 => (BLEU_EPSILON / total).ln(),
            m => (m as f64 / total).ln(),
        };
    }
    // the closest reference length, the shorter one on a tie
    let r = refs.iter().map(|x| x.len()).min_by_key(|&l| (l.abs_diff(c), l)).unwrap_or(0);
    let bp = if c > r { 1.0 } else { (1.0 - r as f64 / c as f64).exp() };
    Ok(bp * (log_sum / max_n as f64).exp())
}

/// Self-BLEU (BLEU-3) of the samples of one prompt (see the module header).
pub fn self_bleu(samples: &[Vec<String>]) -> Result<f64> {
    if samples.len() < 2 {
        return Err(TrainError::Invalid(format!("Self-BLEU needs at least 2 samples per prompt, got {}", samples.len())));
    }
    let mut sum = 0.0;
    for i in 0..samples.len() {
        let refs: Vec<&[String]> = samples.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, s)| s.as_slice()).collect();
        sum += bleu(&refs, &samples[i], 3)?;
    }
    Ok(sum / samples.len() as f64)
}

/// Self-BLEU over prompts: the mean of the per-prompt values.
pub fn self_bleu_prompts(per_prompt: &[Vec<Vec<String>>]) -> Result<f64> {
    if per_prompt.is_empty() {
        return Err(TrainError::Invalid("Self-BLEU needs at least one prompt".into()));
    }
    let mut s = 0.0;
    for p in per_prompt {
        s += self_bleu(p)?;
    }
    Ok(s / per_prompt.len() as f64)
}

/// One judgement from the model's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Loss,
    Tie,
    Win,
}

impl Outcome {
    /// Win 1, tie 1/2, loss 0.
    pub fn value(self) -> f64 {
        match self {
            Outcome::Loss => 0.0,
            Outcome::Tie => 0.5,
            Outcome::Win => 1.0,
        }
    }

    /// The model's score `m` against the baseline's `b`: higher wins,
    /// equal ties. A NaN score is an error.
    pub fn of_scores(m: f64, b: f64) -> Result<Outcome> {
        if m.is_nan() || b.is_nan() {
            return Err(TrainError::Invalid("a judge returned NaN; HINT: check the reward model's weights".into()));
        }
        Ok(if m > b {
            Outcome::Win
        } else if m == b {
            Outcome::Tie
        } else {
            Outcome::Loss
        })
    }
}

/// A win rate with its counts (see the module header).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct WinRate {
    /// prompts (the independent units)
    pub prompts: usize,
    /// judgements: two per prompt (both orders)
    pub comparisons: usize,
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
    /// mean over prompts of the mean of the two judgements, ties 1/2
    pub win_rate: f64,
    /// standard error of the win rate (None with fewer than 2 prompts)
    pub se: Option<f64>,
}

/// The win rate of judgements in both orders, one pair per prompt.
pub fn win_rate(per_prompt: &[[Outcome; 2]]) -> Result<WinRate> {
    let n = per_prompt.len();
    if n == 0 {
        return Err(TrainError::Invalid("a win rate needs at least one prompt".into()));
    }
    let count = |o: Outcome| per_prompt.iter().flatten().filter(|&&x| x == o).count();
    let s: Vec<f64> = per_prompt.iter().map(|[a, b]| (a.value() + b.value()) / 2.0).collect();
    let m = MeanSe::of(&s)?;
    Ok(WinRate {
        prompts: n,
        comparisons: 2 * n,
        wins: count(Outcome::Win),
        ties: count(Outcome::Tie),
        losses: count(Outcome::Loss),
        win_rate: m.mean,
        se: m.se,
    })
}

/// A proportion with its binomial standard error sqrt(p(1-p)/n).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Rate {
    pub count: usize,
    pub n: usize,
    pub rate: f64,
    pub se: f64,
}

impl Rate {
    /// `count` of `n`; None when n = 0.
    pub fn of(count: usize, n: usize) -> Option<Rate> {
        if n == 0 {
            return None;
        }
        let p = count as f64 / n as f64;
        Some(Rate { count, n, rate: p, se: (p * (1.0 - p) / n as f64).sqrt() })
    }
}

/// A mean with its standard error (sample standard deviation / sqrt(n)).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MeanSe {
    pub n: usize,
    pub mean: f64,
    /// None with fewer than 2 values
    pub se: Option<f64>,
}

impl MeanSe {
    pub fn of(x: &[f64]) -> Result<MeanSe> {
        let n = x.len();
        if n == 0 {
            return Err(TrainError::Invalid("a mean of no values".into()));
        }
        let mean = x.iter().sum::<f64>() / n as f64;
        let se = (n >= 2).then(|| (x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1) as f64).sqrt() / (n as f64).sqrt());
        Ok(MeanSe { n, mean, se })
    }
}
