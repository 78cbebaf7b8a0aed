//! `train-tool rs`: rejection-sampling fine-tuning (PAPER.md section 6; the
//! paper's section 3.2.3), iterated: sample K answers per prompt from the
//! latest policy, score them with the reward model(s), keep the best answer
//! per prompt over all iterations (`--pool all`, the paper's fix; `--pool
//! last`: this iteration's only), fine-tune the policy on the kept answers
//! with the SFT loss (answer tokens only) through the one trainer
//! ([`lm_job`]), from the previous iteration's policy.
//!
//! Run directory (`--out`):
//! - `rs.config.json`: the settings; a rerun with the same `--out` must use
//!   the same ones and continues from the last finished stage
//! - `eval-0.json`: the starting policy on `--eval-prompts` (if given)
//! - `iter-N/samples.jsonl`: every answer with every score (stage 1)
//! - `iter-N/figure7.{json,png}`: the paper's Figure 7 (mean over prompts of
//!   the max and the median reward of the first N samples, N = 1..K);
//!   `iter-N/rewards.json`: reward distributions of the samples and of the
//!   kept answers; `iter-N/figure8.{json,png}` with `--temperatures`
//! - `iter-N/pool.jsonl`: the training set, the best answer per prompt
//!   with its scores and iteration (stage 2)
//! - `iter-N/sft/`: the fine-tuning run; `iter-N/sft/final` is the policy
//!   of iteration N (stage 3; `--save-every` checkpoints resume inside it)
//! - `iter-N/eval.json`: that policy on `--eval-prompts` (stage 4)
//! - `summary.json`, `rs_rewards.png`: rewards per iteration

use crate::cmd::sft::{find_tokenizer, save_tokenizer};
use crate::cmd::train_common::{lm_job, LmPlan};
use crate::device::{dispatch, DeviceOpts, Job};
use crate::flags::{parse_lr, parse_temperature, parse_top_p, parse_unit, LmHeadFlags, OptFlags, RunFlags};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use llama2_model::generate::{BatchOptions, BatchStats, Sampling};
use llama2_model::tokenizer::Tokenizer;
use llama2_model::weights::write_atomic;
use llama2_model::Model;
use llama2_runtime::rng::Rng;
use llama2_runtime::Backend;
use llama2_tools::plot::{save_png, LineChart, Series};
use llama2_train::metrics::Progress;
use llama2_train::rejection::{
    best_of_n, best_per_prompt, distribution, load_prompts, mean_reward, read_answers, rewards_by_prompt, sample_and_score, training_examples, update_pool,
    write_answers, Answer, BestOfN, PoolMode, Rewarders, RsPrompt,
};
use llama2_train::schedule::LrSchedule;
use llama2_train::score::{check_reward_model, DEFAULT_SCORE_TOKENS};
use llama2_train::sft::{Packing, SftData};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PoolArg {
    /// per prompt, the best answer of ALL iterations so far (the paper, from RLHF-V3 on)
    All,
    /// per prompt, this iteration's best answer only (the earlier variant, which regressed)
    Last,
}

