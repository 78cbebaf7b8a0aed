//! `train-tool bench`: whole-step benchmarks (training step, decoding), the
//! numbers compared against peers (PyTorch, llama2.c) run in the same
//! command by tools/bench/*.sh.

use crate::cmd::info::load_config;
use crate::device::{dispatch, DeviceOpts, Job};
use anyhow::Result;
use clap::{Args, Subcommand};
use llama2_model::generate::{Generator, Sampling};
use llama2_model::{Config, Model};
use llama2_runtime::rng::Rng;
use llama2_runtime::Backend;
use llama2_train::optim::AdamWConfig;
use llama2_train::step::{LmTrainer, MicroBatch};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub cmd: BenchCmd,
}

#[derive(Subcommand, Clone, Debug)]
pub enum BenchCmd {
    /// Forward + backward + AdamW on random tokens
    TrainStep(TrainStepArgs),
    /// Greedy decoding of one sequence through the KV cache
    Generate(GenBenchArgs),
    /// A reward-model training step (pairs, margin ranking loss, AdamW) on random tokens
    RmStep(crate::cmd::rm::RmStepArgs),
}

#[derive(Args, Clone, Debug)]
pub struct ModelChoice {
    /// Model directory (HF format)
    #[arg(long, conflicts_with = "preset")]
    pub model: Option<PathBuf>,
    /// A preset with random weights (ref-tiny, ref-small, tiny, small, 1b, ...)
    #[arg(long)]
    pub preset: Option<String>,
    /// Vocabulary size for a preset
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub vocab: Option<u32>,
    /// Number of KV heads for a preset (overrides the preset's)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub kv_heads: Option<u32>,
    /// Seed for random weights and tokens
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl ModelChoice {
    pub(crate) fn load<B: Backend>(&self, be: &B) -> Result<Model<B>> {
        if let Some(dir) = &self.model {
            return Ok(Model::load_path(be, dir)?);
        }
        let mut c: Config = load_config(&None, &self.preset, self.vocab)?;
        if let Some(k) = self.kv_heads {
            c.n_kv_heads = k as usize;
            c.validate()?;
        }
        Ok(Model::init_random(be, c, self.seed)?)
    }
}

#[derive(Args, Clone, Debug)]
pub struct TrainStepArgs {
    #[command(flatten)]
    pub m: ModelChoice,
    /// Sequences per step
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub batch_size: u32,
    /// Tokens per sequence
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1048576))]
    pub seq_len: u32,
    /// Timed steps
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub steps: u32,
    /// Untimed steps first
    #[arg(long, default_value_t = 2)]
    pub warmup: u32,
    /// Print one JSON line
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

#[derive(Args, Clone, Debug)]
pub struct GenBenchArgs {
    #[command(flatten)]
    pub m: ModelChoice,
    /// Prompt tokens (random ids; the first is BOS)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub prompt_len: u32,
    /// Tokens to decode
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub new_tokens: u32,
    /// Timed repetitions (the median is reported)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeats: u32,
    /// Print one JSON line: tokens_per_s (all tokens over the whole call),
    /// decode_tokens_per_s (tokens after the first over the time after the
    /// prefill, as llama2.c's run.c measures), the ids of the last repeat
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

pub(crate) fn median(mut x: Vec<f64>) -> f64 {
    x.sort_by(|a, b| a.total_cmp(b));
    let n = x.len();
    if n % 2 == 1 {
        x[n / 2]
    } else {
        0.5 * (x[n / 2 - 1] + x[n / 2])
    }
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

struct TrainStepJob(TrainStepArgs);

impl Job for TrainStepJob {
    type Out = ();
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let a = self.0;
        let (b, t) = (a.batch_size as usize, a.seq_len as usize);
        let model = a.m.load(be)?;
        let cfg = model.cfg.clone();
        let mut rng = Rng::derive(a.m.seed, "bench-data");
        let v = cfg.vocab_size as u64;
        let mb = MicroBatch { inputs: (0..b * t).map(|_| rng.below(v) as u32).collect(), targets: (0..b * t).map(|_| rng.below(v) as i32).collect() };
        let mut tr = LmTrainer::new(be, model, b, t, AdamWConfig::default())?;
        let mut times = Vec::new();
        for i in 0..a.warmup + a.steps {
            let t0 = Instant::now();
            tr.step(be, std::slice::from_ref(&mb), 1e-4)?;
            be.synchronize()?;
            if i >= a.warmup {
                times.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        let ms = median(times);
        let tps = (b * t) as f64 / (ms / 1e3);
        let flops = cfg.train_flops_per_token(t) * tps;
        let rss = peak_rss_mib();
        if a.json {
            println!(
                "{}",
                serde_json::json!({"step_ms_median": ms, "tokens_per_s": tps, "flops_per_s": flops, "device": be.name(), "params": cfg.n_params(), "peak_rss_mib": rss})
            );
        } else {
            println!("train step {b}x{t} on {}: median {ms:.2} ms, {tps:.0} tokens/s, {:.2} TFLOP/s", be.name(), flops / 1e12);
        }
        Ok(())
    }
}

struct GenBenchJob(GenBenchArgs);

impl Job for GenBenchJob {
    type Out = ();
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let a = self.0;
        let model = a.m.load(be)?;
        let mut rng = Rng::derive(a.m.seed, "bench-prompt");
        let mut prompt: Vec<u32> = vec![model.cfg.bos_id];
        while prompt.len() < a.prompt_len as usize {
            prompt.push(rng.below(model.cfg.vocab_size as u64) as u32);
        }
        let n = a.new_tokens as usize;
        let mut gen = Generator::new(be, &model, 1, prompt.len() + n)?;
        let mut rates = Vec::new();
        // run.c's measure: the tokens after the first, over the time after
        // the first forward (prefill) until the last token is sampled
        let mut decode_rates = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..a.repeats {
            let t0 = Instant::now();
            let out = gen.generate(be, &model, &[prompt.clone()], n, &Sampling::GREEDY, &mut rng, false)?;
            be.synchronize()?;
            let total = t0.elapsed().as_secs_f64();
            rates.push(out.ids[0].len() as f64 / total);
            if n > 1 {
                decode_rates.push((out.ids[0].len() - 1) as f64 / (total - out.prefill_s));
            }
            ids = out.ids[0].clone();
        }
        let tps = median(rates);
        let decode = (!decode_rates.is_empty()).then(|| median(decode_rates.clone()));
        if a.json {
            println!(
                "{}",
                serde_json::json!({"tokens_per_s": tps, "decode_tokens_per_s": decode, "decode_tokens_per_s_all": decode_rates,
                    "new_tokens": n, "prompt_len": prompt.len(), "device": be.name(), "ids": ids})
            );
        } else {
            println!("decode {n} tokens on {}: {tps:.1} tokens/s ({:.1} tokens/s after the first forward)", be.name(), decode.unwrap_or(f64::NAN));
        }
        Ok(())
    }
}

pub fn run(a: BenchArgs) -> Result<()> {
    match a.cmd {
        BenchCmd::TrainStep(x) => {
            let dev = x.dev.clone();
            dispatch(&dev, TrainStepJob(x))
        }
        BenchCmd::Generate(x) => {
            let dev = x.dev.clone();
            dispatch(&dev, GenBenchJob(x))
        }
        BenchCmd::RmStep(x) => crate::cmd::rm::rm_step(x),
    }
}
