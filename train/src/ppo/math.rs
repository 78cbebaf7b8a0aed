//! The arithmetic of PPO as Llama 2 uses it (paper section 3.2.3, PAPER.md
//! section 6), as pure functions on host vectors: the reward model's score
//! (safety/helpfulness switch, transform), per-token rewards with the KL
//! penalty, GAE advantages and returns, whitening, and the clipped policy
//! and value losses with their gradients. Everything here is checked
//! against an independent numpy implementation (`tools/scripts/ppo_ref.py`)
//! and the golden values of the issue.
//!
//! Conventions (each a [`PpoMath`] field with the paper's or the common
//! default where the paper is silent):
//! - score: `s_h`, `s_s` are raw RM outputs (logits). With a safety RM the
//!   safety score is used where the prompt is tagged unsafe or
//!   `sigmoid(s_s) < safety_threshold` (0.15), else the helpfulness score;
//!   `LOGIT(R_c)` is that raw score. [`ScoreTransform::LogitWhiten`] whitens
//!   it over the rollout batch, `(x − mean) / sqrt(var + 1e-8)` with the
//!   population variance; `missing_eos_penalty` is subtracted from the
//!   transformed score of an answer that ended without EOS.
//! - rewards: `kl_t = logp_old(t) − logp_ref(t)`, `r_t = −β kl_t`, the
//!   transformed score added to the last response token's reward.
//! - GAE: `δ_t = r_t + γ V_{t+1} − V_t` (`V` after the last token = 0),
//!   `A_t = δ_t + γ λ A_{t+1}`; returns `R_t = A_t + V_old_t`; then the
//!   advantages are whitened over every response token of the batch.
//! - losses, means over every response token of the (mini-)batch: policy
//!   `max(−A ρ, −A clip(ρ, 1 − ε, 1 + ε))`, `ρ = exp(logp_new − logp_old)`;
//!   value `½ max((V_new − R)², (V_old + clip(V_new − V_old, −ε_v, ε_v) − R)²)`.
//! - `clip_frac`: the fraction of tokens whose policy term takes the
//!   clipped branch strictly (`−A clip(ρ) > −A ρ`); `approx_kl`: the mean
//!   of `½ (logp_new − logp_old)²` (Schulman's k2 estimator).
//!
//! Public items: [`PpoMath`], [`ScoreTransform`], [`Episode`], [`Scored`],
//! [`Advantages`], [`Losses`], [`score_episodes`], [`rewards`],
//! [`advantages`], [`whiten`], [`losses`].

use serde::{Deserialize, Serialize};

/// How the chosen reward-model score becomes the episode's score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScoreTransform {
    /// the raw score (a logit), whitened over the rollout batch (the paper)
    LogitWhiten,
    /// the raw score as is
    None,
}

/// The hyper-parameters of the arithmetic (defaults: the paper's, and the
/// common choices where it is silent).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PpoMath {
    /// KL penalty coefficient β (the paper: 0.01 for 7B/13B, 0.005 for 34B/70B)
    pub beta: f64,
    /// discount γ
    pub gamma: f64,
    /// GAE λ
    pub lam: f64,
    /// policy ratio clip ε
    pub clip: f64,
    /// value clip ε_v
    pub value_clip: f64,
    pub score_transform: ScoreTransform,
    /// use the safety score below this probability `sigmoid(s_s)` (the paper: 0.15)
    pub safety_threshold: f64,
    /// subtracted from the transformed score of an answer without EOS
    pub missing_eos_penalty: f64,
}

impl Default for PpoMath {
    fn default() -> Self {
        PpoMath {
            beta: 0.01,
            gamma: 1.0,
            lam: 0.95,
            clip: 0.2,
            value_clip: 0.2,
            score_transform: ScoreTransform::LogitWhiten,
            safety_threshold: 0.15,
            missing_eos_penalty: 0.0,
        }
    }
}

/// Whitening's variance floor (the common 1e-8).
pub const WHITEN_EPS: f64 = 1e-8;

/// One rollout episode: per response token `t`, the log-probabilities of
/// the token under the policy that sampled it (`logprobs`), the reference
/// policy (`ref_logprobs`), and the value model's estimate at the position
/// that predicts it (`values`); the reward models' raw scores of the whole
/// answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    pub logprobs: Vec<f64>,
    pub ref_logprobs: Vec<f64>,
    pub values: Vec<f64>,
    pub score_helpful: f64,
    #[serde(default)]
    pub score_safety: Option<f64>,
    /// the prompt is tagged possibly unsafe
    #[serde(default, rename = "unsafe")]
    pub unsafe_prompt: bool,
    /// the answer ended with EOS
    pub eos: bool,
}

