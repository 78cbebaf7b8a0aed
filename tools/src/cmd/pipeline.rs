//! `train-tool pipeline`: the project's main job, on a built-in default.
//!
//! The first stages of the paper's pipeline on data shipped with the repo:
//! 1. a BPE vocabulary (Llama settings) trained on the corpus (Jane Austen);
//! 2. the corpus tokenised into token shards, paragraphs as documents
//!    (`BOS text EOS`), every 20th paragraph held out for validation;
//! 3. a tiny Llama pretrained on it (warm-up + cosine, AdamW, the paper's
//!    optimizer settings);
//! 4. SFT on an instruction set in the Llama-2-chat format (loss on answers
//!    only, packed sequences);
//! 5. chat samples on held-out prompts;
//!
//! and `runs/<name>/report.md` with the loss curves, the validation loss,
//! the chat samples, timings and the energy estimate. Every stage writes
//! its own directory under the run (tokenizer, data, pretrain, sft).

use crate::cmd::pretrain::PretrainArgs;
use crate::cmd::sft::SftArgs;
use crate::device::{DeviceKind, DeviceOpts};
use crate::flags::{OptFlags, RunFlags};
use anyhow::{bail, Context, Result};
use clap::Args;
use llama2_model::chat::{encode_dialog, Role};
use llama2_model::shards::ShardWriter;
use llama2_model::tokenizer::train::{TrainConfig, Trainer};
use llama2_model::tokenizer::{EncodeOptions, Tokenizer};
use llama2_train::metrics::MetricsLog;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Clone, Debug)]
pub struct PipelineArgs {
    /// Run name: everything goes to `runs/<name>/`
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Directory of the runs
    #[arg(long, default_value = "runs")]
    pub runs_dir: PathBuf,
    /// Corpus: text files or directories of .txt files (default: the Jane Austen novels in data/corpus)
    #[arg(long, num_args = 1..)]
    pub corpus: Vec<PathBuf>,
    /// SFT dialogs (default: data/sft/alpaca_en_demo.json)
    #[arg(long, num_args = 1..)]
    pub sft_data: Vec<PathBuf>,
    /// BPE vocabulary size
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(300..=65536))]
    pub vocab_size: u32,
    /// Model shape (a preset: tiny, small, ...)
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Pretraining steps
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub pretrain_steps: u64,
    /// Pretraining batch size
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Sequence length (pretraining and SFT)
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(8..))]
    pub seq_len: u32,
    /// Pretraining peak learning rate (a tiny model takes a larger one than the paper's 3e-4 for 7B)
    #[arg(long, default_value_t = 2e-3, value_parser = crate::flags::parse_lr)]
    pub lr: f64,
    /// SFT epochs
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub sft_epochs: u32,
    /// SFT peak learning rate (the paper's 2e-5 is for 7B; a tiny model takes more)
    #[arg(long, default_value_t = 1e-3, value_parser = crate::flags::parse_lr)]
    pub sft_lr: f64,
    /// SFT keeps dialogs of at most this many tokens (short answers suit a tiny model)
    #[arg(long, default_value_t = 160, value_parser = clap::value_parser!(u32).range(16..))]
    pub sft_max_tokens: u32,
    /// Held-out chat prompts answered at the end
    #[arg(long, default_value_t = 40)]
    pub samples: usize,
    /// Seed of every random stream
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

fn repo_default(rel: &str) -> PathBuf {
    // next to the working directory first (a clone), then next to the binary's source tree
    let here = PathBuf::from(rel);
    if here.exists() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn text_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "txt"))
                .collect();
            v.sort();
            out.extend(v);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            bail!("{}: no such file or directory; HINT: --corpus takes text files or directories of .txt files", p.display());
        }
    }
    if out.is_empty() {
        bail!("no .txt files in the corpus");
    }
    Ok(out)
}

/// Paragraphs (blank-line separated), hard line breaks joined by spaces.
fn paragraphs(text: &str) -> Vec<String> {
    text.split("\n\n").map(|p| p.split_whitespace().collect::<Vec<_>>().join(" ")).filter(|p| !p.is_empty()).collect()
}

