//! `train-tool generate`: sample a continuation of a prompt with the KV cache.

use crate::device::{dispatch, DeviceOpts, Job};
use crate::flags::{parse_temperature, parse_top_p};
use anyhow::{bail, Context, Result};
use clap::Args;
use llama2_model::generate::{Generator, Sampling};
use llama2_model::Model;
use llama2_runtime::rng::Rng;
use llama2_runtime::Backend;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Clone, Debug)]
pub struct GenerateArgs {
    /// Model: an HF directory or a GGUF file
    #[arg(long)]
    pub model: PathBuf,
    /// Prompt token ids, comma separated (e.g. 1,450,4996)
    #[arg(long, value_delimiter = ',', required = true)]
    pub prompt_ids: Vec<u32>,
    /// Tokens to generate at most
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1048576))]
    pub max_new_tokens: u32,
    /// Sampling temperature; 0 = greedy
    #[arg(long, default_value_t = 0.0, value_parser = parse_temperature)]
    pub temperature: f32,
    /// Keep only the K most likely tokens
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: Option<u32>,
    /// Nucleus sampling: keep the smallest set of tokens with probability >= P (0 < P <= 1)
    #[arg(long, value_parser = parse_top_p)]
    pub top_p: Option<f32>,
    /// Random seed for sampling
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Do not stop at the end-of-sequence token
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print one JSON line {"ids": [...], "tokens_per_s": X}
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

struct GenJob(GenerateArgs);

impl Job for GenJob {
    type Out = ();
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let a = self.0;
        let model = Model::load_path(be, &a.model).with_context(|| format!("loading the model from {}", a.model.display()))?;
        let vocab = model.cfg.vocab_size;
        if let Some(&bad) = a.prompt_ids.iter().find(|&&x| x as usize >= vocab) {
            bail!("prompt id {bad} is outside the vocabulary of {vocab}");
        }
        let cap = a.prompt_ids.len() + a.max_new_tokens as usize;
        let mut gen = Generator::new(be, &model, 1, cap)?;
        let s = Sampling { temperature: a.temperature, top_k: a.top_k.map(|k| k as usize), top_p: a.top_p };
        let mut rng = Rng::derive(a.seed, "sample");
        let t0 = Instant::now();
        let out = gen.generate(be, &model, std::slice::from_ref(&a.prompt_ids), a.max_new_tokens as usize, &s, &mut rng, !a.ignore_eos)?;
        be.synchronize()?;
        let secs = t0.elapsed().as_secs_f64();
        let ids = &out.ids[0];
        let tps = ids.len() as f64 / secs.max(1e-9);
        if a.json {
            println!("{}", serde_json::json!({"ids": ids, "tokens_per_s": tps}));
        } else {
            println!("{}", ids.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","));
            eprintln!("{} tokens in {:.3} s ({tps:.1} tokens/s)", ids.len(), secs);
        }
        Ok(())
    }
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let dev = a.dev.clone();
    dispatch(&dev, GenJob(a))
}
