//! `train-tool debug`: `grads` (the gradient of the mean loss of the first
//! batch with respect to every parameter, saved under HF names), the PPO
//! checks `ppo-math` and `ppo-grads` (in [`crate::cmd::ppo`]), and
//! `rm-grads` (the same for a reward model's ranking loss, in `cmd::rm`).

use crate::device::{dispatch, DeviceOpts, Job};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use llama2_model::weights::{save_safetensors, SaveDtype};
use llama2_model::{Acts, GradActs, LogitRows};
use llama2_runtime::{v, Backend, BufKind, CeGrad};
use std::path::PathBuf;

#[derive(Args, Clone, Debug)]
pub struct DebugArgs {
    #[command(subcommand)]
    pub cmd: DebugCmd,
}

#[derive(Subcommand, Clone, Debug)]
pub enum DebugCmd {
    /// Write d(mean loss)/d(parameter) of the first batch for every parameter
    Grads(GradsArgs),
    /// PPO's arithmetic on a rollout batch given as JSON (scores, rewards, advantages, returns, losses)
    PpoMath(crate::cmd::ppo::MathArgs),
    /// Gradients of one PPO step of a policy and a value model on given rollouts
    PpoGrads(crate::cmd::ppo::GradsArgs),
    /// Write d(mean ranking loss)/d(parameter) of a reward model over a file of pairs (one batch)
    RmGrads(crate::cmd::rm::RmGradsArgs),
}

#[derive(Args, Clone, Debug)]
pub struct GradsArgs {
    #[command(flatten)]
    pub md: crate::flags::ModelData,
    /// Output safetensors file (f32, HF tensor names)
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

struct GradsJob(GradsArgs);

impl Job for GradsJob {
    type Out = ();
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let a = self.0;
        let (b, t) = (a.md.batch_size as usize, a.md.seq_len as usize);
        let (model, mut reader) = a.md.open(be)?;
        let mb = reader.next_batch()?.context("no batch in the data")?;
        let mut acts = Acts::new(be, &model.cfg, b, t, true, LogitRows::All)?;
        let mut gacts = GradActs::new(be, &model.cfg, b, t)?;
        let mut grads = be.alloc(model.layout.total, BufKind::F32)?;
        model.forward(be, &mut acts, &mb.inputs, None)?;
        let count = mb.targets.iter().filter(|&&x| x >= 0).count();
        let (sum, _) = model.loss(be, &mut acts, &mb.targets, CeGrad::Uniform(1.0 / count as f32))?;
        model.backward(be, &acts, &mut gacts, &mut grads, &mb.inputs)?;
        let mut host = vec![0f32; model.layout.total];
        be.download(v(&grads), &mut host)?;
        let named = model.layout.to_host(&model.cfg, &host);
        save_safetensors(&a.out, &named, SaveDtype::F32, None)?;
        println!("{}", serde_json::json!({"loss": sum / count as f64}));
        Ok(())
    }
}

pub fn run(a: DebugArgs) -> Result<()> {
    match a.cmd {
        DebugCmd::Grads(g) => {
            let dev = g.dev.clone();
            dispatch(&dev, GradsJob(g))
        }
        DebugCmd::PpoMath(m) => crate::cmd::ppo::run_math(m),
        DebugCmd::PpoGrads(g) => crate::cmd::ppo::run_grads(g),
        DebugCmd::RmGrads(g) => crate::cmd::rm::rm_grads(g),
    }
}