/// The score an episode gets: which RM's raw score was used, and the score
/// after the transform and the EOS penalty.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    pub raw: f64,
    /// the safety RM's score was used
    pub safety: bool,
    pub transformed: f64,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `(x − mean) / sqrt(var + eps)` over all values, population variance.
pub fn whiten(xs: &[f64]) -> Vec<f64> {
    if xs.is_empty() {
        return Vec::new();
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    let d = (var + WHITEN_EPS).sqrt();
    xs.iter().map(|x| (x - mean) / d).collect()
}

/// The score of every episode of a rollout batch (the switch, the
/// transform over the batch, the EOS penalty).
pub fn score_episodes(m: &PpoMath, eps: &[Episode]) -> Vec<Scored> {
    let chosen: Vec<(f64, bool)> = eps
        .iter()
        .map(|e| match e.score_safety {
            Some(s) if e.unsafe_prompt || sigmoid(s) < m.safety_threshold => (s, true),
            _ => (e.score_helpful, false),
        })
        .collect();
    let raw: Vec<f64> = chosen.iter().map(|c| c.0).collect();
    let transformed = match m.score_transform {
        ScoreTransform::LogitWhiten => whiten(&raw),
        ScoreTransform::None => raw.clone(),
    };
    eps.iter()
        .zip(chosen)
        .zip(transformed)
        .map(|((e, (raw, safety)), t)| Scored { raw, safety, transformed: if e.eos { t } else { t - m.missing_eos_penalty } })
        .collect()
}

/// Per-token rewards of one episode: `−β kl_t`, plus `score` on the last token.
pub fn rewards(m: &PpoMath, e: &Episode, score: f64) -> Vec<f64> {
    let mut r: Vec<f64> = e.logprobs.iter().zip(&e.ref_logprobs).map(|(lp, rf)| -m.beta * (lp - rf)).collect();
    if let Some(last) = r.last_mut() {
        *last += score;
    }
    r
}

/// Advantages (before whitening) and returns of one episode by GAE.
pub fn gae(m: &PpoMath, rewards: &[f64], values: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len();
    let mut adv = vec![0f64; n];
    let mut next_a = 0.0;
    for t in (0..n).rev() {
        let next_v = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + m.gamma * next_v - values[t];
        next_a = delta + m.gamma * m.lam * next_a;
        adv[t] = next_a;
    }
    let ret = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, ret)
}

/// Rewards, advantages (whitened over every response token of the batch)
/// and returns of a rollout batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Advantages {
    pub scores: Vec<Scored>,
    pub rewards: Vec<Vec<f64>>,
    /// before whitening
    pub raw: Vec<Vec<f64>>,
    pub advantages: Vec<Vec<f64>>,
    pub returns: Vec<Vec<f64>>,
    /// mean over episodes of the summed per-token KL (`logp_old − logp_ref`)
    pub kl: f64,
}

/// Everything [`Advantages`] holds, for a rollout batch.
pub fn advantages(m: &PpoMath, eps: &[Episode]) -> Advantages {
    let scores = score_episodes(m, eps);
    let mut out = Advantages { scores: scores.clone(), rewards: Vec::new(), raw: Vec::new(), advantages: Vec::new(), returns: Vec::new(), kl: 0.0 };
    for (e, s) in eps.iter().zip(&scores) {
        let r = rewards(m, e, s.transformed);
        let (a, ret) = gae(m, &r, &e.values);
        out.rewards.push(r);
        out.raw.push(a);
        out.returns.push(ret);
    }
    let flat: Vec<f64> = out.raw.iter().flatten().copied().collect();
    let w = whiten(&flat);
    let mut i = 0;
    for a in &out.raw {
        out.advantages.push(w[i..i + a.len()].to_vec());
        i += a.len();
    }
    out.kl = if eps.is_empty() {
        0.0
    } else {
        eps.iter().map(|e| e.logprobs.iter().zip(&e.ref_logprobs).map(|(a, b)| a - b).sum::<f64>()).sum::<f64>() / eps.len() as f64
    };
    out
}

/// The losses of one (mini-)batch of tokens and their gradients.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Losses {
    pub policy: f64,
    pub value: f64,
    pub clip_frac: f64,
    pub approx_kl: f64,
    /// d(policy loss)/d(logp_new) per token
    pub d_logp: Vec<f64>,
    /// d(value loss)/d(V_new) per token
    pub d_value: Vec<f64>,
}

