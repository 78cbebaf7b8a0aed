//! PPO commands: `train-tool debug ppo-math` (the arithmetic as a pure
//! function, for tests and for anyone checking our numbers) and
//! `train-tool debug ppo-grads` (the gradients of one PPO step of a policy
//! and a value model on given rollouts), and the hyper-parameter flags
//! they share with `train-tool ppo`.

use crate::device::{dispatch, DeviceOpts, Job};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use llama2_model::weights::{save_safetensors, HostWeights, SaveDtype};
use llama2_model::Model;
use llama2_runtime::{v, Backend};
use llama2_train::optim::AdamWConfig;
use llama2_train::ppo::math::{advantages, Episode, MathInput, PpoMath, ScoreTransform};
use llama2_train::ppo::objective::{PpoObjective, Rollout};
use llama2_train::trainer::{Objective, Sums};
use serde::Deserialize;
use serde_json::json;
use std::path::{Path, PathBuf};

fn parse_nonneg_f64(s: &str) -> std::result::Result<f64, String> {
    let x: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(x >= 0.0 && x.is_finite()) {
        return Err(format!("{x} must be a finite number >= 0"));
    }
    Ok(x)
}

fn parse_unit_f64(s: &str) -> std::result::Result<f64, String> {
    let x: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(0.0..=1.0).contains(&x) {
        return Err(format!("{x} must be in [0, 1]"));
    }
    Ok(x)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TransformFlag {
    /// whiten the raw score (a logit) over the rollout batch (the paper)
    LogitWhiten,
    /// use the raw score as is
    None,
}

/// The arithmetic's hyper-parameters (defaults: the paper's; where it is
/// silent, the common choices; see README "PPO").
#[derive(Args, Clone, Debug)]
pub struct PpoMathFlags {
    /// KL penalty beta (the paper: 0.01 for 7B/13B, 0.005 for 34B/70B)
    #[arg(long, default_value_t = 0.01, value_parser = parse_nonneg_f64)]
    pub beta: f64,
    /// GAE discount gamma
    #[arg(long, default_value_t = 1.0, value_parser = parse_unit_f64)]
    pub gamma: f64,
    /// GAE lambda
    #[arg(long, default_value_t = 0.95, value_parser = parse_unit_f64)]
    pub lam: f64,
    /// Policy ratio clip epsilon
    #[arg(long, default_value_t = 0.2, value_parser = parse_nonneg_f64)]
    pub clip: f64,
    /// Value clip epsilon
    #[arg(long, default_value_t = 0.2, value_parser = parse_nonneg_f64)]
    pub value_clip: f64,
    /// How the reward model's raw score becomes the episode's score
    #[arg(long, value_enum, default_value = "logit-whiten")]
    pub score_transform: TransformFlag,
    /// Use the safety RM's score where sigmoid(safety score) is below this (the paper: 0.15)
    #[arg(long, default_value_t = 0.15, value_parser = parse_unit_f64)]
    pub safety_threshold: f64,
    /// Subtracted from the transformed score of an answer that ended without EOS
    #[arg(long, default_value_t = 0.0, value_parser = parse_nonneg_f64)]
    pub missing_eos_penalty: f64,
}

impl PpoMathFlags {
    pub fn math(&self) -> PpoMath {
        PpoMath {
            beta: self.beta,
            gamma: self.gamma,
            lam: self.lam,
            clip: self.clip,
            value_clip: self.value_clip,
            score_transform: match self.score_transform {
                TransformFlag::LogitWhiten => ScoreTransform::LogitWhiten,
                TransformFlag::None => ScoreTransform::None,
            },
            safety_threshold: self.safety_threshold,
            missing_eos_penalty: self.missing_eos_penalty,
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct MathArgs {
    /// The batch: {"beta", "gamma", "lam", "clip", "value_clip", "score_transform", "safety_threshold", "missing_eos_penalty", "episodes": [...]}
    #[arg(long)]
    pub input: PathBuf,
}

/// `debug ppo-math`: prints the arithmetic's output as one JSON line.
pub fn run_math(a: MathArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
    let inp: MathInput = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a ppo-math input; HINT: see `train-tool debug ppo-math --help` and README \"PPO\"", a.input.display()))?;
    if let Err(e) = inp.validate() {
        bail!("{}: {e}; HINT: every per-token list of an episode has one entry per response token", a.input.display());
    }
    println!("{}", serde_json::to_string(&inp.run())?);
    Ok(())
}

/// A rollout line of `debug ppo-grads`.
#[derive(Clone, Debug, Deserialize)]
struct RolloutLine {
    prompt_ids: Vec<u32>,
    response_ids: Vec<u32>,
    logprobs: Vec<f64>,
    ref_logprobs: Vec<f64>,
    values: Vec<f64>,
    score_helpful: f64,
    #[serde(default)]
    score_safety: Option<f64>,
    #[serde(default, rename = "unsafe")]
    unsafe_prompt: bool,
    eos: bool,
}

#[derive(Args, Clone, Debug)]
pub struct GradsArgs {
    /// The policy (a causal LM directory)
    #[arg(long)]
    pub policy: PathBuf,
    /// The value model (a LlamaForSequenceClassification directory)
    #[arg(long)]
    pub value: PathBuf,
    /// Rollouts, one JSON line each; all form one rollout batch and one mini-batch
    #[arg(long)]
    pub rollouts: PathBuf,
    /// Output safetensors: policy.<HF name> and value.<HF name>, f32
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub math: PpoMathFlags,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

fn read_rollouts(path: &Path) -> Result<Vec<RolloutLine>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let r: RolloutLine = serde_json::from_str(line).with_context(|| {
            format!("{}: line {}: not a rollout; HINT: {{\"prompt_ids\", \"response_ids\", \"logprobs\", \"ref_logprobs\", \"values\", \"score_helpful\", \"eos\"}}", path.display(), i + 1)
        })?;
        let n = r.response_ids.len();
        if n == 0 || r.prompt_ids.is_empty() {
            bail!("{}: line {}: empty prompt or response", path.display(), i + 1);
        }
        if r.logprobs.len() != n || r.ref_logprobs.len() != n || r.values.len() != n {
            bail!("{}: line {}: logprobs, ref_logprobs and values need one entry per response token ({n})", path.display(), i + 1);
        }
        out.push(r);
    }
    if out.is_empty() {
        bail!("{}: no rollouts", path.display());
    }
    Ok(out)
}

/// Rollouts ready for training from rollout lines: advantages and returns
/// by the arithmetic over the whole batch.
pub fn to_rollouts(m: &PpoMath, lines: &[(Vec<u32>, Vec<u32>, Episode)]) -> Vec<Rollout> {
    let eps: Vec<Episode> = lines.iter().map(|l| l.2.clone()).collect();
    let a = advantages(m, &eps);
    let f = |x: &[f64]| x.iter().map(|&y| y as f32).collect::<Vec<f32>>();
    lines
        .iter()
        .enumerate()
        .map(|(i, (p, r, e))| Rollout {
            prompt: p.clone(),
            response: r.clone(),
            logprobs: f(&e.logprobs),
            values: f(&e.values),
            advantages: f(&a.advantages[i]),
            returns: f(&a.returns[i]),
        })
        .collect()
}

struct GradsJob(GradsArgs);

impl Job for GradsJob {
    type Out = ();
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let a = self.0;
        let lines = read_rollouts(&a.rollouts)?;
        let policy = Model::load(be, &a.policy).with_context(|| format!("loading the policy {}", a.policy.display()))?;
        let value = Model::load(be, &a.value).with_context(|| format!("loading the value model {}", a.value.display()))?;
        let vocab = policy.cfg.vocab_size;
        if let Some(bad) = lines.iter().flat_map(|l| l.prompt_ids.iter().chain(&l.response_ids)).find(|&&x| x as usize >= vocab) {
            bail!("{}: token id {bad} is outside the vocabulary of {vocab}", a.rollouts.display());
        }
        let math = a.math.math();
        let eps: Vec<(Vec<u32>, Vec<u32>, Episode)> = lines
            .into_iter()
            .map(|l| {
                let e = Episode {
                    logprobs: l.logprobs,
                    ref_logprobs: l.ref_logprobs,
                    values: l.values,
                    score_helpful: l.score_helpful,
                    score_safety: l.score_safety,
                    unsafe_prompt: l.unsafe_prompt,
                    eos: l.eos,
                };
                (l.prompt_ids, l.response_ids, e)
            })
            .collect();
        let rollouts = to_rollouts(&math, &eps);
        let mut obj = PpoObjective::new(be, policy, value, math, AdamWConfig::default(), AdamWConfig::default())?;
        let micro = vec![rollouts];
        let total = obj.count(&micro);
        for p in obj.parts() {
            be.zero(llama2_runtime::vm(p.grads))?;
        }
        let s: Sums = obj.forward_backward(be, &micro[0], total)?;
        let value_loss = s.mean_metrics().iter().find(|m| m.0 == "value_loss").map_or(0.0, |m| m.1);
        let mut out = HostWeights::new();
        for p in obj.parts() {
            let mut g = vec![0f32; p.model.layout.total];
            be.download(v(p.grads), &mut g)?;
            for (name, t) in p.model.layout.to_host(&p.model.cfg, &g) {
                out.insert(format!("{}.{name}", p.name), t);
            }
        }
        save_safetensors(&a.out, &out, SaveDtype::F32, None)?;
        println!("{}", json!({"policy_loss": s.mean_loss(), "value_loss": value_loss}));
        Ok(())
    }
}

/// `debug ppo-grads`.
pub fn run_grads(a: GradsArgs) -> Result<()> {
    let dev = a.dev.clone();
    dispatch(&dev, GradsJob(a))
}