#[derive(Args, Clone, Debug)]
pub struct RsArgs {
    /// The starting policy (HF directory, a LlamaForCausalLM)
    #[arg(long)]
    pub policy: PathBuf,
    /// The (helpfulness) reward model: a LlamaForSequenceClassification with one label
    #[arg(long)]
    pub rm: PathBuf,
    /// A safety reward model; with it the reward is the safety RM's where the prompt is tagged unsafe or its reward is below --safety-threshold, else the helpfulness RM's
    #[arg(long)]
    pub safety_rm: Option<PathBuf>,
    /// The safety reward decides where sigmoid(safety score) is below this (the paper: 0.15; 0 = only on prompts tagged unsafe)
    #[arg(long, default_value_t = 0.15, value_parser = crate::cmd::evaluate::parse_fraction)]
    pub safety_threshold: f64,
    /// Prompts, JSON Lines: {"prompt_ids": [...]}, or with a tokenizer {"prompt": "..."} / {"messages": [...]}; optional "unsafe": true
    #[arg(long)]
    pub prompts: PathBuf,
    /// Held-out prompts (same format): the mean reward of the starting policy and of each iteration's on them
    #[arg(long)]
    pub eval_prompts: Option<PathBuf>,
    /// Answers sampled per prompt (K)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100000))]
    pub k: u32,
    /// Iterations (each: sample, score, keep the best, fine-tune)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub iterations: u32,
    /// Run directory (see `train-tool rs --help` above); rerun with the same one to continue
    #[arg(long)]
    pub out: PathBuf,
    /// Sampling temperature (the paper: the best moves up during RLHF, 1.2-1.3 for its RLHF models)
    #[arg(long, default_value_t = 1.0, value_parser = parse_temperature)]
    pub temperature: f32,
    /// Keep only the K most likely tokens when sampling
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: Option<u32>,
    /// Nucleus sampling probability (0 < P <= 1)
    #[arg(long, value_parser = parse_top_p)]
    pub top_p: Option<f32>,
    /// Token budget of each answer
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=1048576))]
    pub max_new_tokens: u32,
    /// Sequences decoded together
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub gen_batch_size: u32,
    /// Which answers an iteration trains on
    #[arg(long, value_enum, default_value = "all")]
    pub pool: PoolArg,
    /// Figure 8: also sample K answers per prompt at each of these temperatures every iteration (e.g. 0.8,1.0,1.2)
    #[arg(long, value_delimiter = ',', value_parser = parse_temperature)]
    pub temperatures: Vec<f32>,
    /// Answers per held-out prompt in each evaluation
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub eval_samples: u32,
    /// Tokenizer (default: the one beside the policy, if any); text prompts need one
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Fine-tuning: sequences per micro-batch (packed, --seq-len tokens each)
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub batch_size: u32,
    /// Fine-tuning: tokens per packed sequence
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1048576))]
    pub seq_len: u32,
    /// Fine-tuning: passes over the kept answers per iteration
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub epochs: u32,
    /// Fine-tuning: peak learning rate (the paper's SFT: 2e-5)
    #[arg(long, default_value_t = 2e-5, value_parser = parse_lr)]
    pub lr: f64,
    /// Fine-tuning: warm-up steps (default: 3% of the steps)
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// Fine-tuning: the cosine schedule ends at this fraction of the peak
    #[arg(long, default_value_t = 0.1, value_parser = parse_unit)]
    pub min_lr_ratio: f64,
    /// Fine-tuning: a checkpoint every N steps (0 = none), so an interrupted fine-tuning resumes inside
    #[arg(long, default_value_t = 0)]
    pub save_every: u64,
    /// Seed of every random stream (sampling per iteration, packing order)
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// No progress output
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub opt: OptFlags,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

/// Settings a continued run must share with the one that started `--out`.
fn settings(a: &RsArgs) -> Value {
    json!({
        "policy": a.policy, "rm": a.rm, "safety_rm": a.safety_rm, "prompts": a.prompts, "eval_prompts": a.eval_prompts,
        "k": a.k, "temperature": a.temperature, "top_k": a.top_k, "top_p": a.top_p, "max_new_tokens": a.max_new_tokens,
        "pool": format!("{:?}", a.pool).to_lowercase(), "temperatures": a.temperatures, "eval_samples": a.eval_samples,
        "batch_size": a.batch_size, "seq_len": a.seq_len, "epochs": a.epochs, "lr": a.lr, "warmup_steps": a.warmup_steps,
        "min_lr_ratio": a.min_lr_ratio, "seed": a.seed,
    })
}

/// Writes `rs.config.json`, or checks a continued run against it.
fn check_settings(a: &RsArgs) -> Result<()> {
    let path = a.out.join("rs.config.json");
    let now = settings(a);
    if path.is_file() {
        let saved: Value = serde_json::from_str(&std::fs::read_to_string(&path)?).with_context(|| format!("reading {}", path.display()))?;
        if let (Some(s), Some(n)) = (saved.as_object(), now.as_object()) {
            for (k, v) in n {
                if s.get(k) != Some(v) {
                    bail!(
                        "--{} is {v} but {} was started with {}; HINT: continue with the same settings (only --iterations may grow), or use another --out",
                        k.replace('_', "-"),
                        a.out.display(),
                        s.get(k).unwrap_or(&Value::Null)
                    );
                }
            }
        }
        eprintln!("continuing the run in {}", a.out.display());
    } else {
        std::fs::create_dir_all(&a.out)?;
        write_atomic(&path, serde_json::to_string_pretty(&now)?.as_bytes())?;
    }
    Ok(())
}