/// Policy and value losses, means over the `n` tokens given (flattened over
/// episodes), and their gradients with respect to the new log-probabilities
/// and values. `count` is the number the sums are divided by (the tokens
/// of the whole mini-batch when it is split into micro-batches).
#[allow(clippy::too_many_arguments)]
pub fn losses(m: &PpoMath, old_logp: &[f64], new_logp: &[f64], adv: &[f64], old_v: &[f64], new_v: &[f64], ret: &[f64], count: usize) -> Losses {
    let n = old_logp.len();
    let c = count.max(1) as f64;
    let mut l = Losses { d_logp: vec![0.0; n], d_value: vec![0.0; n], ..Default::default() };
    for t in 0..n {
        let rho = (new_logp[t] - old_logp[t]).exp();
        let rc = rho.clamp(1.0 - m.clip, 1.0 + m.clip);
        let (u, k) = (-adv[t] * rho, -adv[t] * rc);
        if k > u {
            // the clipped branch: constant in logp_new (rho outside the range)
            l.policy += k;
            l.clip_frac += 1.0;
        } else {
            l.policy += u;
            l.d_logp[t] = -adv[t] * rho / c;
        }
        l.approx_kl += 0.5 * (new_logp[t] - old_logp[t]).powi(2);
        let dv = new_v[t] - old_v[t];
        let vc = old_v[t] + dv.clamp(-m.value_clip, m.value_clip);
        let (a, b) = ((new_v[t] - ret[t]).powi(2), (vc - ret[t]).powi(2));
        if b > a {
            l.value += 0.5 * b;
            // the clipped value moves with V_new only inside the clip range
            if dv.abs() < m.value_clip {
                l.d_value[t] = (vc - ret[t]) / c;
            }
        } else {
            l.value += 0.5 * a;
            l.d_value[t] = (new_v[t] - ret[t]) / c;
        }
    }
    l.policy /= c;
    l.value /= c;
    l.clip_frac /= c;
    l.approx_kl /= c;
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The issue's golden values, derived by hand in its text.
    #[test]
    fn golden_values_of_the_issue() {
        let m = PpoMath { beta: 0.01, score_transform: ScoreTransform::None, ..Default::default() };
        let kl = [0.2, -0.1, 0.05];
        let e = Episode { logprobs: kl.to_vec(), ref_logprobs: vec![0.0; 3], values: vec![0.5, 0.6, 0.7], score_helpful: 1.0, eos: true, ..Default::default() };
        let a = advantages(&m, std::slice::from_ref(&e));
        let close = |got: &[f64], want: &[f64]| got.iter().zip(want).all(|(g, w)| (g - w).abs() <= 1e-8 * w.abs().max(1.0));
        assert!(close(&a.rewards[0], &[-0.002, 0.001, 0.9995]), "{:?}", a.rewards);
        assert!(close(&a.raw[0], &[0.46424875, 0.385525, 0.2995]), "{:?}", a.raw);
        assert!(close(&a.returns[0], &[0.96424875, 0.985525, 0.9995]), "{:?}", a.returns);
        assert!(close(&a.advantages[0], &[1.20625621, 0.03617319, -1.24242941]), "{:?}", a.advantages);
        // A = 1, rho = 1.5 -> policy loss -1.2; A = -1, rho = 0.5 -> 0.8
        let p = losses(&m, &[0.0], &[1.5f64.ln()], &[1.0], &[0.0], &[0.0], &[0.0], 1);
        assert!((p.policy + 1.2).abs() < 1e-12, "{}", p.policy);
        let p = losses(&m, &[0.0], &[0.5f64.ln()], &[-1.0], &[0.0], &[0.0], &[0.0], 1);
        assert!((p.policy - 0.8).abs() < 1e-12, "{}", p.policy);
        // V_old 0, V 0.5, R 1, value clip 0.2 -> 0.32
        let v = losses(&m, &[0.0], &[0.0], &[0.0], &[0.0], &[0.5], &[1.0], 1);
        assert!((v.value - 0.32).abs() < 1e-12, "{}", v.value);
    }

    /// The gradients are those of the losses: central differences.
    #[test]
    fn gradients_match_finite_differences() {
        let m = PpoMath::default();
        let old = [-1.0, -0.5, -2.0, -0.1, -3.0];
        let new = [-0.9, -0.9, -1.5, -0.1, -3.3];
        let adv = [0.5, -1.0, 1.2, -0.3, 0.8];
        let (ov, nv, ret) = ([0.1, 0.4, -0.2, 0.0, 1.0], [0.15, 0.9, -0.25, 0.05, 0.5], [0.3, 0.2, 0.1, -0.4, 0.9]);
        let l = losses(&m, &old, &new, &adv, &ov, &nv, &ret, 5);
        let h = 1e-6;
        for t in 0..5 {
            let (mut a, mut b) = (new, new);
            a[t] += h;
            b[t] -= h;
            let fd = (losses(&m, &old, &a, &adv, &ov, &nv, &ret, 5).policy - losses(&m, &old, &b, &adv, &ov, &nv, &ret, 5).policy) / (2.0 * h);
            assert!((fd - l.d_logp[t]).abs() < 1e-6, "policy token {t}: fd {fd} vs {}", l.d_logp[t]);
            let (mut a, mut b) = (nv, nv);
            a[t] += h;
            b[t] -= h;
            let fd = (losses(&m, &old, &new, &adv, &ov, &a, &ret, 5).value - losses(&m, &old, &new, &adv, &ov, &b, &ret, 5).value) / (2.0 * h);
            assert!((fd - l.d_value[t]).abs() < 1e-6, "value token {t}: fd {fd} vs {}", l.d_value[t]);
        }
        assert!(l.clip_frac > 0.0 && l.clip_frac < 1.0, "the case exercises both branches: {}", l.clip_frac);
    }
}

