//! `train-tool generate-batch`: many prompts, K samples each, decoded
//! together in one KV cache (`llama2_model::generate::generate_batch`).
//!
//! Input: JSON Lines, one prompt per line: `{"prompt_ids": [...]}`, or with
//! `--tokenizer` `{"prompt": "..."}` (one user turn) / `{"messages": [...]}`
//! in the Llama-2-chat format. Output: JSON Lines in input order, one per
//! answer: `{"prompt_index", "sample", "ids" (generated ids only), "finish":
//! "eos" | "length"}` (+ `"text"` with a tokenizer, `"logprobs"` with
//! `--logprobs`), written atomically at the end. A progress bar with
//! tokens/s on stderr; a final JSON line with the totals on stdout.

use crate::cmd::sft::find_tokenizer;
use crate::device::{dispatch, DeviceOpts, Job};
use crate::flags::{parse_temperature, parse_top_p};
use anyhow::{bail, Context, Result};
use clap::Args;
use llama2_model::generate::{generate_batch, BatchOptions, BatchStats, Completion, GenSink, Sampling, DEFAULT_PREFILL_TOKENS};
use llama2_model::tokenizer::Tokenizer;
use llama2_model::Model;
use llama2_runtime::Backend;
use llama2_train::metrics::Progress;
use llama2_train::rejection::load_prompts;
use serde_json::json;
use std::path::PathBuf;

#[derive(Args, Clone, Debug)]
pub struct GenerateBatchArgs {
    /// Model directory (HF format, a LlamaForCausalLM)
    #[arg(long)]
    pub model: PathBuf,
    /// Prompts, JSON Lines: {"prompt_ids": [...]}, or with --tokenizer {"prompt": "..."} / {"messages": [...]}
    #[arg(long)]
    pub input: PathBuf,
    /// Output JSON Lines, one answer per line in input order
    #[arg(long)]
    pub out: PathBuf,
    /// New tokens per answer at most (fewer where the context ends)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1048576))]
    pub max_new_tokens: u32,
    /// Sequences decoded together (rows of the KV cache)
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch_size: u32,
    /// Answers per prompt (K), each from its own random stream
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100000))]
    pub samples_per_prompt: u32,
    /// Sampling temperature; 0 = greedy
    #[arg(long, default_value_t = 0.0, value_parser = parse_temperature)]
    pub temperature: f32,
    /// Keep only the K most likely tokens
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: Option<u32>,
    /// Nucleus sampling: keep the smallest set of tokens with probability >= P (0 < P <= 1)
    #[arg(long, value_parser = parse_top_p)]
    pub top_p: Option<f32>,
    /// Seed of every answer's random stream (one per prompt and sample)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Do not stop at the end-of-sequence token
    #[arg(long)]
    pub ignore_eos: bool,
    /// Tokenizer (.model, .gguf or tokenizer.json): text prompts in, "text" out
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Also write the log-probability of every generated id (under the model, temperature 1)
    #[arg(long)]
    pub logprobs: bool,
    /// Padded prompt tokens per prefill forward
    #[arg(long, default_value_t = DEFAULT_PREFILL_TOKENS as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub prefill_tokens: u32,
    /// No progress output
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

/// Collects answers and shows progress (answers done, tokens/s).
struct Sink {
    out: Vec<Completion>,
    bar: Progress,
    shown: usize,
    quiet: bool,
}

impl GenSink for Sink {
    fn done(&mut self, c: Completion) -> llama2_model::Result<()> {
        self.out.push(c);
        Ok(())
    }
    fn progress(&mut self, s: &BatchStats) {
        if !self.quiet && s.done != self.shown {
            self.shown = s.done;
            let rate = s.generated as f64 / s.seconds.max(1e-9);
            let rows = if s.decode_steps > 0 { s.row_steps as f64 / s.decode_steps as f64 } else { 0.0 };
            self.bar.update(s.done as u64, s.total as u64, &format!("{} tokens, {rate:.1} tok/s, {rows:.1} rows/step", s.generated));
        }
    }
}