/// A stage's wall time, for the report.
struct Timer(Vec<(String, f64)>, Instant);

impl Timer {
    fn lap(&mut self, what: &str) {
        let t = self.1.elapsed().as_secs_f64();
        let before: f64 = self.0.iter().map(|x| x.1).sum();
        self.0.push((what.to_string(), t - before));
        eprintln!("[pipeline] {what}: {:.1} s", t - before);
    }
}

pub fn run(a: PipelineArgs) -> Result<()> {
    let run = a.runs_dir.join(&a.name);
    std::fs::create_dir_all(&run).with_context(|| format!("creating {}", run.display()))?;
    let corpus = if a.corpus.is_empty() { vec![repo_default("data/corpus/janeausten")] } else { a.corpus.clone() };
    let sft_data = if a.sft_data.is_empty() { vec![repo_default("data/sft/alpaca_en_demo.json")] } else { a.sft_data.clone() };
    let files = text_files(&corpus)?;
    let mut timer = Timer(Vec::new(), Instant::now());

    // 1. vocabulary
    let mut docs: Vec<String> = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {}; HINT: the corpus must be UTF-8 text", f.display()))?;
        docs.extend(paragraphs(&text));
    }
    let cfg = TrainConfig { vocab_size: a.vocab_size, ..TrainConfig::default() };
    let mut tr = Trainer::new(cfg)?;
    for d in &docs {
        tr.add_sentence(d);
    }
    let tok = tr.train(&mut |_| {})?;
    let tok_path = run.join("tokenizer.model");
    tok.save_spm_model(&tok_path)?;
    let tok = Tokenizer::load(&tok_path)?;
    timer.lap("tokenizer");

    // 2. token shards: paragraphs as documents, every 20th held out
    let data_dir = run.join("data");
    std::fs::create_dir_all(&data_dir)?;
    let (bos, eos) = (tok.bos_id().context("tokenizer without BOS")?, tok.eos_id().context("tokenizer without EOS")?);
    let enc = tok.encode_batch(&docs, EncodeOptions { bos: false, eos: false })?;
    let mut train_w = ShardWriter::create(data_dir.join("train_000000.bin"))?;
    let mut val_w = ShardWriter::create(data_dir.join("val_000000.bin"))?;
    for (i, ids) in enc.iter().enumerate() {
        let w = if i % 20 == 19 { &mut val_w } else { &mut train_w };
        w.push(&[bos])?;
        w.push(ids)?;
        w.push(&[eos])?;
    }
    let (n_train, n_val) = (train_w.finish()?, val_w.finish()?);
    let bytes: usize = docs.iter().map(|d| d.len()).sum();
    timer.lap("tokenize");
    eprintln!("[pipeline] {} paragraphs, {bytes} bytes -> {n_train} train + {n_val} val tokens", docs.len());

    // 3. pretraining
    let dev = a.dev.clone();
    let pre_out = run.join("pretrain");
    let pre_steps = a.pretrain_steps;
    crate::cmd::pretrain::run(PretrainArgs {
        init: None,
        preset: Some(a.preset.clone()),
        vocab: Some(tok.vocab_size() as u32),
        data: data_dir.join("train_000000.bin"),
        val_data: Some(data_dir.join("val_000000.bin")),
        batch_size: a.batch_size,
        seq_len: a.seq_len,
        shuffle: true,
        lr: a.lr,
        warmup_steps: (pre_steps / 20).max(1),
        min_lr_ratio: 0.1,
        opt: default_opt(),
        run: run_flags(&pre_out, pre_steps, (pre_steps / 8).max(1), a.seed),
        dev: dev.clone(),
    })?;
    let pre_final = pre_out.join("final");
    tok.save_spm_model(pre_final.join("tokenizer.model"))?;
    timer.lap("pretrain");

    // 4. SFT on short dialogs
    let mut dialogs = Vec::new();
    for p in &sft_data {
        dialogs.extend(llama2_train::sft::load_dialogs(p)?);
    }
    let total_dialogs = dialogs.len();
    let mut short = Vec::new();
    for d in dialogs {
        if encode_dialog(&tok, &d)?.0.len() <= a.sft_max_tokens as usize {
            short.push(d);
        }
    }
    let sft_file = run.join("data").join("sft.jsonl");
    let mut lines = String::new();
    for d in &short {
        let msgs: Vec<Value> = d.iter().map(|m| json!({"role": role_name(m.role), "content": m.content})).collect();
        lines.push_str(&json!({ "messages": msgs }).to_string());
        lines.push('\n');
    }
    std::fs::write(&sft_file, lines)?;
    eprintln!("[pipeline] SFT: {} of {total_dialogs} dialogs have at most {} tokens", short.len(), a.sft_max_tokens);
    let sft_out = run.join("sft");
    let val_fraction = (a.samples as f64 / short.len().max(1) as f64).min(0.5);
    crate::cmd::sft::run(SftArgs {
        init: Some(pre_final.clone()),
        data: vec![sft_file],
        tokenizer: Some(tok_path.clone()),
        val_fraction,
        batch_size: a.batch_size,
        seq_len: a.seq_len,
        epochs: a.sft_epochs,
        lr: a.sft_lr,
        warmup_steps: None,
        min_lr_ratio: 0.1,
        packing: crate::cmd::sft::PackingArg::Concat,
        samples: a.samples,
        sample_tokens: a.sft_max_tokens,
        sample_temperature: 0.7,
        sample_top_p: 0.9,
        opt: default_opt(),
        run: run_flags(&sft_out, 0, 0, a.seed),
        dev,
    })?;
    timer.lap("sft + chat samples");

    report(&a, &run, &timer, bytes, docs.len(), n_train, n_val, short.len(), total_dialogs, &tok)
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

