//! `train-tool sft`: supervised fine-tuning in the Llama-2-chat format
//! (PAPER.md section 4): packed sequences, loss only on the answers, cosine
//! schedule from 2e-5, weight decay 0.1, 2 epochs.

use crate::cmd::train_common::{lm_job, LmPlan};
use crate::device::{dispatch_dist, DeviceOpts, DistJob};
use crate::flags::{LmHeadFlags, OptFlags, RunFlags};
use anyhow::{bail, Context, Result};
use clap::Args;
use llama2_model::generate::Sampling;
use llama2_model::tokenizer::Tokenizer;
use llama2_model::Model;
use llama2_runtime::comm::Comm;
use llama2_runtime::Backend;
use llama2_train::run::BatchSource;
use llama2_train::schedule::LrSchedule;
use llama2_train::sft::{answer_prompts, load_records, split_dialogs, Packing, SftData};
use serde_json::json;
use std::path::{Path, PathBuf};

/// `--packing` (see `llama2_train::sft::Packing`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackingArg {
    Concat,
    Whole,
}

impl PackingArg {
    pub fn packing(self) -> Packing {
        match self {
            PackingArg::Concat => Packing::Concat,
            PackingArg::Whole => Packing::Whole,
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct SftArgs {
    /// The model to fine-tune (HF format directory or a GGUF file)
    #[arg(long, required_unless_present = "resume")]
    pub init: Option<PathBuf>,
    /// Dialog datasets (JSON Lines or JSON arrays: messages, conversations, prompt/completion, Alpaca)
    #[arg(long, num_args = 1.., required = true)]
    pub data: Vec<PathBuf>,
    /// Tokenizer (.model, .gguf or tokenizer.json; default: the model's own). Its chat template, if any, formats the dialogs
    /// and gives the loss masks; without one, Llama-2-chat
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Fraction of the dialogs held out for validation loss and chat samples
    #[arg(long, default_value_t = 0.05, value_parser = crate::flags::parse_unit)]
    pub val_fraction: f64,
    /// Sequences per micro-batch (packed, each exactly --seq-len tokens)
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub batch_size: u32,
    /// Tokens per packed sequence (the paper: 4096)
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1048576))]
    pub seq_len: u32,
    /// Passes over the training dialogs (the paper: 2); sets --steps unless given
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub epochs: u32,
    /// Peak learning rate (the paper: 2e-5)
    #[arg(long, default_value_t = 2e-5, value_parser = crate::flags::parse_lr)]
    pub lr: f64,
    /// Warm-up steps (the paper is silent; default: 3% of the steps)
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// The cosine schedule ends at this fraction of the peak
    #[arg(long, default_value_t = 0.1, value_parser = crate::flags::parse_unit)]
    pub min_lr_ratio: f64,
    /// How dialogs fill rows: concat (cut at --seq-len regardless of dialogs) or whole (one dialog per row, padded, never cut; longer ones skipped; what GAtt samples need)
    #[arg(long, value_enum, default_value_t = PackingArg::Concat)]
    pub packing: PackingArg,
    /// Held-out prompts to answer at the end (0 = none)
    #[arg(long, default_value_t = 8)]
    pub samples: usize,
    /// Token budget of each sampled answer
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub sample_tokens: u32,
    /// Temperature of the held-out answers (0 = greedy; default: `train-tool chat`'s)
    #[arg(long, default_value_t = 0.7, value_parser = crate::flags::parse_temperature)]
    pub sample_temperature: f32,
    /// Nucleus probability of the held-out answers (default: `train-tool chat`'s)
    #[arg(long, default_value_t = 0.9, value_parser = crate::flags::parse_top_p)]
    pub sample_top_p: f32,
    #[command(flatten)]
    pub opt: OptFlags,
    #[command(flatten)]
    pub run: RunFlags,
    #[command(flatten)]
    pub head: LmHeadFlags,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

/// The tokenizer given, or the model's own: the vocabulary of a `.gguf`
/// model file, or the tokenizer saved in a model directory.
pub fn find_tokenizer(given: &Option<PathBuf>, model: &Path) -> Result<Tokenizer> {
    let path = given.as_deref().unwrap_or(model);
    Tokenizer::find(path).with_context(|| format!("loading the tokenizer of {}; HINT: pass --tokenizer PATH", path.display()))
}

/// Writes the tokenizer next to a saved model (`tokenizer.model`, or
/// `tokenizer.json` for byte-level BPE; `tokenizer_config.json` with the
/// chat template), so the model directory is self-contained.
pub fn save_tokenizer(tok: &Tokenizer, dir: &Path) -> Result<()> {
    tok.save_beside(dir)?;
    Ok(())
}

struct SftJob(SftArgs);

impl DistJob for SftJob {
    type Out = ();
    fn run<B: Backend>(self, be: &B, comm: &dyn Comm<B>) -> Result<()> {
        let a = self.0;
        let (b, t) = (a.batch_size as usize, a.seq_len as usize);
        let fresh = || -> Result<Model<B>> {
            let dir = a.init.clone().context("--init DIR is required")?;
            Model::load_path(be, &dir).with_context(|| format!("loading {}", dir.display()))
        };
        // filled by the plan: what the samples at the end need
        let mut kept = None;
        let plan = |model: &Model<B>, ckpt: Option<&Path>| -> Result<LmPlan> {
            let dir = ckpt.or(a.init.as_deref()).context("--init DIR is required")?;
            let tok = find_tokenizer(&a.tokenizer, dir).or_else(|e| match (&a.init, ckpt) {
                (Some(init), Some(_)) => find_tokenizer(&a.tokenizer, init),
                _ => Err(e),
            })?;
            if tok.vocab_size() != model.cfg.vocab_size {
                bail!(
                    "the tokenizer has {} pieces but the model's vocabulary is {}; HINT: pass the model's own tokenizer",
                    tok.vocab_size(),
                    model.cfg.vocab_size
                );
            }
            let mut dialogs = Vec::new();
            for p in &a.data {
                dialogs.extend(load_records(p)?);
            }
            let (train_d, held) = split_dialogs(dialogs, a.val_fraction, a.run.seed);
            let packing = a.packing.packing();
            let train = SftData::from_records(&tok, &train_d, b, t, Some(a.run.seed), false, packing)?;
            if train.skipped > 0 {
                eprintln!("sft: {} of {} training dialogs are longer than --seq-len {t} and were skipped (--packing whole)", train.skipped, train_d.len());
            }
            let val: Option<Box<dyn BatchSource>> = if held.is_empty() {
                None
            } else {
                SftData::from_records(&tok, &held, b, t, None, true, packing).ok().map(|v| Box::new(v) as Box<dyn BatchSource>)
            };
            let held: Vec<_> = held.into_iter().map(|r| r.messages).collect();
            let per_epoch = train.batches_per_epoch() as u64 / (a.run.grad_accum as u64 * comm.world() as u64);
            let steps = a.run.steps.unwrap_or((per_epoch * a.epochs as u64).max(1));
            let warmup = a.warmup_steps.unwrap_or(((steps as f64) * 0.03).round() as u64);
            let schedule = LrSchedule::Cosine { peak: a.lr, warmup, total: steps, min_ratio: a.min_lr_ratio };
            let mut r = a.run.resolve(be, "sft", &model.cfg, a.data.clone(), (b, t), steps, schedule, &a.opt);
            r.job_args = json!({
                "init": a.init, "tokenizer": tok.path(), "chat_format": llama2_model::chat::ChatFormat::for_tokenizer(&tok)?.name(),
                "dialogs_train": train_d.len(), "dialogs_held_out": held.len(), "tokens_per_epoch": train.tokens(),
                "answer_tokens_per_epoch": train.answer_tokens(), "epochs": a.epochs,
                "packing": format!("{:?}", packing).to_lowercase(), "skipped_dialogs": train.skipped,
            })
            .as_object()
            .cloned()
            .unwrap_or_default();
            kept = Some((tok, held));
            Ok(LmPlan { train: Box::new(train), val, resolved: r })
        };
        let done = lm_job(be, comm, "sft", &a.run, &a.opt, &a.head, (b, t), fresh, plan)?;
        let (Some(final_dir), Some((tok, held))) = (done.final_dir, kept) else { return Ok(()) };
        if comm.rank() != 0 {
            return Ok(());
        }
        save_tokenizer(&tok, &final_dir)?;
        if a.samples > 0 && !held.is_empty() {
            let n = a.samples.min(held.len());
            let s = Sampling { temperature: a.sample_temperature, top_k: None, top_p: Some(a.sample_top_p) };
            let samples = answer_prompts(be, &done.model, &tok, &held[..n], a.sample_tokens as usize, &s, a.run.seed)?;
            let ended = samples.iter().filter(|x| x.ended).count();
            let recs: Vec<_> = samples
                .iter()
                .map(|x| {
                    json!({"prompt": x.prompt.last().map(|m| m.content.clone()), "answer": x.answer, "reference": x.reference, "ended_with_eos": x.ended, "tokens": x.tokens,
                           "temperature": a.sample_temperature, "top_p": a.sample_top_p})
                })
                .collect();
            let out = &a.run.out;
            llama2_model::weights::write_atomic(&out.join("samples.json"), serde_json::to_string_pretty(&recs)?.as_bytes())?;
            eprintln!(
                "{ended}/{} held-out answers ended with EOS (temperature {}, top-p {}, {} tokens max); see {}",
                samples.len(),
                a.sample_temperature,
                a.sample_top_p,
                a.sample_tokens,
                out.join("samples.json").display()
            );
        }
        Ok(())
    }
}

pub fn run(a: SftArgs) -> Result<()> {
    let dev = a.dev.clone();
    dispatch_dist(&dev, SftJob(a))
}
