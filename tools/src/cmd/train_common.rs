//! Flags and helpers shared by the training subcommands (pretrain, sft).

use anyhow::{bail, Result};
use clap::Args;
use llama2_runtime::Backend;
use llama2_train::metrics::Energy;
use llama2_train::optim::AdamWConfig;
use llama2_train::run::{RunConfig, RunSummary};
use llama2_train::schedule::LrSchedule;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

pub fn parse_lr(s: &str) -> std::result::Result<f64, String> {
    let x: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(x > 0.0 && x < 1.0) {
        return Err(format!("learning rate {x} must be in (0, 1)"));
    }
    Ok(x)
}

pub fn parse_unit(s: &str) -> std::result::Result<f64, String> {
    let x: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(0.0..=1.0).contains(&x) {
        return Err(format!("{x} must be in [0, 1]"));
    }
    Ok(x)
}

fn parse_beta(s: &str) -> std::result::Result<f32, String> {
    let x: f32 = s.parse().map_err(|e| format!("{e}"))?;
    if !(0.0..1.0).contains(&x) {
        return Err(format!("beta {x} must be in [0, 1)"));
    }
    Ok(x)
}

fn parse_nonneg(s: &str) -> std::result::Result<f32, String> {
    let x: f32 = s.parse().map_err(|e| format!("{e}"))?;
    if !(x >= 0.0 && x.is_finite()) {
        return Err(format!("{x} must be a finite number >= 0"));
    }
    Ok(x)
}

fn parse_pos(s: &str) -> std::result::Result<f64, String> {
    let x: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(x > 0.0 && x.is_finite()) {
        return Err(format!("{x} must be a finite number > 0"));
    }
    Ok(x)
}

/// AdamW hyper-parameters (defaults: the paper's).
#[derive(Args, Clone, Debug)]
pub struct OptFlags {
    /// Decoupled weight decay on the matrices (not on the RMSNorm gains)
    #[arg(long, default_value_t = 0.1, value_parser = parse_nonneg)]
    pub weight_decay: f32,
    /// AdamW beta1
    #[arg(long, default_value_t = 0.9, value_parser = parse_beta)]
    pub beta1: f32,
    /// AdamW beta2
    #[arg(long, default_value_t = 0.95, value_parser = parse_beta)]
    pub beta2: f32,
    /// AdamW epsilon
    #[arg(long, default_value_t = 1e-5, value_parser = parse_nonneg)]
    pub eps: f32,
    /// Clip the global gradient norm to this (0 = off)
    #[arg(long, default_value_t = 1.0, value_parser = parse_nonneg)]
    pub grad_clip: f32,
}