fn default_opt() -> OptFlags {
    OptFlags { weight_decay: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-5, grad_clip: 1.0 }
}

fn run_flags(out: &Path, steps: u64, val_every: u64, seed: u64) -> RunFlags {
    RunFlags {
        steps: if steps == 0 { None } else { Some(steps) },
        grad_accum: 1,
        zero: 1,
        save_every: 0,
        keep_last: 1,
        resume: None,
        out: out.to_path_buf(),
        seed,
        val_every,
        val_batches: 20,
        stop_after: None,
        quiet: false,
        power_watts: None,
        carbon_intensity: 0.385,
        peak_tflops: None,
    }
}

fn curve(recs: &[Value], key: &str) -> Vec<(f64, f64)> {
    recs.iter().filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(key)?.as_f64()?))).collect()
}

#[allow(clippy::too_many_arguments)]
fn report(
    a: &PipelineArgs,
    run: &Path,
    timer: &Timer,
    bytes: usize,
    paras: usize,
    n_train: u64,
    n_val: u64,
    n_sft: usize,
    n_dialogs: usize,
    tok: &Tokenizer,
) -> Result<()> {
    let pre = MetricsLog::read(&run.join("pretrain/metrics.jsonl"))?;
    let sft = MetricsLog::read(&run.join("sft/metrics.jsonl"))?;
    let pre_sum: Value = serde_json::from_str(&std::fs::read_to_string(run.join("pretrain/summary.json"))?)?;
    let sft_sum: Value = serde_json::from_str(&std::fs::read_to_string(run.join("sft/summary.json"))?)?;
    let samples: Vec<Value> = std::fs::read_to_string(run.join("sft/samples.json")).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    let plots = crate::cmd::report::loss_plots(run, &[("pretrain", &pre), ("sft", &sft)])?;
    let val_pre = curve(&pre, "val_loss");
    let final_val = val_pre.last().map(|x| x.1).unwrap_or(f64::NAN);
    let ln_v = (tok.vocab_size() as f64).ln();
    let ended = samples.iter().filter(|s| s["ended_with_eos"].as_bool() == Some(true)).count();
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(run.join("pretrain/final/config.json"))?)?;
    let mut r = String::new();
    writeln!(r, "# Pipeline run `{}`\n", a.name)?;
    writeln!(r, "Produced by `train-tool pipeline` ({} device). Every number below was measured in this run.\n", a.dev.device_name())?;
    writeln!(r, "## Data\n")?;
    writeln!(
        r,
        "- corpus: {paras} paragraphs, {bytes} bytes; BPE vocabulary of {} pieces (Llama settings: byte fallback, split digits, dummy prefix)",
        tok.vocab_size()
    )?;
    writeln!(r, "- pretraining tokens: {n_train} train, {n_val} validation (every 20th paragraph)")?;
    writeln!(
        r,
        "- SFT: {n_sft} of {n_dialogs} instruction dialogs (those of at most {} tokens), Llama-2-chat format, loss on answers only\n",
        a.sft_max_tokens
    )?;
    writeln!(r, "## Model\n")?;
    writeln!(
        r,
        "`{}` preset: hidden {}, {} layers, {} heads / {} KV heads, ffn {}, vocab {}\n",
        a.preset,
        cfg["hidden_size"],
        cfg["num_hidden_layers"],
        cfg["num_attention_heads"],
        cfg["num_key_value_heads"],
        cfg["intermediate_size"],
        cfg["vocab_size"]
    )?;
    writeln!(r, "## Results\n")?;
    writeln!(r, "| | value |\n|---|---|")?;
    writeln!(r, "| final pretraining validation loss | {final_val:.4} |")?;
    writeln!(r, "| ln(vocab) | {ln_v:.4} |")?;
    writeln!(r, "| validation loss / ln(vocab) | {:.3} (goal < 0.65) |", final_val / ln_v)?;
    if let Some(v) = curve(&sft, "val_loss").last() {
        writeln!(r, "| final SFT validation loss (answer tokens) | {:.4} |", v.1)?;
    }
    writeln!(
        r,
        "| held-out chat answers ending with EOS | {ended}/{} ({:.0}%; sampled as `train-tool chat` does: temperature 0.7, top-p 0.9; {} tokens max) |",
        samples.len(),
        100.0 * ended as f64 / samples.len().max(1) as f64,
        a.sft_max_tokens
    )?;
    writeln!(r)?;
    for p in &plots {
        writeln!(r, "![{}]({})\n", p.0, p.1)?;
    }
    writeln!(r, "## Timings\n\n| stage | seconds |\n|---|---|")?;
    for (k, v) in &timer.0 {
        writeln!(r, "| {k} | {v:.1} |")?;
    }
    let total: f64 = timer.0.iter().map(|x| x.1).sum();
    writeln!(r, "| total | {total:.1} |\n")?;
    writeln!(r, "## Energy (the paper's method, Table 2: device-hours x power x carbon intensity)\n")?;
    writeln!(r, "| stage | device-hours | W per device | kWh | kg CO2eq |\n|---|---|---|---|---|")?;
    for (name, s) in [("pretrain", &pre_sum), ("sft", &sft_sum)] {
        let e = &s["energy"];
        writeln!(
            r,
            "| {name} | {:.5} | {} | {:.6} | {:.6} |",
            e["device_hours"].as_f64().unwrap_or(0.0),
            e["watts_per_device"],
            e["kwh"].as_f64().unwrap_or(0.0),
            e["kg_co2eq"].as_f64().unwrap_or(0.0)
        )?;
    }
    writeln!(
        r,
        "\nCarbon intensity {} kg CO2eq/kWh; power per device as given by `--power-watts` (default 700 W per GPU, 15 W per CPU thread).\n",
        pre_sum["energy"]["kg_co2_per_kwh"]
    )?;
    writeln!(r, "## Chat samples (held-out prompts)\n")?;
    for s in samples.iter().take(8) {
        writeln!(r, "**user:** {}\n", s["prompt"].as_str().unwrap_or("").trim())?;
        writeln!(
            r,
            "**model:** {}{}\n",
            s["answer"].as_str().unwrap_or("").trim(),
            if s["ended_with_eos"].as_bool() == Some(true) { "" } else { " [no EOS]" }
        )?;
        if let Some(rf) = s["reference"].as_str() {
            writeln!(r, "*reference:* {}\n", rf.trim())?;
        }
    }
    llama2_model::weights::write_atomic(&run.join("report.md"), r.as_bytes())?;
    eprintln!("[pipeline] report: {}", run.join("report.md").display());
    Ok(())
}

impl DeviceOpts {
    fn device_name(&self) -> &'static str {
        match self.device {
            DeviceKind::Auto => "auto",
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        }
    }
}
