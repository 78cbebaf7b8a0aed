//! The set-up of a training run, the same for every objective: start fresh
//! or resume from a checkpoint ([`begin`]), and the run's resolved
//! configuration as one serialisable struct ([`Resolved`]): printed at the
//! start, saved with every checkpoint (`state.json`) and in
//! `OUT/config.run.json`, and compared on resume, so that a resumed run
//! reads the same data stream with the same shapes.
//!
//! Public items: [`Resolved`], [`Begun`], [`begin`].

use crate::checkpoint::{self, LoadedPart, TrainState};
use crate::error::{Result, TrainError};
use crate::optim::AdamWConfig;
use crate::schedule::LrSchedule;
use llama2_model::Model;
use llama2_runtime::rng::Rng;
use llama2_runtime::Backend;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Everything a run was configured with, after defaults were applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resolved {
    /// the job: "pretrain", "sft", "rm", ...
    pub job: String,
    /// the backend ("cpu", "cuda:0")
    pub device: String,
    /// config.json of the trained model
    pub model: Value,
    /// training data (files or directories)
    pub data: Vec<PathBuf>,
    /// sequences (or pairs) per micro-batch
    pub batch_size: usize,
    /// tokens per sequence
    pub seq_len: usize,
    /// micro-batches per optimizer step on each rank
    pub grad_accum: usize,
    /// data-parallel ranks (the global batch is batch_size x grad_accum x
    /// world_size sequences)
    #[serde(default = "one")]
    pub world_size: usize,
    /// ZeRO-1: the optimizer state sharded over the ranks
    #[serde(default = "yes")]
    pub zero: bool,
    /// optimizer steps of the whole run
    pub steps: u64,
    pub schedule: LrSchedule,
    pub adamw: AdamWConfig,
    /// the seed every random stream derives from
    pub seed: u64,
    /// checkpoint every N steps (0: only the final model)
    pub save_every: u64,
    /// checkpoints kept (0: all)
    pub keep_last: usize,
    /// validation every N steps (0: at the end)
    pub val_every: u64,
    /// batches per validation
    pub val_batches: usize,
    /// what only this job has (init, preset, epochs, dataset counts, ...)
    #[serde(flatten)]
    pub job_args: Map<String, Value>,
}

fn one() -> usize {
    1
}

fn yes() -> bool {
    true
}

/// The fields a resumed run must share with the run that saved the
/// checkpoint: they decide the data stream and the shape of every step
/// (with `grad_accum x world_size`, the micro-batches of a global step:
/// a run may resume at another world size with the same global batch).
const RESUME_KEYS: [&str; 5] = ["job", "data", "batch_size", "seq_len", "seed"];

impl Resolved {
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Refuses to resume a checkpoint saved with other data-stream settings
    /// (a saved configuration without a key, e.g. an older run, is not
    /// checked on that key).
    pub fn check_resume(&self, saved: &Value) -> Result<()> {
        let now = self.to_json();
        for k in RESUME_KEYS {
            let (s, n) = (&saved[k], &now[k]);
            if !s.is_null() && s != n {
                return Err(TrainError::Invalid(format!(
                    "--{} is {n} but the checkpoint was made with {s}; HINT: resume with the same value (an exact resume needs the same data stream)",
                    k.replace('_', "-")
                )));
            }
        }
        let per_step = |v: &Value| v["grad_accum"].as_u64().map(|g| (g, v["world_size"].as_u64().unwrap_or(1)));
        if let (Some((sg, sw)), Some((ng, nw))) = (per_step(saved), per_step(&now)) {
            if sg * sw != ng * nw {
                return Err(TrainError::Invalid(format!(
                    "--grad-accum x ranks is {ng} x {nw} = {} micro-batches per step but the checkpoint was made with {sg} x {sw} = {}; HINT: resume with the same global batch (e.g. --grad-accum {}), an exact resume needs the same data stream",
                    ng * nw,
                    sg * sw,
                    if (sg * sw).is_multiple_of(nw) { (sg * sw / nw).to_string() } else { format!("(impossible at {nw} ranks)") }
                )));
            }
        }
        Ok(())
    }

    /// The resolved configuration as printed at the start of a run (llm.c's
    /// `[GPT-2]` block): one line per setting, the model on one line.
    pub fn print(&self) {
        eprintln!("[{}]", self.job);
        if let Value::Object(obj) = self.to_json() {
            for (k, v) in &obj {
                if k != "model" && k != "job" {
                    eprintln!("{k:<18} {v}");
                }
            }
        }
        let m = &self.model;
        eprintln!(
            "{:<18} {} vocab {} hidden {} ffn {} layers {} heads {}/{}",
            "model",
            m["architectures"][0].as_str().unwrap_or("?"),
            m["vocab_size"],
            m["hidden_size"],
            m["intermediate_size"],
            m["num_hidden_layers"],
            m["num_attention_heads"],
            m["num_key_value_heads"]
        );
    }

    /// Prints it and writes `out/config.run.json`.
    pub fn announce(&self, out: &Path) -> Result<()> {
        self.print();
        std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
        let p = out.join("config.run.json");
        let text = serde_json::to_string_pretty(self).map_err(|e| TrainError::Invalid(e.to_string()))?;
        llama2_model::weights::write_atomic(&p, text.as_bytes())?;
        Ok(())
    }
}

/// A run's starting point.
pub struct Begun<B: Backend> {
    /// the trained models by name, with their AdamW moments when resumed
    pub parts: Vec<LoadedPart<B>>,
    pub resumed: bool,
    pub state: TrainState,
    /// the checkpoint resumed from
    pub from: Option<PathBuf>,
}

impl<B: Backend> Begun<B> {
    /// The single trained model (one-model runs).
    pub fn single(mut self) -> Result<(Model<B>, Option<checkpoint::Moments>, TrainState, bool)> {
        if self.parts.len() != 1 {
            return Err(TrainError::Invalid(format!("expected one trained model, the checkpoint holds {}", self.parts.len())));
        }
        let p = self.parts.remove(0);
        let moments = if self.resumed { Some(p.moments) } else { None };
        Ok((p.model, moments, self.state, self.resumed))
    }
}

/// Resumes from `resume` (a checkpoint or a run directory) or starts fresh
/// with the models `fresh` makes (named), at step 0 with the run's random
/// stream derived from `seed`.
/// The error type is the caller's (anything a [`TrainError`] converts into).
pub fn begin<B: Backend, E: From<TrainError>>(
    be: &B,
    resume: Option<&Path>,
    seed: u64,
    fresh: impl FnOnce() -> std::result::Result<Vec<(String, Model<B>)>, E>,
) -> std::result::Result<Begun<B>, E> {
    if let Some(r) = resume {
        let ld = checkpoint::load(be, r)?;
        eprintln!("resuming from {} at step {}", ld.dir.display(), ld.state.step);
        let (parts, state, dir) = ld.into_parts();
        return Ok(Begun { parts, resumed: true, state, from: Some(dir) });
    }
    let parts = fresh()?.into_iter().map(|(name, model)| LoadedPart { name, model, moments: (Vec::new(), Vec::new(), 0) }).collect();
    let state = TrainState { step: 0, data: Default::default(), rng: Rng::derive(seed, "run").state(), tokens_seen: 0, elapsed_s: 0.0, config: Value::Null };
    Ok(Begun { parts, resumed: false, state, from: None })
}
