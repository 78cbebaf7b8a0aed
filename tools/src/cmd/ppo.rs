//! PPO commands: `train-tool debug ppo-math` (the arithmetic as a pure
//! function, for tests and for anyone checking our numbers) and
//! `train-tool debug ppo-grads` (the gradients of one PPO step of a policy
//! and a value model on given rollouts), and the hyper-parameter flags
//! they share with `train-tool ppo`.

use crate::device::{dispatch, dispatch_dist, DeviceOpts, DistJob, Job, Refused};
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
    /// Output safetensors: `policy.<HF name>` and `value.<HF name>`, f32
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

/// `train-tool ppo`.
#[derive(Args, Clone, Debug)]
pub struct PpoArgs {
    /// The policy to optimise (a causal LM directory; the reference policy by default)
    #[arg(long)]
    pub policy: PathBuf,
    /// The helpfulness reward model (LlamaForSequenceClassification directory)
    #[arg(long)]
    pub rm: PathBuf,
    /// The safety reward model (used on unsafe prompts and answers it scores below the threshold)
    #[arg(long)]
    pub safety_rm: Option<PathBuf>,
    /// The reference policy of the KL penalty (default: --policy)
    #[arg(long = "ref")]
    pub reference: Option<PathBuf>,
    /// The value model to start from (default: --rm)
    #[arg(long)]
    pub value: Option<PathBuf>,
    /// Training prompts, JSON lines: {"prompt_ids": [...]} or {"prompt": "..."} / {"messages": [...]} (Llama-2-chat), optional "unsafe": true
    #[arg(long)]
    pub prompts: PathBuf,
    /// Held-out prompts for evaluation and early stopping (same format)
    #[arg(long)]
    pub val_prompts: Option<PathBuf>,
    /// Tokenizer for text prompts (default: the one beside --policy)
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// PPO iterations (each: rollouts of --prompts-per-iter prompts, then one pass of mini-batch steps)
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: u64,
    /// Episodes per iteration (the paper: 512)
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub prompts_per_iter: u32,
    /// Episodes per optimizer step (the paper: 64)
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub minibatch: u32,
    /// Episodes per forward/backward pass (gradient accumulation inside a mini-batch)
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub micro_batch: u32,
    /// Passes over each rollout batch (the paper: one gradient step per mini-batch, one pass)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub ppo_epochs: u32,
    /// Longest answer
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_new_tokens: u32,
    /// Rollout temperature (no top-k / top-p: they bias the KL estimate)
    #[arg(long, default_value_t = 1.0, value_parser = crate::flags::parse_temperature)]
    pub temperature: f32,
    /// Policy learning rate, constant (the paper: 1e-6)
    #[arg(long, default_value_t = 1e-6, value_parser = crate::flags::parse_lr)]
    pub lr: f64,
    /// Value-model learning rate, constant (the paper is silent; OpenRLHF's 9e-6)
    #[arg(long, default_value_t = 9e-6, value_parser = crate::flags::parse_lr)]
    pub value_lr: f64,
    /// Held-out evaluation every N iterations (0: never)
    #[arg(long, default_value_t = 1)]
    pub eval_every: u64,
    /// Stop after this many evaluations without a better held-out reward (0: never)
    #[arg(long, default_value_t = 0)]
    pub patience: u64,
    /// Sequences per forward pass when scoring and computing log-probabilities
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub score_batch: u32,
    /// Under mpirun: 1 = ZeRO-1 (AdamW state sharded over the ranks), 0 = every rank keeps all of it (same weights)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub zero: u8,
    #[command(flatten)]
    pub math: PpoMathFlags,
    #[command(flatten)]
    pub opt: crate::flags::OptFlags,
    /// Output directory (checkpoints, metrics.jsonl, plots, final/policy, final/value)
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from a checkpoint (a ckpt-* directory, or the run's --out for its newest)
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Stop after this many iterations in this invocation (resume later with --resume)
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub stop_after: Option<u64>,
    /// Keep the newest K checkpoints (0 = all)
    #[arg(long, default_value_t = 2)]
    pub keep_last: usize,
    /// Seed of every random stream (prompt order, sampling, mini-batches)
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// No progress output
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

/// Reads a prompt file (see `--prompts`).
pub fn read_prompts(path: &Path, tok: Option<&llama2_model::tokenizer::Tokenizer>, vocab: usize) -> Result<Vec<llama2_train::ppo::run::PpoPrompt>> {
    use llama2_model::chat::{encode_prompt, Message, Role};
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |m: &str| {
            anyhow::anyhow!("{}: line {}: {m}; HINT: lines are {{\"prompt_ids\": [...]}}, {{\"prompt\": \"...\"}} or {{\"messages\": [...]}}, with an optional \"unsafe\": true", path.display(), i + 1)
        };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(&format!("not valid JSON ({e})")))?;
        let unsafe_prompt = v.get("unsafe").and_then(|u| u.as_bool()).unwrap_or(false);
        let ids: Vec<u32> = if let Some(ids) = v.get("prompt_ids") {
            serde_json::from_value(ids.clone()).map_err(|_| bad("prompt_ids must be a list of token ids"))?
        } else {
            let dialog = if let Some(p) = v.get("prompt").and_then(|p| p.as_str()) {
                vec![Message::new(Role::User, p)]
            } else if let Some(m) = v.get("messages") {
                m.as_array()
                    .and_then(|arr| {
                        arr.iter().map(|x| Some(Message::new(Role::parse(x.get("role")?.as_str()?)?, x.get("content")?.as_str()?))).collect::<Option<Vec<_>>>()
                    })
                    .filter(|d| !d.is_empty())
                    .ok_or_else(|| bad("messages must be [{\"role\", \"content\"}, ...]"))?
            } else {
                return Err(bad("no prompt_ids, prompt or messages"));
            };
            let tok = tok.ok_or_else(|| bad("a text prompt needs a tokenizer (--tokenizer, or tokenizer.model beside --policy)"))?;
            let mut d = dialog;
            if d.last().map(|m| m.role) == Some(Role::Assistant) {
                d.pop();
            }
            encode_prompt(tok, &d)?
        };
        if ids.is_empty() {
            return Err(bad("empty prompt"));
        }
        if let Some(x) = ids.iter().find(|&&x| x as usize >= vocab) {
            return Err(bad(&format!("token id {x} is outside the vocabulary of {vocab}")));
        }
        out.push(llama2_train::ppo::run::PpoPrompt { ids, unsafe_prompt });
    }
    if out.is_empty() {
        bail!("{}: no prompts", path.display());
    }
    Ok(out)
}