impl OptFlags {
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig { beta1: self.beta1, beta2: self.beta2, eps: self.eps, weight_decay: self.weight_decay, grad_clip: self.grad_clip }
    }
    pub fn to_json(&self) -> Value {
        json!({"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps, "weight_decay": self.weight_decay, "grad_clip": self.grad_clip})
    }
}

/// Run length, checkpoints, output, accounting.
#[derive(Args, Clone, Debug)]
pub struct RunFlags {
    /// Optimizer steps in the whole run (default: pretrain 1000; sft from --epochs)
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub steps: Option<u64>,
    /// Micro-batches accumulated per optimizer step
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub grad_accum: u32,
    /// Write a checkpoint every N steps (0 = only the final model)
    #[arg(long, default_value_t = 0)]
    pub save_every: u64,
    /// Keep the newest K checkpoints (0 = all)
    #[arg(long, default_value_t = 3)]
    pub keep_last: usize,
    /// Continue from a checkpoint (a ckpt-* directory, or a run's --out for its newest)
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Output directory (checkpoints, metrics.jsonl, plots, final/)
    #[arg(long, default_value = "runs/train")]
    pub out: PathBuf,
    /// Seed of every random stream (initialisation, shuffling, sampling)
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Validation loss every N steps (0 = only at the end)
    #[arg(long, default_value_t = 0)]
    pub val_every: u64,
    /// Batches per validation
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub val_batches: u32,
    /// Stop after this many steps in this invocation (the schedule still spans --steps); resume later with --resume
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub stop_after: Option<u64>,
    /// No progress output
    #[arg(long)]
    pub quiet: bool,
    /// Power per device in watts for the energy estimate (default: 700 for a GPU, the H100 SXM TDP; 15 per CPU thread)
    #[arg(long, value_parser = parse_pos)]
    pub power_watts: Option<f64>,
    /// Grid carbon intensity in kg CO2eq per kWh for the estimate
    #[arg(long, default_value_t = 0.385, value_parser = parse_pos)]
    pub carbon_intensity: f64,
    /// Peak device FLOP/s in TFLOP/s for MFU (default: 989 on CUDA, the H100/H200 dense bf16 peak; none on CPU)
    #[arg(long, value_parser = parse_pos)]
    pub peak_tflops: Option<f64>,
}

impl RunFlags {
    pub fn run_config<B: Backend>(&self, label: &str, steps: u64, schedule: LrSchedule, be: &B, resolved: Value) -> RunConfig {
        let cuda = be.name().starts_with("cuda");
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        let watts = self.power_watts.unwrap_or(if cuda { 700.0 } else { 15.0 * threads });
        let peak = self.peak_tflops.or(if cuda { Some(989.0) } else { None }).map(|t| t * 1e12);
        RunConfig {
            steps,
            stop_after: self.stop_after,
            grad_accum: self.grad_accum as usize,
            schedule,
            save_every: self.save_every,
            keep_last: self.keep_last,
            val_every: self.val_every,
            val_batches: self.val_batches as usize,
            label: label.to_string(),
            quiet: self.quiet,
            energy: Energy { devices: 1.0, watts_per_device: watts, kg_co2_per_kwh: self.carbon_intensity },
            peak_flops: peak,
            resolved,
        }
    }
}

/// Prints the resolved configuration (llm.c's `[GPT-2]` block) and saves it
/// as `out/config.run.json`.
pub fn print_resolved(resolved: &Value, out: &Path) -> Result<()> {
    eprintln!("[run]");
    if let Some(obj) = resolved.as_object() {
        for (k, v) in obj {
            if k == "model" {
                continue;
            }
            eprintln!("{k:<18} {v}");
        }
        if let Some(m) = obj.get("model") {
            eprintln!(
                "{:<18} vocab {} hidden {} ffn {} layers {} heads {}/{}",
                "model", m["vocab_size"], m["hidden_size"], m["intermediate_size"], m["num_hidden_layers"], m["num_attention_heads"], m["num_key_value_heads"]
            );
        }
    }
    std::fs::create_dir_all(out)?;
    llama2_model::weights::write_atomic(&out.join("config.run.json"), serde_json::to_string_pretty(resolved)?.as_bytes())?;
    Ok(())
}

/// On resume, the flags that shape the data stream must equal the saved ones.
pub fn check_resume(saved: &Value, now: &[(&str, Value)]) -> Result<()> {
    for (k, v) in now {
        let s = &saved[*k];
        if !s.is_null() && s != v {
            bail!(
                "--{} is {v} but the checkpoint was made with {s}; HINT: resume with the same value (an exact resume needs the same data stream)",
                k.replace('_', "-")
            );
        }
    }
    Ok(())
}

/// Writes `out/summary.json` and `out/<label>_loss.png`, and prints the
/// energy estimate.
pub fn finish(out: &Path, s: &RunSummary, rc: &RunConfig) -> Result<()> {
    let (hours, kwh, kg) = s.energy;
    let summary = json!({
        "steps": s.steps, "last_loss": s.last_loss, "val": s.val, "seconds": s.seconds, "tokens": s.tokens,
        "energy": {"device_hours": hours, "watts_per_device": rc.energy.watts_per_device, "kwh": kwh,
                   "kg_co2_per_kwh": rc.energy.kg_co2_per_kwh, "kg_co2eq": kg},
    });
    llama2_model::weights::write_atomic(&out.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    let recs = llama2_train::metrics::MetricsLog::read(&out.join("metrics.jsonl"))?;
    crate::cmd::report::loss_plots(out, &[(rc.label.as_str(), &recs)])?;
    eprintln!(
        "{} steps, {} tokens in {:.1} s; last loss {:.4}{}; energy {:.4} device-h x {} W = {:.4} kWh, {:.4} kg CO2eq at {} kg/kWh",
        s.steps,
        s.tokens,
        s.seconds,
        s.last_loss,
        s.val.last().map(|v| format!(", val loss {:.4}", v.1)).unwrap_or_default(),
        hours,
        rc.energy.watts_per_device,
        kwh,
        kg,
        rc.energy.kg_co2_per_kwh
    );
    Ok(())
}
