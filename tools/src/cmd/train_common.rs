//! What every training command does around its objective, written once:
//! start fresh or resume ([`llama2_train::session::begin`]), resolve and
//! announce the configuration (checked against the checkpoint on resume),
//! run the trainer's loop, save the final model, write the summary and the
//! loss plot. `pretrain` and `sft` are their flags plus one call to
//! [`lm_job`]; the reward-model trainer uses [`finish`] the same way.

use crate::device::Refused;
use crate::flags::{LmHeadFlags, OptFlags, RunFlags};
use anyhow::{Context, Result};
use llama2_model::weights::SaveDtype;
use llama2_model::Model;
use llama2_runtime::comm::Comm;
use llama2_runtime::vm;
use llama2_runtime::Backend;
use llama2_train::checkpoint;
use llama2_train::dist::{check_same_config, Dist};
use llama2_train::run::{run_dist, BatchSource, RunConfig, RunSummary};
use llama2_train::session::{begin, Resolved};
use llama2_train::step::LmTrainer;
use serde_json::json;
use std::path::{Path, PathBuf};

/// What a language-modelling command prepares once the model is known:
/// its data, its length and schedule, its resolved configuration.
pub struct LmPlan {
    pub train: Box<dyn BatchSource>,
    pub val: Option<Box<dyn BatchSource>>,
    pub resolved: Resolved,
}

/// How a language-modelling run ended.
pub struct LmDone<B: Backend> {
    pub model: Model<B>,
    /// `None` when stopped early (`--stop-after`); else the final model's directory
    pub final_dir: Option<PathBuf>,
}

/// A language-modelling run (pretraining, SFT): `fresh` makes the model of
/// a new run; `plan` gets the model (fresh or resumed) and the checkpoint
/// directory it came from, and returns the data and resolved configuration.
/// Every rank of a data-parallel launch runs it (`comm`): the ranks start
/// from rank 0's weights, refuse to start unless they resolved the same
/// configuration, and rank 0 alone prints, writes the metrics, the final
/// model, the summary and the plot. `head` chooses the chunked LM head
/// and loss (`--logit-chunk`; off by default).
#[allow(clippy::too_many_arguments)]
pub fn lm_job<B: Backend>(
    be: &B,
    comm: &dyn Comm<B>,
    label: &str,
    run: &RunFlags,
    opt: &OptFlags,
    head: &LmHeadFlags,
    (b, t): (usize, usize),
    fresh: impl FnOnce() -> Result<Model<B>>,
    plan: impl FnOnce(&Model<B>, Option<&Path>) -> Result<LmPlan>,
) -> Result<LmDone<B>> {
    let out = run.out.clone();
    let lead = comm.rank() == 0;
    let logit_chunk = head.logit_chunk(b, t).map_err(|e| Refused(e.to_string()))?;
    let begun = begin(be, run.resume.as_deref(), run.seed, || -> Result<_> { Ok(vec![("model".to_string(), fresh()?)]) })
        .with_context(|| format!("starting the run in {}", out.display()))?;
    let from = begun.from.clone();
    let (mut model, moments, state, resumed) = begun.single()?;
    let mut p = plan(&model, from.as_deref())?;
    p.resolved.world_size = comm.world();
    if logit_chunk > 0 {
        p.resolved.job_args.insert("logit_chunk".into(), json!(logit_chunk));
    }
    if resumed {
        // every rank reads the same checkpoint: a refusal is reached together
        p.resolved.check_resume(&state.config).map_err(|e| Refused(e.to_string()))?;
    }
    check_same_config(comm, &p.resolved.to_json()).map_err(|e| Refused(e.to_string()))?;
    if comm.world() > 1 {
        comm.broadcast(be, vm(&mut model.params), 0)?;
    }
    let mut tr = LmTrainer::with_logit_chunk(be, model, b, t, opt.adamw(), logit_chunk)?;
    let mut dist = Dist::new(comm, run.zero == 1);
    dist.shard_optimizers(be, &mut tr)?;
    if let Some(m) = &moments {
        checkpoint::restore_optimizer(be, &mut tr.opt, m)?;
    }
    if lead {
        p.resolved.announce(&out)?;
    }
    let rc = run.run_config(label, be, &p.resolved);
    let (mut train, mut val) = (p.train, p.val);
    let val = val.as_mut().map(|v| v.as_mut() as &mut dyn BatchSource);
    let flops_per_token = tr.model.cfg.train_flops_per_token(tr.t);
    let summary = run_dist(be, &mut dist, &mut tr, train.as_mut(), val, &rc, &out, state, resumed, flops_per_token)?;
    if summary.steps < rc.steps {
        if lead {
            eprintln!("stopped at step {} of {}; continue with --resume {}", summary.steps, rc.steps, out.display());
        }
        return Ok(LmDone { model: tr.model, final_dir: None });
    }
    let final_dir = out.join("final");
    if lead {
        tr.model.save(be, &final_dir, SaveDtype::F32)?;
        finish(&out, &summary, &rc)?;
        eprintln!("final model: {}", final_dir.display());
    }
    comm.barrier()?;
    Ok(LmDone { model: tr.model, final_dir: Some(final_dir) })
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