fn sampling(a: &RsArgs, temperature: f32) -> Sampling {
    Sampling { temperature, top_k: a.top_k.map(|k| k as usize), top_p: a.top_p }
}

/// A progress bar over answers, with the generation speed.
fn gen_progress(label: &str, total: usize, quiet: bool) -> (Progress, usize) {
    (Progress::new(label, total as u64, 0, quiet), 0)
}

/// Samples `k` answers per prompt at `temperature` and scores them.
#[allow(clippy::too_many_arguments)]
fn sample<B: Backend>(
    be: &B,
    a: &RsArgs,
    policy: &Model<B>,
    rw: &Rewarders<B>,
    prompts: &[RsPrompt],
    k: usize,
    temperature: f32,
    seed: u64,
    iteration: usize,
    label: &str,
    tok: Option<&Tokenizer>,
) -> Result<Vec<Answer>> {
    let mut o = BatchOptions::new(a.max_new_tokens as usize, sampling(a, temperature), seed);
    o.samples = k;
    o.batch = a.gen_batch_size as usize;
    let (bar, mut shown) = gen_progress(label, prompts.len() * k, a.quiet);
    let quiet = a.quiet;
    let mut progress = |s: &BatchStats| {
        if !quiet && s.done != shown {
            shown = s.done;
            bar.update(s.done as u64, s.total as u64, &format!("{:.1} tok/s", s.generated as f64 / s.seconds.max(1e-9)));
        }
    };
    let (mut answers, stats) = sample_and_score(be, policy, rw, prompts, &o, iteration, &mut progress)?;
    bar.finish();
    if let Some(t) = tok {
        for x in answers.iter_mut() {
            let body = if x.finish == "eos" { &x.ids[..x.ids.len() - 1] } else { &x.ids[..] };
            x.text = Some(t.decode(body)?);
        }
    }
    if !a.quiet {
        eprintln!(
            "{label}: {} answers, {} tokens in {:.1} s ({:.1} tok/s), mean reward {:.4}",
            answers.len(),
            stats.generated,
            stats.seconds,
            stats.generated as f64 / stats.seconds.max(1e-9),
            mean_reward(&answers)
        );
    }
    Ok(answers)
}

/// One chart of curves against N (Figures 7 and 8).
fn curves_png(path: &Path, title: &str, y_label: &str, series: Vec<(String, Vec<(f64, f64)>)>) -> Result<()> {
    let chart = LineChart {
        title: title.into(),
        x_label: "N (samples per prompt)".into(),
        y_label: y_label.into(),
        series: series.into_iter().map(|(name, points)| Series { name, points }).collect(),
        log_y: false,
    };
    save_png(&chart.into(), path, 900, 500)?;
    Ok(())
}

fn pts(b: &BestOfN, y: &[f64]) -> Vec<(f64, f64)> {
    b.n.iter().zip(y).map(|(&n, &v)| (n as f64, v)).collect()
}

/// The held-out evaluation: mean reward of `policy` on `prompts`, written to `path`.
#[allow(clippy::too_many_arguments)]
fn evaluate<B: Backend>(
    be: &B,
    a: &RsArgs,
    policy: &Model<B>,
    rw: &Rewarders<B>,
    prompts: &[RsPrompt],
    path: &Path,
    iteration: usize,
    tok: Option<&Tokenizer>,
) -> Result<f64> {
    if path.is_file() {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        return Ok(v["mean_reward"].as_f64().unwrap_or(f64::NAN));
    }
    // the same streams every iteration (common random numbers: the
    // difference between iterations is the policy's, not the draw's)
    let seed = Rng::derive(a.seed, "rs/eval").next_u64();
    let ans = sample(be, a, policy, rw, prompts, a.eval_samples as usize, a.temperature, seed, iteration, &format!("eval {iteration}"), tok)?;
    let m = mean_reward(&ans);
    let rewards: Vec<f32> = ans.iter().map(|x| x.reward).collect();
    let helpful: Vec<f32> = ans.iter().map(|x| x.helpfulness).collect();
    let v = json!({
        "iteration": iteration, "prompts": prompts.len(), "samples_per_prompt": a.eval_samples, "temperature": a.temperature,
        "mean_reward": m, "mean_helpfulness_score": helpful.iter().map(|&x| x as f64).sum::<f64>() / helpful.len().max(1) as f64,
        "rewards": distribution(&rewards), "ended_with_eos": ans.iter().filter(|x| x.finish == "eos").count(),
        "mean_tokens": ans.iter().map(|x| x.ids.len()).sum::<usize>() as f64 / ans.len().max(1) as f64,
    });
    write_atomic(path, serde_json::to_string_pretty(&v)?.as_bytes())?;
    write_answers(&path.with_extension("jsonl"), &ans)?;
    Ok(m)
}

