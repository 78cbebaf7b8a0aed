//! Training checkpoints: a directory per save, written atomically.
//!
//! `OUT/ckpt-000123/` holds `config.json` + `model.safetensors` (the model in
//! HF format: it loads in transformers as is), `optimizer.safetensors` (AdamW
//! moments `m.<hf name>`, `v.<hf name>`, f32) and `state.json` (step, data
//! position, RNG state, the resolved run configuration). A run that trains
//! several models (PPO: a policy and a value model) keeps each in a
//! subdirectory named after it (`ckpt-000123/policy/`, `.../value/`, each
//! with its config, weights and optimizer file), `state.json` at the top;
//! a run of one model (named "model") keeps the flat layout above.
//!
//! Data parallelism with the optimizer state sharded (ZeRO-1, N ranks):
//! rank 0 writes the models and `state.json`, each rank its optimizer
//! shard as `optimizer-shard-0000r-of-0000N.safetensors` (flat `m` and `v`
//! of the arena elements `[offset, offset + len)`, in the metadata), all
//! into one temporary directory that rank 0 renames once every rank is
//! done. Loading assembles whole moments from either layout, so a
//! checkpoint resumes at any world size (the shards are re-cut by
//! [`restore_optimizer`]).
//!
//! Atomicity: everything is written into `OUT/.tmp-ckpt-000123-<pid>/`, each
//! file fsynced, then the directory is renamed to its final name and `OUT`
//! fsynced. A process killed at any moment leaves either no new checkpoint or
//! a complete one; leftovers of interrupted saves are removed by the next
//! save. Only directories named `ckpt-*` count as checkpoints.
//!
//! Public items: [`TrainState`], [`save`], [`save_parts`], [`save_parts_dist`], [`load`],
//! [`latest`], [`list`], [`Loaded`], [`LoadedPart`], [`Moments`],
//! [`restore_optimizer`].

use crate::data::DataPosition;
use crate::error::{Result, TrainError};
use crate::optim::AdamW;
use crate::trainer::Part;
use llama2_model::atomic::sync_dir;
use llama2_model::weights::{save_safetensors, write_atomic, Checkpoint, SaveDtype};
use llama2_model::Model;
use llama2_runtime::comm::Comm;
use llama2_runtime::{v, vm, Backend};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Everything but tensors that a resumed run needs.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    /// optimizer steps done
    pub step: u64,
    /// where the training data reader continues
    pub data: DataPosition,
    /// state of the run's random stream
    pub rng: [u64; 4],
    /// input tokens processed so far
    pub tokens_seen: u64,
    /// wall time spent training so far (s)
    pub elapsed_s: f64,
    /// the resolved run configuration (as printed at start)
    pub config: Value,
}

impl TrainState {
    fn to_json(&self) -> Value {
        json!({
            "step": self.step,
            "data": {"shard": self.data.shard, "window": self.data.window, "pass": self.data.pass},
            // u64 as strings: JSON numbers are f64 in many readers
            "rng": self.rng.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
            "tokens_seen": self.tokens_seen,
            "elapsed_s": self.elapsed_s,
            "config": self.config,
        })
    }

    fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let bad = |what: &str| TrainError::BadFile {
            path: path.to_path_buf(),
            msg: format!("missing or invalid `{what}`"),
            hint: "the checkpoint is damaged; resume from an earlier one".into(),
        };
        let u = |x: &Value, k: &str| x.get(k).and_then(|y| y.as_u64()).ok_or_else(|| bad(k));
        let d = v.get("data").ok_or_else(|| bad("data"))?;
        let rng: Vec<u64> = v
            .get("rng")
            .and_then(|r| r.as_array())
            .ok_or_else(|| bad("rng"))?
            .iter()
            .map(|x| x.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| bad("rng")))
            .collect::<Result<_>>()?;
        if rng.len() != 4 {
            return Err(bad("rng"));
        }
        Ok(TrainState {
            step: u(v, "step")?,
            data: DataPosition { shard: u(d, "shard")? as usize, window: u(d, "window")? as usize, pass: u(d, "pass")? },
            rng: [rng[0], rng[1], rng[2], rng[3]],
            tokens_seen: u(v, "tokens_seen")?,
            elapsed_s: v.get("elapsed_s").and_then(|x| x.as_f64()).ok_or_else(|| bad("elapsed_s"))?,
            config: v.get("config").cloned().unwrap_or(Value::Null),
        })
    }
}