/// An episode of [`MathInput`]: the rollout plus the new policy's
/// log-probabilities and the new values (what `debug ppo-math` reads).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MathEpisode {
    #[serde(flatten)]
    pub episode: Episode,
    pub new_logprobs: Vec<f64>,
    pub new_values: Vec<f64>,
}

/// The input of `train-tool debug ppo-math`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MathInput {
    #[serde(flatten)]
    pub math: PpoMath,
    pub episodes: Vec<MathEpisode>,
}

/// The output of `train-tool debug ppo-math`: one rollout batch taken as one
/// mini-batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MathOutput {
    pub scores: Vec<f64>,
    pub rewards: Vec<Vec<f64>>,
    pub advantages: Vec<Vec<f64>>,
    pub returns: Vec<Vec<f64>>,
    pub policy_loss: f64,
    pub value_loss: f64,
    pub kl: f64,
    pub clip_frac: f64,
}

impl MathInput {
    /// Checks that every episode's vectors have one entry per response token.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.episodes.is_empty() {
            return Err("no episodes".into());
        }
        for (i, e) in self.episodes.iter().enumerate() {
            let n = e.episode.logprobs.len();
            if n == 0 {
                return Err(format!("episode {i} has no response tokens"));
            }
            for (name, len) in [
                ("ref_logprobs", e.episode.ref_logprobs.len()),
                ("values", e.episode.values.len()),
                ("new_logprobs", e.new_logprobs.len()),
                ("new_values", e.new_values.len()),
            ] {
                if len != n {
                    return Err(format!("episode {i}: {name} has {len} entries, logprobs {n}"));
                }
            }
        }
        Ok(())
    }

    /// The whole arithmetic on this batch.
    pub fn run(&self) -> MathOutput {
        let eps: Vec<Episode> = self.episodes.iter().map(|e| e.episode.clone()).collect();
        let a = advantages(&self.math, &eps);
        let cat = |f: &dyn Fn(&MathEpisode) -> &Vec<f64>| -> Vec<f64> { self.episodes.iter().flat_map(|e| f(e).iter().copied()).collect() };
        let (old, new) = (cat(&|e| &e.episode.logprobs), cat(&|e| &e.new_logprobs));
        let (ov, nv) = (cat(&|e| &e.episode.values), cat(&|e| &e.new_values));
        let adv: Vec<f64> = a.advantages.iter().flatten().copied().collect();
        let ret: Vec<f64> = a.returns.iter().flatten().copied().collect();
        let l = losses(&self.math, &old, &new, &adv, &ov, &nv, &ret, old.len());
        MathOutput {
            scores: a.scores.iter().map(|s| s.transformed).collect(),
            rewards: a.rewards,
            advantages: a.advantages,
            returns: a.returns,
            policy_loss: l.policy,
            value_loss: l.value,
            kl: a.kl,
            clip_frac: l.clip_frac,
        }
    }
}