struct RsJob(RsArgs);

impl Job for RsJob {
    type Out = ();
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let a = self.0;
        check_settings(&a)?;
        let tok = match (&a.tokenizer, find_tokenizer(&None, &a.policy)) {
            (Some(_), _) => Some(find_tokenizer(&a.tokenizer, &a.policy)?),
            (None, Ok(t)) => Some(t),
            (None, Err(_)) => None,
        };
        let prompts = load_prompts(&a.prompts, tok.as_ref())?;
        let eval_prompts = match &a.eval_prompts {
            Some(p) => Some(load_prompts(p, tok.as_ref())?),
            None => None,
        };
        let load = |dir: &Path, what: &str| Model::load(be, dir).with_context(|| format!("loading {what} from {}", dir.display()));
        let rm = load(&a.rm, "the reward model")?;
        check_reward_model(&rm, &format!("--rm {}", a.rm.display()))?;
        let safety = match &a.safety_rm {
            Some(p) => {
                let m = load(p, "the safety reward model")?;
                check_reward_model(&m, &format!("--safety-rm {}", p.display()))?;
                Some(m)
            }
            None => None,
        };
        let policy0 = load(&a.policy, "the policy")?;
        let ctx = rm.rope_len.min(safety.as_ref().map_or(usize::MAX, |m| m.rope_len));
        for m in std::iter::once(&rm).chain(safety.as_ref()) {
            if m.cfg.vocab_size != policy0.cfg.vocab_size {
                bail!("the reward model's vocabulary is {} but the policy's is {}; HINT: a reward model made from the policy (`train-tool rm init`) shares its tokenizer", m.cfg.vocab_size, policy0.cfg.vocab_size);
            }
        }
        let longest = prompts.iter().chain(eval_prompts.iter().flatten()).map(|p| p.ids.len()).max().unwrap_or(0);
        if longest + a.max_new_tokens as usize > ctx {
            bail!("a prompt of {longest} tokens + {} new tokens exceeds the reward model's context of {ctx}; HINT: lower --max-new-tokens", a.max_new_tokens);
        }
        let rw = Rewarders { helpfulness: &rm, safety: safety.as_ref(), batch_tokens: DEFAULT_SCORE_TOKENS, safety_threshold: a.safety_threshold as f32 };
        let k = a.k as usize;
        let mode = match a.pool {
            PoolArg::All => PoolMode::All,
            PoolArg::Last => PoolMode::Last,
        };
        let mut summary: Vec<Value> = Vec::new();
        let eval0 = match &eval_prompts {
            Some(ep) => Some(evaluate(be, &a, &policy0, &rw, ep, &a.out.join("eval-0.json"), 0, tok.as_ref())?),
            None => None,
        };
        drop(policy0);
        let mut pool: Vec<Option<Answer>> = Vec::new();
        for it in 1..=a.iterations as usize {
            let dir = a.out.join(format!("iter-{it}"));
            std::fs::create_dir_all(&dir)?;
            let policy_dir = if it == 1 { a.policy.clone() } else { a.out.join(format!("iter-{}", it - 1)).join("sft").join("final") };
            let mut policy: Option<Model<B>> = None;
            let get_policy = |policy: &mut Option<Model<B>>| -> Result<()> {
                if policy.is_none() {
                    *policy = Some(load(&policy_dir, "the policy")?);
                }
                Ok(())
            };
            // stage 1: K answers per prompt, scored
            let samples_path = dir.join("samples.jsonl");
            let samples = if samples_path.is_file() {
                read_answers(&samples_path)?
            } else {
                get_policy(&mut policy)?;
                let seed = Rng::derive(a.seed, &format!("rs/iter/{it}")).next_u64();
                let s =
                    sample(be, &a, policy.as_ref().context("policy")?, &rw, &prompts, k, a.temperature, seed, it, &format!("iter {it}: sample"), tok.as_ref())?;
                write_answers(&samples_path, &s)?;
                s
            };
            if samples.len() != prompts.len() * k {
                bail!("{} holds {} answers, expected {} x {k}; HINT: delete it to sample again", samples_path.display(), samples.len(), prompts.len());
            }
            // Figure 7 and the reward distributions
            let by_prompt = rewards_by_prompt(&samples, prompts.len());
            let fig7 = best_of_n(&by_prompt);
            let best_idx = best_per_prompt(&samples, prompts.len());
            let best: Vec<Option<Answer>> = best_idx.iter().map(|i| i.map(|i| samples[i].clone())).collect();
            let kept: Vec<f32> = best.iter().flatten().map(|x| x.reward).collect();
            let all: Vec<f32> = samples.iter().map(|x| x.reward).collect();
            write_atomic(
                &dir.join("figure7.json"),
                serde_json::to_string_pretty(&json!({"iteration": it, "temperature": a.temperature, "prompts": prompts.len(), "best_of_n": fig7}))?.as_bytes(),
            )?;
            curves_png(
                &dir.join("figure7.png"),
                &format!("iteration {it}: reward of the best and the median of N samples (T = {})", a.temperature),
                "mean reward over prompts",
                vec![("max of N".into(), pts(&fig7, &fig7.mean_max)), ("median of N".into(), pts(&fig7, &fig7.mean_median))],
            )?;
            write_atomic(
                &dir.join("rewards.json"),
                serde_json::to_string_pretty(&json!({"samples": distribution(&all), "kept": distribution(&kept)}))?.as_bytes(),
            )?;
            // Figure 8: max of N against N, one curve per temperature
            if !a.temperatures.is_empty() && !dir.join("figure8.json").is_file() {
                let mut curves = Vec::new();
                for &t in &a.temperatures {
                    let r = if t == a.temperature {
                        by_prompt.clone()
                    } else {
                        get_policy(&mut policy)?;
                        let seed = Rng::derive(a.seed, &format!("rs/iter/{it}/t/{t}")).next_u64();
                        let s = sample(be, &a, policy.as_ref().context("policy")?, &rw, &prompts, k, t, seed, it, &format!("iter {it}: T={t}"), None)?;
                        rewards_by_prompt(&s, prompts.len())
                    };
                    curves.push((t, best_of_n(&r)));
                }
                curves_png(
                    &dir.join("figure8.png"),
                    &format!("iteration {it}: max reward of N samples, by temperature"),
                    "mean over prompts of the max reward",
                    curves.iter().map(|(t, b)| (format!("T = {t}"), pts(b, &b.mean_max))).collect(),
                )?;
                let v: Vec<Value> = curves.iter().map(|(t, b)| json!({"temperature": t, "best_of_n": b})).collect();
                write_atomic(&dir.join("figure8.json"), serde_json::to_string_pretty(&json!({"iteration": it, "curves": v}))?.as_bytes())?;
            }
            // stage 2: the pool
            let pool_path = dir.join("pool.jsonl");
            pool = if pool_path.is_file() {
                let entries = read_answers(&pool_path)?;
                let mut p = vec![None; prompts.len()];
                for e in entries {
                    let i = e.prompt_index;
                    *p.get_mut(i).with_context(|| format!("{}: prompt {i} is not in --prompts", pool_path.display()))? = Some(e);
                }
                p
            } else {
                let p = update_pool(&pool, &best, mode);
                write_answers(&pool_path, &p.iter().flatten().cloned().collect::<Vec<_>>())?;
                p
            };
            let pool_rewards: Vec<f32> = pool.iter().flatten().map(|x| x.reward).collect();
            // stage 3: fine-tune on the pool
            let sft_dir = dir.join("sft");
            let final_dir = sft_dir.join("final");
            if !final_dir.join("config.json").is_file() {
                drop(policy.take());
                let examples = training_examples(&pool, &prompts);
                let resume = if llama2_train::checkpoint::latest(&sft_dir)?.is_some() { Some(sft_dir.clone()) } else { None };
                let run = RunFlags {
                    steps: None,
                    grad_accum: 1,
                    zero: 1,
                    save_every: a.save_every,
                    keep_last: 1,
                    resume,
                    out: sft_dir.clone(),
                    seed: Rng::derive(a.seed, &format!("rs/sft/{it}")).next_u64(),
                    val_every: 0,
                    val_batches: 1,
                    stop_after: None,
                    quiet: a.quiet,
                    power_watts: None,
                    carbon_intensity: 0.385,
                    peak_tflops: None,
                };
                let (b, t) = (a.batch_size as usize, a.seq_len as usize);
                let fresh = || load(&policy_dir, "the policy");
                let plan = |model: &Model<B>, _ckpt: Option<&Path>| -> Result<LmPlan> {
                    let train = SftData::from_encoded(examples.clone(), b, t, Some(run.seed), false, Packing::Concat)
                        .with_context(|| format!("packing the {} kept answers of iteration {it}", pool_rewards.len()))?;
                    let steps = ((train.batches_per_epoch() as u64) * a.epochs as u64).max(1);
                    let warmup = a.warmup_steps.unwrap_or(((steps as f64) * 0.03).round() as u64);
                    let schedule = LrSchedule::Cosine { peak: a.lr, warmup, total: steps, min_ratio: a.min_lr_ratio };
                    let mut r = run.resolve(be, "rs-sft", &model.cfg, vec![pool_path.clone()], (b, t), steps, schedule, &a.opt);
                    r.job_args = json!({"iteration": it, "policy": policy_dir, "kept_answers": examples.len(), "tokens_per_epoch": train.tokens(),
                                        "answer_tokens_per_epoch": train.answer_tokens(), "epochs": a.epochs, "pool": settings(&a)["pool"]})
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                    Ok(LmPlan { train: Box::new(train), val: None, resolved: r })
                };
                let done = lm_job(be, &llama2_runtime::comm::Single, &format!("rs-sft-{it}"), &run, &a.opt, &LmHeadFlags::default(), (b, t), fresh, plan)?;
                if done.final_dir.is_none() {
                    bail!("the fine-tuning of iteration {it} stopped early");
                }
                if let Some(tk) = &tok {
                    save_tokenizer(tk, &final_dir)?;
                }
            }
            // stage 4: the new policy on held-out prompts
            let eval = match &eval_prompts {
                Some(ep) => {
                    let p = load(&final_dir, "the fine-tuned policy")?;
                    Some(evaluate(be, &a, &p, &rw, ep, &dir.join("eval.json"), it, tok.as_ref())?)
                }
                None => None,
            };
            let rec = json!({
                "iteration": it, "mean_sample_reward": mean_reward(&samples), "mean_kept_reward": kept.iter().map(|&x| x as f64).sum::<f64>() / kept.len().max(1) as f64,
                "mean_pool_reward": pool_rewards.iter().map(|&x| x as f64).sum::<f64>() / pool_rewards.len().max(1) as f64,
                "pool_from_earlier_iterations": pool.iter().flatten().filter(|x| x.iteration < it).count(),
                "max_minus_median_at_k": fig7.mean_max.last().zip(fig7.mean_median.last()).map(|(x, m)| x - m),
                "eval_mean_reward": eval, "policy": final_dir,
            });
            eprintln!("{rec}");
            summary.push(rec);
        }
        let series = |key: &str| -> Vec<(f64, f64)> { summary.iter().filter_map(|r| Some((r["iteration"].as_f64()?, r[key].as_f64()?))).collect() };
        let mut eval_pts = series("eval_mean_reward");
        if let Some(e) = eval0 {
            eval_pts.insert(0, (0.0, e));
        }
        let chart = LineChart {
            title: "rejection sampling: mean reward per iteration".into(),
            x_label: "iteration".into(),
            y_label: "reward".into(),
            series: vec![
                Series { name: "samples".into(), points: series("mean_sample_reward") },
                Series { name: "kept (best of K)".into(), points: series("mean_kept_reward") },
                Series { name: "pool".into(), points: series("mean_pool_reward") },
                Series { name: "held-out (policy after the iteration)".into(), points: eval_pts },
            ],
            log_y: false,
        };
        save_png(&chart.into(), &a.out.join("rs_rewards.png"), 900, 500)?;
        let v = json!({"eval_mean_reward_start": eval0, "iterations": summary, "final_policy": a.out.join(format!("iter-{}", a.iterations)).join("sft").join("final")});
        write_atomic(&a.out.join("summary.json"), serde_json::to_string_pretty(&v)?.as_bytes())?;
        println!("{v}");
        Ok(())
    }
}

pub fn run(a: RsArgs) -> Result<()> {
    let dev = a.dev.clone();
    dispatch(&dev, RsJob(a))
}