/// The memory plan of a PPO run: what each model holds, in bytes.
fn memory_plan(cuda: bool, trained: &[(&str, usize)], frozen: &[(&str, usize)]) -> String {
    // trained: weights (CUDA: f32 master + bf16 copy), f32 grads, f32 AdamW m and v
    let per_trained = if cuda { 4 + 2 + 4 + 4 + 4 } else { 4 + 4 + 4 + 4 };
    let per_frozen = if cuda { 2 } else { 4 };
    let gb = |n: usize, b: usize| n as f64 * b as f64 / 1e9;
    let mut s = String::from("[ppo] memory plan (weights, gradients, optimizer state; activations extra):");
    let mut total = 0.0;
    for (n, p) in trained {
        s += &format!(" {n} {p} params x {per_trained} B = {:.3} GB (trained);", gb(*p, per_trained));
        total += gb(*p, per_trained);
    }
    for (n, p) in frozen {
        s += &format!(" {n} {p} params x {per_frozen} B = {:.3} GB (frozen, no gradients or optimizer state);", gb(*p, per_frozen));
        total += gb(*p, per_frozen);
    }
    s + &format!(" total {total:.3} GB")
}

struct PpoJob(PpoArgs);

impl DistJob for PpoJob {
    type Out = ();
    fn run<B: Backend>(self, be: &B, comm: &dyn llama2_runtime::comm::Comm<B>) -> Result<()> {
        use llama2_train::ppo::run::{run_ppo_dist, Frozen, PpoSettings};
        let lead = comm.rank() == 0;
        use llama2_train::session::begin;
        let a = self.0;
        let math = a.math.math();
        let value_dir = a.value.clone().unwrap_or_else(|| a.rm.clone());
        let begun = begin(be, a.resume.as_deref(), a.seed, || -> Result<_> {
            let p = Model::load(be, &a.policy).with_context(|| format!("loading the policy {}", a.policy.display()))?;
            let v = Model::load(be, &value_dir).with_context(|| format!("loading the value model {}", value_dir.display()))?;
            Ok(vec![("policy".to_string(), p), ("value".to_string(), v)])
        })?;
        let resumed = begun.resumed;
        let mut parts = begun.parts;
        if parts.len() != 2 || parts[0].name != "policy" || parts[1].name != "value" {
            bail!("the checkpoint does not hold a policy and a value model; HINT: --resume takes a `train-tool ppo` run");
        }
        let value = parts.pop().context("value model")?;
        let policy = parts.pop().context("policy")?;
        let frozen = Frozen {
            reference: Model::load_frozen(be, a.reference.as_ref().unwrap_or(&a.policy)).context("loading the reference policy")?,
            rm: Model::load_frozen(be, &a.rm).with_context(|| format!("loading the reward model {}", a.rm.display()))?,
            safety_rm: match &a.safety_rm {
                Some(p) => Some(Model::load_frozen(be, p).with_context(|| format!("loading the safety reward model {}", p.display()))?),
                None => None,
            },
        };
        for (name, m) in std::iter::once(("--rm", &frozen.rm)).chain(frozen.safety_rm.as_ref().map(|m| ("--safety-rm", m))) {
            if m.cfg.head != llama2_model::config::Head::Score {
                bail!("{name} is not a reward model (no score head); HINT: make one with `train-tool rm init` and `train-tool rm train`");
            }
            if m.cfg.vocab_size != policy.model.cfg.vocab_size {
                bail!(
                    "{name} has a vocabulary of {}, the policy {}; HINT: reward models must share the policy's tokenizer",
                    m.cfg.vocab_size,
                    policy.model.cfg.vocab_size
                );
            }
        }
        let tok = match &a.tokenizer {
            Some(p) => Some(llama2_model::tokenizer::Tokenizer::load(p).with_context(|| format!("loading {}", p.display()))?),
            None => ["tokenizer.model", "tokenizer.json"]
                .iter()
                .map(|f| a.policy.join(f))
                .find(|p| p.is_file())
                .and_then(|p| llama2_model::tokenizer::Tokenizer::load(&p).ok()),
        };
        let vocab = policy.model.cfg.vocab_size;
        let prompts = read_prompts(&a.prompts, tok.as_ref(), vocab)?;
        let val = match &a.val_prompts {
            Some(p) => read_prompts(p, tok.as_ref(), vocab)?,
            None => Vec::new(),
        };
        let cuda = be.name().starts_with("cuda");
        let np = |m: &Model<B>| m.layout.total;
        let mut fz = vec![("reference", np(&frozen.reference)), ("rm", np(&frozen.rm))];
        if let Some(s) = &frozen.safety_rm {
            fz.push(("safety_rm", np(s)));
        }
        if lead {
            eprintln!("{}", memory_plan(cuda, &[("policy", np(&policy.model)), ("value", np(&value.model))], &fz));
        }
        let (pol_opt, val_opt) = (a.opt.adamw(), a.opt.adamw());
        let mut obj = PpoObjective::new(be, policy.model, value.model, math, pol_opt, val_opt)?;
        let mut dist = llama2_train::dist::Dist::new(comm, a.zero == 1);
        if comm.world() > 1 {
            // every rank starts from rank 0's weights
            comm.broadcast(be, llama2_runtime::vm(&mut obj.policy.model.params), 0)?;
            comm.broadcast(be, llama2_runtime::vm(&mut obj.value.model.params), 0)?;
        }
        dist.shard_optimizers(be, &mut obj)?;
        if resumed {
            llama2_train::checkpoint::restore_optimizer(be, &mut obj.policy.opt, &policy.moments)?;
            llama2_train::checkpoint::restore_optimizer(be, &mut obj.value.opt, &value.moments)?;
        }
        let st = PpoSettings {
            math,
            iterations: a.iterations,
            stop_after: a.stop_after,
            prompts_per_iter: a.prompts_per_iter as usize,
            minibatch: a.minibatch as usize,
            micro_batch: a.micro_batch as usize,
            ppo_epochs: a.ppo_epochs as usize,
            max_new_tokens: a.max_new_tokens as usize,
            temperature: a.temperature,
            policy_lr: a.lr,
            value_lr: a.value_lr,
            eval_every: a.eval_every,
            patience: a.patience,
            score_batch: a.score_batch as usize,
            seed: a.seed,
            keep_last: a.keep_last,
            quiet: a.quiet,
        };
        let resolved = json!({
            "job": "ppo", "device": be.name(), "policy": a.policy, "rm": a.rm, "safety_rm": a.safety_rm, "ref": a.reference.as_ref().unwrap_or(&a.policy),
            "value": value_dir, "data": [a.prompts.clone()], "val_prompts": a.val_prompts, "prompts": prompts.len(), "val_prompt_count": val.len(),
            "iterations": a.iterations, "prompts_per_iter": a.prompts_per_iter, "minibatch": a.minibatch, "micro_batch": a.micro_batch,
            "batch_size": a.micro_batch, "seq_len": a.max_new_tokens, "grad_accum": a.minibatch.div_ceil(a.micro_batch),
            "ppo_epochs": a.ppo_epochs, "max_new_tokens": a.max_new_tokens, "temperature": a.temperature, "lr": a.lr, "value_lr": a.value_lr,
            "math": math, "adamw": a.opt.adamw(), "eval_every": a.eval_every, "patience": a.patience, "seed": a.seed,
            "policy_model": obj.policy.model.cfg.to_hf_json(), "value_model": obj.value.model.cfg.to_hf_json(),
            "world_size": comm.world(), "zero": a.zero == 1,
        });
        if resumed {
            for k in ["job", "data", "prompts_per_iter", "minibatch", "micro_batch", "max_new_tokens", "seed", "math"] {
                let (s, n) = (&begun.state.config[k], &resolved[k]);
                if !s.is_null() && s != n {
                    bail!(
                        "--{} is {n} but the checkpoint was made with {s}; HINT: resume with the same value (an exact resume needs the same settings)",
                        k.replace('_', "-")
                    );
                }
            }
        }
        llama2_train::dist::check_same_config(comm, &resolved).map_err(|e| Refused(e.to_string()))?;
        if comm.world() > 1 && (!st.prompts_per_iter.is_multiple_of(comm.world()) || !st.minibatch.div_ceil(st.micro_batch).is_multiple_of(comm.world())) {
            return Err(Refused(format!(
                "{} prompts per iteration and mini-batches of {} episodes in micro-batches of {} do not split evenly over {} ranks; HINT: --prompts-per-iter a multiple of the ranks, --minibatch a multiple of --micro-batch x ranks",
                st.prompts_per_iter,
                st.minibatch,
                st.micro_batch,
                comm.world()
            ))
            .into());
        }
        if lead {
            eprintln!("[ppo] {}", serde_json::to_string(&resolved)?);
            std::fs::create_dir_all(&a.out)?;
            llama2_model::weights::write_atomic(&a.out.join("config.run.json"), serde_json::to_string_pretty(&resolved)?.as_bytes())?;
        }
        let (stats, stopped) = run_ppo_dist(be, &mut dist, &mut obj, &frozen, &prompts, &val, &st, &a.out, begun.state, resumed, &resolved)?;
        let done = stats.last().map(|s| s.iteration).unwrap_or(0);
        if !stopped && done < a.iterations && !stats.is_empty() {
            if lead {
                eprintln!("stopped at iteration {done} of {}; continue with --resume {}", a.iterations, a.out.display());
            }
            return Ok(());
        }
        if !lead {
            return Ok(());
        }
        let fin = a.out.join("final");
        obj.policy.model.save(be, &fin.join("policy"), SaveDtype::F32)?;
        obj.value.model.save(be, &fin.join("value"), SaveDtype::F32)?;
        if let Some(t) = &tok {
            crate::cmd::sft::save_tokenizer(t, &fin.join("policy"))?;
        }
        let recs = llama2_train::metrics::MetricsLog::read(&a.out.join("metrics.jsonl"))?;
        crate::cmd::report::metric_plots(
            &a.out,
            "ppo",
            &recs,
            &[("reward", &["score_raw", "val_reward"]), ("kl", &["kl"]), ("losses", &["policy_loss", "value_loss"])],
        )?;
        eprintln!("{}final policy: {}", if stopped { "early stopping; " } else { "" }, fin.join("policy").display());
        Ok(())
    }
}

/// `train-tool ppo`.
pub fn run(a: PpoArgs) -> Result<()> {
    let dev = a.dev.clone();
    dispatch_dist(&dev, PpoJob(a))
}