struct GenBatchJob(GenerateBatchArgs);

impl Job for GenBatchJob {
    type Out = ();
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let a = self.0;
        if a.samples_per_prompt > 1 && a.temperature == 0.0 {
            bail!("{} samples per prompt at temperature 0 would all be the same greedy answer; HINT: set --temperature (e.g. 1.0)", a.samples_per_prompt);
        }
        let model = Model::load(be, &a.model).with_context(|| format!("loading the model from {}", a.model.display()))?;
        let tok: Option<Tokenizer> = match &a.tokenizer {
            Some(_) => Some(find_tokenizer(&a.tokenizer, &a.model)?),
            None => None,
        };
        if let Some(t) = &tok {
            if t.vocab_size() != model.cfg.vocab_size {
                bail!(
                    "the tokenizer has {} pieces but the model's vocabulary is {}; HINT: pass the model's own tokenizer",
                    t.vocab_size(),
                    model.cfg.vocab_size
                );
            }
        }
        let prompts: Vec<Vec<u32>> = load_prompts(&a.input, tok.as_ref())?.into_iter().map(|p| p.ids).collect();
        let mut o =
            BatchOptions::new(a.max_new_tokens as usize, Sampling { temperature: a.temperature, top_k: a.top_k.map(|k| k as usize), top_p: a.top_p }, a.seed);
        o.samples = a.samples_per_prompt as usize;
        o.batch = a.batch_size as usize;
        o.stop_at_eos = !a.ignore_eos;
        o.logprobs = a.logprobs;
        o.prefill_tokens = a.prefill_tokens as usize;
        let total = prompts.len() * o.samples;
        let mut sink = Sink { out: Vec::with_capacity(total), bar: Progress::new("generate", total as u64, 0, a.quiet), shown: 0, quiet: a.quiet };
        let stats = generate_batch(be, &model, &prompts, &o, &mut sink).with_context(|| format!("generating answers to {}", a.input.display()))?;
        be.synchronize()?;
        sink.bar.finish();
        let mut out = sink.out;
        out.sort_by_key(|c| (c.prompt, c.sample));
        let mut text = String::new();
        for c in &out {
            let mut rec = json!({"prompt_index": c.prompt, "sample": c.sample, "ids": c.ids, "finish": c.finish.as_str()});
            if let Some(t) = &tok {
                let body = if c.finish == llama2_model::generate::Finish::Eos { &c.ids[..c.ids.len() - 1] } else { &c.ids[..] };
                rec["text"] = json!(t.decode(body)?);
            }
            if let Some(lp) = &c.logprobs {
                rec["logprobs"] = json!(lp);
            }
            text.push_str(&rec.to_string());
            text.push('\n');
        }
        llama2_model::weights::write_atomic(&a.out, text.as_bytes()).with_context(|| format!("writing {}", a.out.display()))?;
        let s = &stats;
        println!(
            "{}",
            json!({
                "prompts": prompts.len(), "samples_per_prompt": o.samples, "answers": out.len(),
                "generated_tokens": s.generated, "prompt_tokens": s.prefill_tokens, "prefill_padded_tokens": s.prefill_padded,
                "ended_with_eos": out.iter().filter(|c| c.finish == llama2_model::generate::Finish::Eos).count(),
                "seconds": s.seconds, "prefill_seconds": s.prefill_s, "tokens_per_s": s.generated as f64 / s.seconds.max(1e-9),
                "decode_steps": s.decode_steps, "mean_rows_per_step": if s.decode_steps > 0 { s.row_steps as f64 / s.decode_steps as f64 } else { 0.0 },
                "batch_size": o.batch, "device": be.name(), "out": a.out,
            })
        );
        Ok(())
    }
}

pub fn run(a: GenerateBatchArgs) -> Result<()> {
    let dev = a.dev.clone();
    dispatch(&dev, GenBatchJob(a))
}