/// Name of the checkpoint of step `step`.
pub fn ckpt_name(step: u64) -> String {
    format!("ckpt-{step:06}")
}

/// Writes a checkpoint of `model`, `opt` and `state` into `out`, then keeps
/// only the newest `keep_last` checkpoints (0 = keep all). Returns its path.
pub fn save<B: Backend>(be: &B, out: &Path, model: &Model<B>, opt: &AdamW<B>, state: &TrainState, keep_last: usize) -> Result<PathBuf> {
    save_models(be, out, &[("model", model, opt)], state, keep_last)
}

/// [`save`] of every part an objective trains.
pub fn save_parts<B: Backend>(be: &B, out: &Path, parts: &[Part<'_, B>], state: &TrainState, keep_last: usize) -> Result<PathBuf> {
    let models: Vec<(&str, &Model<B>, &AdamW<B>)> = parts.iter().map(|p| (p.name, &*p.model, &*p.opt)).collect();
    save_models(be, out, &models, state, keep_last)
}

/// The model and optimizer files of one trained model into `dir`.
fn write_model<B: Backend>(be: &B, dir: &Path, model: &Model<B>, opt: &AdamW<B>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    model.save(be, dir, SaveDtype::F32)?;
    write_optimizer(be, dir, model, opt)
}

/// `optimizer.safetensors`: the whole moments by HF tensor name.
fn write_optimizer<B: Backend>(be: &B, dir: &Path, model: &Model<B>, opt: &AdamW<B>) -> Result<()> {
    let (cfg, lay) = (&model.cfg, &model.layout);
    if !opt.is_whole(lay) {
        return Err(TrainError::Invalid("a sharded optimizer is saved as shards (save_parts_dist)".into()));
    }
    let mut host = vec![0f32; lay.total];
    let mut tensors = llama2_model::weights::HostWeights::new();
    for (prefix, buf) in [("m", &opt.m), ("v", &opt.v)] {
        be.download(v(buf), &mut host)?;
        for (name, t) in lay.to_host(cfg, &host) {
            tensors.insert(format!("{prefix}.{name}"), t);
        }
    }
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("adam_step".to_string(), opt.step.to_string());
    save_safetensors(&dir.join("optimizer.safetensors"), &tensors, SaveDtype::F32, Some(meta))?;
    sync_dir(dir);
    Ok(())
}

/// Name of rank `r`'s optimizer shard file of a world of `n`.
pub fn shard_file(r: usize, n: usize) -> String {
    format!("optimizer-shard-{r:05}-of-{n:05}.safetensors")
}

/// This rank's optimizer shard: flat `m`, `v` of its arena range.
fn write_optimizer_shard<B: Backend>(be: &B, dir: &Path, opt: &AdamW<B>, total: usize, rank: usize, world: usize) -> Result<()> {
    let (off, len) = opt.shard;
    let mut tensors = llama2_model::weights::HostWeights::new();
    for (name, buf) in [("m", &opt.m), ("v", &opt.v)] {
        let mut host = vec![0f32; len];
        if len > 0 {
            be.download(v(buf), &mut host)?;
        }
        tensors.insert(name.to_string(), llama2_model::weights::HostTensor { shape: vec![len], data: host });
    }
    let mut meta = std::collections::BTreeMap::new();
    for (k, x) in [("adam_step", opt.step as usize), ("offset", off), ("len", len), ("total", total), ("rank", rank), ("world", world)] {
        meta.insert(k.to_string(), x.to_string());
    }
    // offsets are arena offsets: name the arena order they index
    meta.insert("arena".to_string(), llama2_model::ARENA_ORDER.to_string());
    save_safetensors(&dir.join(shard_file(rank, world)), &tensors, SaveDtype::F32, Some(meta))?;
    Ok(())
}

/// [`save_parts`] on every rank of a data-parallel run: with whole
/// optimizers (world 1, or no ZeRO) rank 0 writes the usual checkpoint;
/// with sharded ones rank 0 writes the models and `state.json` and every
/// rank its optimizer shard, into one temporary directory renamed by rank
/// 0 after a barrier (see the module header). Every rank returns the path.
pub fn save_parts_dist<B: Backend>(be: &B, comm: &dyn Comm<B>, out: &Path, parts: &[Part<'_, B>], state: &TrainState, keep_last: usize) -> Result<PathBuf> {
    let (rank, world) = (comm.rank(), comm.world());
    if world == 1 {
        return save_parts(be, out, parts, state, keep_last);
    }
    let sharded = parts.iter().any(|p| !p.opt.is_whole(&p.model.layout));
    let name = ckpt_name(state.step);
    if !sharded {
        let dst = if rank == 0 { Some(save_parts(be, out, parts, state, keep_last)?) } else { None };
        comm.barrier()?;
        return Ok(dst.unwrap_or_else(|| out.join(&name)));
    }
    // rank 0 prepares the temporary directory and tells the others its name
    let tmp_name = if rank == 0 {
        let tmp = fresh_tmp(out, &name)?;
        tmp.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
    } else {
        String::new()
    };
    let names = comm.all_gather_bytes(tmp_name.as_bytes())?;
    let tmp = out.join(String::from_utf8_lossy(&names[0]).to_string());
    let flat = matches!(parts, [p] if p.name == "model");
    for p in parts {
        let dir = if flat { tmp.clone() } else { tmp.join(p.name) };
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        if rank == 0 {
            p.model.save(be, &dir, SaveDtype::F32)?;
        }
        write_optimizer_shard(be, &dir, p.opt, p.model.layout.total, rank, world)?;
        sync_dir(&dir);
    }
    comm.barrier()?;
    let dst = out.join(&name);
    if rank == 0 {
        let names: Vec<&str> = parts.iter().map(|p| p.name).collect();
        finish_save(out, &tmp, &names, state, keep_last)?;
    }
    comm.barrier()?;
    Ok(dst)
}

/// A new empty temporary directory for checkpoint `name` in `out` (the
/// leftovers of interrupted saves removed first).
fn fresh_tmp(out: &Path, name: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    if let Ok(rd) = std::fs::read_dir(out) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-ckpt-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let tmp = out.join(format!(".tmp-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    Ok(tmp)
}

/// `state.json` into `tmp`, then `tmp` renamed to its final name, `out`
/// fsynced, old checkpoints pruned.
fn finish_save(out: &Path, tmp: &Path, models: &[&str], state: &TrainState, keep_last: usize) -> Result<PathBuf> {
    let name = ckpt_name(state.step);
    let mut st = state.to_json();
    st["models"] = serde_json::json!(models);
    let st = serde_json::to_string_pretty(&st).map_err(|e| TrainError::Invalid(e.to_string()))?;
    write_atomic(&tmp.join("state.json"), st.as_bytes())?;
    sync_dir(tmp);
    let dst = out.join(&name);
    if dst.exists() {
        let old = out.join(format!(".tmp-old-{name}-{}", std::process::id()));
        std::fs::rename(&dst, &old).map_err(|e| TrainError::io(&dst, e))?;
        std::fs::rename(tmp, &dst).map_err(|e| TrainError::io(&dst, e))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(tmp, &dst).map_err(|e| TrainError::io(&dst, e))?;
    }
    sync_dir(out);
    if keep_last > 0 {
        let all = list(out)?;
        if all.len() > keep_last {
            for (_, p) in &all[..all.len() - keep_last] {
                if p != &dst {
                    let _ = std::fs::remove_dir_all(p);
                }
            }
        }
    }
    Ok(dst)
}

/// Writes every named model with its optimizer (one named "model": the
/// flat layout), then `state.json`, atomically as a whole.
fn save_models<B: Backend>(be: &B, out: &Path, models: &[(&str, &Model<B>, &AdamW<B>)], state: &TrainState, keep_last: usize) -> Result<PathBuf> {
    let name = ckpt_name(state.step);
    let tmp = fresh_tmp(out, &name)?;
    match models {
        [("model", m, o)] => write_model(be, &tmp, m, o)?,
        _ => {
            for (n, m, o) in models {
                write_model(be, &tmp.join(n), m, o)?;
            }
        }
    }
    let names: Vec<&str> = models.iter().map(|m| m.0).collect();
    finish_save(out, &tmp, &names, state, keep_last)
}

/// Complete checkpoints in `out`, oldest first.
pub fn list(out: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    let rd = match std::fs::read_dir(out) {
        Ok(rd) => rd,
        Err(_) => return Ok(v),
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name.strip_prefix("ckpt-").and_then(|s| s.parse::<u64>().ok()) {
            if e.path().join("state.json").is_file() {
                v.push((n, e.path()));
            }
        }
    }
    v.sort();
    Ok(v)
}

/// The newest complete checkpoint in `out`.
pub fn latest(out: &Path) -> Result<Option<PathBuf>> {
    Ok(list(out)?.pop().map(|x| x.1))
}

/// AdamW moments `(m, v)` laid out like the parameters, and the AdamW step.
pub type Moments = (Vec<f32>, Vec<f32>, u64);

/// One trained model of a checkpoint.
pub struct LoadedPart<B: Backend> {
    pub name: String,
    pub model: Model<B>,
    pub moments: Moments,
}

/// A loaded checkpoint.
pub struct Loaded<B: Backend> {
    /// the name of the first (or only) model ("model" for one-model runs)
    pub name: String,
    /// the first (or only) model
    pub model: Model<B>,
    pub state: TrainState,
    /// its AdamW moments
    pub moments: Moments,
    /// every further model, by name (several-model runs)
    pub others: Vec<LoadedPart<B>>,
    pub dir: PathBuf,
}

impl<B: Backend> Loaded<B> {
    /// Every model by name, in the order they were saved.
    pub fn into_parts(self) -> (Vec<LoadedPart<B>>, TrainState, PathBuf) {
        let mut parts = vec![LoadedPart { name: self.name, model: self.model, moments: self.moments }];
        parts.extend(self.others);
        (parts, self.state, self.dir)
    }
}

fn load_model<B: Backend>(be: &B, dir: &Path) -> Result<(Model<B>, Moments)> {
    let model = Model::load(be, dir)?;
    let op = dir.join("optimizer.safetensors");
    if !op.is_file() && has_shards(dir) {
        let moments = load_shards(dir, model.layout.total)?;
        return Ok((model, moments));
    }
    let ck = Checkpoint::open(&op)?;
    let lay = &model.layout;
    let (mut m, mut vv) = (vec![0f32; lay.total], vec![0f32; lay.total]);
    for (prefix, dst) in [("m", &mut m), ("v", &mut vv)] {
        for (id, l, name) in lay.hf_tensors(&model.cfg) {
            let (o, n) = lay.range(id, l);
            ck.read_into(&format!("{prefix}.{name}"), &id.hf_shape(&model.cfg), &mut dst[o..o + n])?;
        }
    }
    let adam_step = read_adam_step(&ck, &op)?;
    Ok((model, (m, vv, adam_step)))
}

/// Loads a checkpoint directory, or the newest checkpoint under a run
/// directory.
pub fn load<B: Backend>(be: &B, path: &Path) -> Result<Loaded<B>> {
    let dir = if path.join("state.json").is_file() {
        path.to_path_buf()
    } else {
        latest(path)?.ok_or_else(|| TrainError::BadFile {
            path: path.to_path_buf(),
            msg: "no complete checkpoint (ckpt-*/state.json) here".into(),
            hint: "pass a run's --out directory or one of its ckpt-* directories".into(),
        })?
    };
    let sp = dir.join("state.json");
    let text = std::fs::read_to_string(&sp).map_err(|e| TrainError::io(&sp, e))?;
    let sv: Value = serde_json::from_str(&text).map_err(|e| TrainError::BadFile {
        path: sp.clone(),
        msg: format!("not valid JSON: {e}"),
        hint: "the checkpoint is damaged".into(),
    })?;
    let state = TrainState::from_json(&sv, &sp)?;
    let names: Vec<String> = match sv.get("models").and_then(|m| m.as_array()) {
        Some(a) => a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
        None => vec!["model".into()],
    };
    let mut parts = Vec::new();
    for n in &names {
        let d = if names.len() == 1 && n == "model" { dir.clone() } else { dir.join(n) };
        let (model, moments) = load_model(be, &d)?;
        parts.push(LoadedPart { name: n.clone(), model, moments });
    }
    if parts.is_empty() {
        return Err(TrainError::BadFile { path: sp, msg: "`models` is empty".into(), hint: "the checkpoint is damaged".into() });
    }
    let first = parts.remove(0);
    Ok(Loaded { name: first.name, model: first.model, state, moments: first.moments, others: parts, dir })
}

fn has_shards(dir: &Path) -> bool {
    std::fs::read_dir(dir).map(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().starts_with("optimizer-shard-"))).unwrap_or(false)
}

/// Whole moments from the optimizer shards of a data-parallel save: every
/// file of the world the first names, their ranges checked to tile the arena.
fn load_shards(dir: &Path, total: usize) -> Result<Moments> {
    let bad = |path: &Path, msg: String| TrainError::BadFile {
        path: path.to_path_buf(),
        msg,
        hint: "the checkpoint is incomplete or damaged; resume from an earlier one".into(),
    };
    let meta_of = |ck: &Checkpoint, path: &Path, k: &str| -> Result<u64> {
        ck.metadata(0)?.get(k).and_then(|s| s.parse().ok()).ok_or_else(|| bad(path, format!("no `{k}` in the shard's metadata")))
    };
    let first = dir.join(shard_file(0, 1));
    let world = if first.is_file() {
        1
    } else {
        let mut w = None;
        for e in std::fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))?.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if let Some(rest) = n.strip_prefix("optimizer-shard-00000-of-").and_then(|r| r.strip_suffix(".safetensors")) {
                w = rest.parse::<usize>().ok();
            }
        }
        w.ok_or_else(|| bad(dir, "no optimizer-shard-00000-of-N file".into()))?
    };
    let (mut m, mut vv) = (vec![0f32; total], vec![0f32; total]);
    let (mut step, mut next) = (None, 0usize);
    for r in 0..world {
        let path = dir.join(shard_file(r, world));
        if !path.is_file() {
            return Err(bad(&path, format!("shard {r} of {world} is missing")));
        }
        let ck = Checkpoint::open(&path)?;
        let (off, len, tot) = (meta_of(&ck, &path, "offset")? as usize, meta_of(&ck, &path, "len")? as usize, meta_of(&ck, &path, "total")? as usize);
        if tot != total || off != next || off + len > total {
            return Err(bad(&path, format!("shard [{off}, {off}+{len}) of {tot} does not continue at {next} of this model's {total} parameters")));
        }
        let arena = ck.metadata(0)?.get("arena").cloned().unwrap_or_else(|| "the stacked order (written before the arena was named)".into());
        if arena != llama2_model::ARENA_ORDER {
            return Err(TrainError::BadFile {
                path: path.clone(),
                msg: format!("the shard indexes the parameter arena in {arena}; this build lays it out as {}", llama2_model::ARENA_ORDER),
                hint: "resume it with the build that wrote it, or restart from its model weights (model.safetensors) with fresh optimizer state".into(),
            });
        }
        let s = meta_of(&ck, &path, "adam_step")?;
        if *step.get_or_insert(s) != s {
            return Err(bad(&path, "the shards were saved at different optimizer steps".into()));
        }
        ck.read_into("m", &[len], &mut m[off..off + len])?;
        ck.read_into("v", &[len], &mut vv[off..off + len])?;
        next = off + len;
    }
    if next != total {
        return Err(bad(dir, format!("the shards cover {next} of {total} parameters")));
    }
    Ok((m, vv, step.unwrap_or(0)))
}

fn read_adam_step(ck: &Checkpoint, path: &Path) -> Result<u64> {
    ck.metadata(0)?.get("adam_step").and_then(|s| s.parse().ok()).ok_or_else(|| TrainError::BadFile {
        path: path.to_path_buf(),
        msg: "no adam_step in the metadata".into(),
        hint: "the checkpoint is damaged".into(),
    })
}

/// Puts loaded (whole) moments into an optimizer: all of them, or the
/// optimizer's shard of them (a ZeRO-1 rank, at any world size).
pub fn restore_optimizer<B: Backend>(be: &B, opt: &mut AdamW<B>, moments: &Moments) -> Result<()> {
    let (off, len) = opt.shard;
    if moments.0.len() < off + len || moments.1.len() < off + len {
        return Err(TrainError::Invalid(format!("the checkpoint's moments hold {} elements; the optimizer updates [{off}, {off}+{len})", moments.0.len())));
    }
    be.upload(vm(&mut opt.m), &moments.0[off..off + len])?;
    be.upload(vm(&mut opt.v), &moments.1[off..off + len])?;
    opt.step = moments.2;
    Ok(())
}
