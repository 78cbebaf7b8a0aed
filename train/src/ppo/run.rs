//! The PPO loop (paper section 3.2.3): per iteration, the rollout phase
//! ([`super::rollout`]: one answer per prompt from the current policy,
//! reward-model scores, old and reference log-probabilities, old values),
//! the arithmetic ([`super::math`]), then one pass of mini-batch steps of
//! the policy and the value model through the one trainer
//! ([`crate::trainer::train_step`] on [`PpoObjective`]); metrics, held-out
//! evaluation with early stopping, checkpoints after every iteration.
//!
//! Every random choice is a stream derived from the seed and the iteration
//! (`ppo/gen/<iteration>/<prompt>`, `ppo/mb/<iteration>/<epoch>`,
//! `ppo/prompts/<pass>`), and the early-stopping record is read back from
//! the metrics log on resume, so N iterations straight and N/2 + resume +
//! N/2 give the same weights (bit for bit on the CPU).
//!
//! Data parallelism ([`run_ppo_dist`]): the rollout is spread over the
//! ranks and gathered whole on every rank, so every batch statistic is
//! the one-process statistic; the optimizer steps go through [`Dist`].
//!
//! Public items: [`PpoPrompt`], [`PpoSettings`], [`Frozen`],
//! [`IterationStats`], [`run_ppo`], [`run_ppo_dist`], [`evaluate_prompts`],
//! [`evaluate_prompts_dist`].

use super::math::{advantages, Episode};
use super::objective::{PpoObjective, Rollout};
use super::rollout::{answer_logprobs, answer_values, sample_answers_at, score_sequences};
use crate::checkpoint::{self, TrainState};
use crate::data::DataPosition;
use crate::dist::Dist;
use crate::error::{Result, TrainError};
use crate::metrics::{MetricsLog, Progress};
use llama2_model::generate::Sampling;
use llama2_model::Model;
use llama2_runtime::comm::{Comm, Single};
use llama2_runtime::rng::Rng;
use llama2_runtime::Backend;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;

/// A prompt of the PPO prompt set.
#[derive(Clone, Debug, PartialEq)]
pub struct PpoPrompt {
    /// the prompt as the policy sees it (chat format applied)
    pub ids: Vec<u32>,
    /// tagged as possibly unsafe (the safety RM's score is used)
    pub unsafe_prompt: bool,
}

/// The loop's settings (defaults in `train-tool ppo`: the paper's).
#[derive(Clone, Debug, PartialEq)]
pub struct PpoSettings {
    pub math: super::math::PpoMath,
    /// iterations of the whole run
    pub iterations: u64,
    /// stop after this many iterations in this invocation
    pub stop_after: Option<u64>,
    /// prompts (episodes) per iteration (the paper: 512)
    pub prompts_per_iter: usize,
    /// episodes per optimizer step (the paper: 64)
    pub minibatch: usize,
    /// episodes per forward/backward (micro-batches of a mini-batch)
    pub micro_batch: usize,
    /// passes over each rollout batch (the paper: 1)
    pub ppo_epochs: usize,
    pub max_new_tokens: usize,
    /// sampling temperature of the rollouts (1.0: no top-k / top-p, they bias the KL estimate)
    pub temperature: f32,
    pub policy_lr: f64,
    pub value_lr: f64,
    /// held-out evaluation every N iterations (0: never)
    pub eval_every: u64,
    /// stop after this many evaluations without a better held-out reward (0: never)
    pub patience: u64,
    /// sequences per forward pass when scoring and computing log-probs
    pub score_batch: usize,
    pub seed: u64,
    /// keep the newest K checkpoints (0: all)
    pub keep_last: usize,
    pub quiet: bool,
}

/// The models PPO only reads.
pub struct Frozen<B: Backend> {
    /// the reference policy π0 (the KL term)
    pub reference: Model<B>,
    /// the helpfulness reward model
    pub rm: Model<B>,
    /// the safety reward model, if any
    pub safety_rm: Option<Model<B>>,
}

/// What one iteration did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IterationStats {
    pub iteration: u64,
    pub record: Value,
}

/// The prompts of iteration `it`: consecutive prompts of a seeded order,
/// reshuffled each pass over the set; returns them and the position after.
fn take_prompts(n_set: usize, count: usize, mut pos: DataPosition, seed: u64) -> (Vec<usize>, DataPosition) {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let mut order: Vec<usize> = (0..n_set).collect();
        Rng::derive(seed, &format!("ppo/prompts/{}", pos.pass)).shuffle(&mut order);
        while out.len() < count && pos.window < n_set {
            out.push(order[pos.window]);
            pos.window += 1;
        }
        if pos.window >= n_set {
            pos.window = 0;
            pos.pass += 1;
        }
    }
    (out, pos)
}

/// The score PPO uses for each answer: helpfulness and (with a safety RM)
/// safety raw scores.
fn scores<B: Backend>(be: &B, f: &Frozen<B>, pairs: &[(Vec<u32>, Vec<u32>)], batch: usize) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    let h = score_sequences(be, &f.rm, pairs, batch)?;
    let s = match &f.safety_rm {
        Some(m) => Some(score_sequences(be, m, pairs, batch)?),
        None => None,
    };
    Ok((h, s))
}

/// The reward PPO optimises, as the arithmetic chooses it: the safety
/// score where the prompt is unsafe or the safety probability is below
/// the threshold, else the helpfulness score (raw).
fn chosen(m: &super::math::PpoMath, h: f32, s: Option<f32>, unsafe_prompt: bool) -> f64 {
    match s {
        Some(s) if unsafe_prompt || 1.0 / (1.0 + (-(s as f64)).exp()) < m.safety_threshold => s as f64,
        _ => h as f64,
    }
}

/// Mean chosen reward of answers sampled (fixed per-prompt streams) from
/// `policy` on `prompts`: the held-out measure of the run.
pub fn evaluate_prompts<B: Backend>(be: &B, policy: &Model<B>, f: &Frozen<B>, prompts: &[PpoPrompt], st: &PpoSettings) -> Result<f64> {
    evaluate_prompts_dist(be, &Single, policy, f, prompts, st)
}

/// [`evaluate_prompts`] spread over the ranks: rank `r` answers prompts
/// `r, r + N, ...` (each from its own stream), the rewards are summed
/// over the ranks.
pub fn evaluate_prompts_dist<B: Backend>(be: &B, comm: &dyn Comm<B>, policy: &Model<B>, f: &Frozen<B>, prompts: &[PpoPrompt], st: &PpoSettings) -> Result<f64> {
    if prompts.is_empty() {
        return Ok(f64::NAN);
    }
    let at: Vec<usize> = (0..prompts.len()).filter(|i| i % comm.world() == comm.rank()).collect();
    let ids: Vec<Vec<u32>> = at.iter().map(|&i| prompts[i].ids.clone()).collect();
    let s = Sampling { temperature: st.temperature, top_k: None, top_p: None };
    let answers = sample_answers_at(be, policy, &ids, &at, st.max_new_tokens, &s, st.seed, "ppo/val")?;
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = ids.into_iter().zip(answers).map(|(p, a)| (p, a.ids)).collect();
    let (h, sf) = if pairs.is_empty() { (Vec::new(), None) } else { scores(be, f, &pairs, st.score_batch)? };
    let mut total = [at.iter().enumerate().map(|(j, &i)| chosen(&st.math, h[j], sf.as_ref().map(|x| x[j]), prompts[i].unsafe_prompt)).sum::<f64>()];
    comm.all_reduce_f64(&mut total)?;
    Ok(total[0] / prompts.len() as f64)
}

/// One rollout episode as the rank that sampled it sends it to the others.
struct Sampled {
    answer: Vec<u32>,
    eos: bool,
    logprobs: Vec<f32>,
    entropy: Vec<f32>,
    values: Vec<f32>,
    ref_logprobs: Vec<f32>,
    helpful: f32,
    safety: Option<f32>,
}

fn put_f32s(b: &mut Vec<u8>, x: &[f32]) {
    b.extend((x.len() as u64).to_le_bytes());
    for v in x {
        b.extend(v.to_le_bytes());
    }
}

/// Reads the episodes [`encode`] wrote (exact: the raw bits).
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.0.len() < n {
            return Err(TrainError::Invalid("a rank sent a truncated rollout".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }
    fn f32(&mut self) -> Result<f32> {
        let b = self.take(4)?;
        Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn f32s(&mut self) -> Result<Vec<f32>> {
        let n = self.u64()? as usize;
        (0..n).map(|_| self.f32()).collect()
    }
}

fn encode(k: usize, e: &Sampled, b: &mut Vec<u8>) {
    b.extend((k as u64).to_le_bytes());
    b.extend((e.answer.len() as u64).to_le_bytes());
    for t in &e.answer {
        b.extend(t.to_le_bytes());
    }
    b.push(e.eos as u8);
    for x in [&e.logprobs, &e.entropy, &e.values, &e.ref_logprobs] {
        put_f32s(b, x);
    }
    b.extend(e.helpful.to_le_bytes());
    b.push(e.safety.is_some() as u8);
    b.extend(e.safety.unwrap_or(0.0).to_le_bytes());
}

fn decode(r: &mut Reader) -> Result<(usize, Sampled)> {
    let k = r.u64()? as usize;
    let n = r.u64()? as usize;
    let answer = (0..n).map(|_| r.f32().map(|x| x.to_bits())).collect::<Result<Vec<u32>>>()?;
    let eos = r.take(1)?[0] != 0;
    let (logprobs, entropy, values, ref_logprobs) = (r.f32s()?, r.f32s()?, r.f32s()?, r.f32s()?);
    let helpful = r.f32()?;
    let has = r.take(1)?[0] != 0;
    let s = r.f32()?;
    Ok((k, Sampled { answer, eos, logprobs, entropy, values, ref_logprobs, helpful, safety: has.then_some(s) }))
}

/// The rollout of an iteration's prompts, spread over the ranks: rank `r`
/// samples and scores batch positions `r, r + N, ...`; every rank gets
/// every episode back in batch order (what one process computes).
#[allow(clippy::too_many_arguments)]
fn rollout_dist<B: Backend>(
    be: &B,
    comm: &dyn Comm<B>,
    obj: &PpoObjective<B>,
    frozen: &Frozen<B>,
    batch_prompts: &[Vec<u32>],
    st: &PpoSettings,
    sampling: &Sampling,
    it: u64,
    secs: &mut [f64; 4],
) -> Result<Vec<Sampled>> {
    let at: Vec<usize> = (0..batch_prompts.len()).filter(|i| i % comm.world() == comm.rank()).collect();
    let mine: Vec<Vec<u32>> = at.iter().map(|&i| batch_prompts[i].clone()).collect();
    let t0 = Instant::now();
    let answers = sample_answers_at(be, &obj.policy.model, &mine, &at, st.max_new_tokens, sampling, st.seed, &format!("ppo/gen/{it}"))?;
    secs[0] = t0.elapsed().as_secs_f64();
    let eos: Vec<bool> = answers.iter().map(|a| a.eos).collect();
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = mine.into_iter().zip(answers).map(|(p, a)| (p, a.ids)).collect();
    let t0 = Instant::now();
    let (sh, ss) = if pairs.is_empty() { (Vec::new(), None) } else { scores(be, frozen, &pairs, st.score_batch)? };
    secs[1] = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let (old_lp, old_ent) = answer_logprobs(be, &obj.policy.model, &pairs, st.score_batch, true)?;
    let old_v = answer_values(be, &obj.value.model, &pairs, st.score_batch)?;
    secs[2] = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let (ref_lp, _) = answer_logprobs(be, &frozen.reference, &pairs, st.score_batch, false)?;
    secs[3] = t0.elapsed().as_secs_f64();
    let mut local: Vec<Sampled> = Vec::with_capacity(pairs.len());
    for (j, (_, ans)) in pairs.into_iter().enumerate() {
        local.push(Sampled {
            answer: ans,
            eos: eos[j],
            logprobs: old_lp[j].clone(),
            entropy: old_ent.get(j).cloned().unwrap_or_default(),
            values: old_v[j].clone(),
            ref_logprobs: ref_lp[j].clone(),
            helpful: sh[j],
            safety: ss.as_ref().map(|s| s[j]),
        });
    }
    if comm.world() == 1 {
        return Ok(local);
    }
    let mut bytes = Vec::new();
    for (j, e) in local.iter().enumerate() {
        encode(at[j], e, &mut bytes);
    }
    let mut all: Vec<Option<Sampled>> = (0..batch_prompts.len()).map(|_| None).collect();
    for b in comm.all_gather_bytes(&bytes)? {
        let mut r = Reader(&b);
        while !r.0.is_empty() {
            let (k, e) = decode(&mut r)?;
            let slot = all.get_mut(k).ok_or_else(|| TrainError::Invalid(format!("a rank sent episode {k} of a batch of {}", batch_prompts.len())))?;
            *slot = Some(e);
        }
    }
    all.into_iter().enumerate().map(|(k, e)| e.ok_or_else(|| TrainError::Invalid(format!("no rank sent episode {k}")))).collect()
}

fn mean(x: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = x.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

fn var(x: &[f64]) -> f64 {
    let m = mean(x.iter().copied());
    mean(x.iter().map(|v| (v - m) * (v - m)))
}

/// Runs PPO from `state.step` (iterations done) to `st.iterations`,
/// writing `out/metrics.jsonl` (one record per iteration) and a
/// checkpoint (policy + value with their optimizers) after each iteration.
/// Returns the stats of the iterations run in this invocation and whether
/// early stopping ended the run.
#[allow(clippy::too_many_arguments)]
pub fn run_ppo<B: Backend>(
    be: &B,
    obj: &mut PpoObjective<B>,
    frozen: &Frozen<B>,
    prompts: &[PpoPrompt],
    val: &[PpoPrompt],
    st: &PpoSettings,
    out: &Path,
    state: TrainState,
    resumed: bool,
    resolved: &Value,
) -> Result<(Vec<IterationStats>, bool)> {
    run_ppo_dist(be, &mut Dist::new(&Single, true), obj, frozen, prompts, val, st, out, state, resumed, resolved)
}

/// [`run_ppo`] on every rank of a data-parallel launch: the prompts of an
/// iteration are spread over the ranks (rank `r` samples and scores batch
/// positions `r, r + N, ...`), every rank then holds the whole rollout
/// batch, so score whitening, advantage whitening and the logged means are
/// those of one process; each mini-batch's micro-batches are cut as one
/// process cuts them and rank `r` takes micro-batches `r, r + N, ...`
/// ([`Dist::step`]). Rank 0 alone writes the metrics and shows progress;
/// the held-out evaluation is spread too. The optimizers must already be
/// cut to the ranks' shards ([`Dist::shard_optimizers`]).
#[allow(clippy::too_many_arguments)]
pub fn run_ppo_dist<B: Backend>(
    be: &B,
    dist: &mut Dist<'_, B>,
    obj: &mut PpoObjective<B>,
    frozen: &Frozen<B>,
    prompts: &[PpoPrompt],
    val: &[PpoPrompt],
    st: &PpoSettings,
    out: &Path,
    mut state: TrainState,
    resumed: bool,
    resolved: &Value,
) -> Result<(Vec<IterationStats>, bool)> {
    let (lead, world) = (dist.rank() == 0, dist.world());
    if world > 1 && !st.prompts_per_iter.is_multiple_of(world) {
        return Err(TrainError::Invalid(format!(
            "{} prompts per iteration do not split over {world} ranks; HINT: use a multiple of the number of ranks",
            st.prompts_per_iter
        )));
    }
    if world > 1 && !st.minibatch.div_ceil(st.micro_batch.max(1)).is_multiple_of(world) {
        return Err(TrainError::Invalid(format!(
            "a mini-batch of {} episodes is {} micro-batches of {}, which do not split over {world} ranks; HINT: make --minibatch a multiple of --micro-batch x ranks",
            st.minibatch,
            st.minibatch.div_ceil(st.micro_batch.max(1)),
            st.micro_batch
        )));
    }
    if prompts.is_empty() {
        return Err(TrainError::Invalid("no training prompts; HINT: --prompts needs at least one prompt".into()));
    }
    if st.prompts_per_iter == 0 || st.minibatch == 0 || st.micro_batch == 0 {
        return Err(TrainError::Invalid("prompts per iteration, mini-batch and micro-batch must be positive".into()));
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let log_path = out.join("metrics.jsonl");
    let mut log = if lead { Some(MetricsLog::open(&log_path, if resumed { Some(state.step) } else { None })?) } else { None };
    // early stopping: the best held-out reward so far and evaluations since
    // (read by rank 0 from its log, told to the others)
    let (mut best, mut since) = (f64::NEG_INFINITY, 0u64);
    if resumed && lead {
        for r in MetricsLog::read(&log_path)? {
            if let Some(v) = r.get("val_reward").and_then(|v| v.as_f64()) {
                if v > best {
                    (best, since) = (v, 0);
                } else {
                    since += 1;
                }
            }
        }
    }
    if world > 1 {
        let mine: Vec<u8> = best.to_le_bytes().into_iter().chain(since.to_le_bytes()).collect();
        let all = dist.comm.all_gather_bytes(&mine)?;
        let b = all.first().filter(|b| b.len() == 16).ok_or_else(|| TrainError::Invalid("rank 0 sent no early-stopping record".into()))?;
        best = f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        since = u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
    }
    if st.patience > 0 && since >= st.patience {
        eprintln!("early stopping already ended this run (no better held-out reward in {since} evaluations)");
        return Ok((Vec::new(), true));
    }
    let progress = Progress::new("ppo", st.iterations, state.step, st.quiet || !lead);
    let stop_at = st.stop_after.map_or(st.iterations, |n| (state.step + n).min(st.iterations));
    let mut stats = Vec::new();
    let mut stopped = false;
    let sampling = Sampling { temperature: st.temperature, top_k: None, top_p: None };
    while state.step < stop_at {
        let it = state.step;
        let t_all = Instant::now();
        // ---- rollouts
        let (idx, next_pos) = take_prompts(prompts.len(), st.prompts_per_iter, state.data, st.seed);
        let batch_prompts: Vec<Vec<u32>> = idx.iter().map(|&i| prompts[i].ids.clone()).collect();
        let mut secs = [0f64; 4];
        let sampled = rollout_dist(be, dist.comm, obj, frozen, &batch_prompts, st, &sampling, it, &mut secs)?;
        let [gen_s, score_s, policy_s, ref_s] = secs;
        let eos: Vec<bool> = sampled.iter().map(|a| a.eos).collect();
        let sh: Vec<f32> = sampled.iter().map(|e| e.helpful).collect();
        let ss: Option<Vec<f32>> = if frozen.safety_rm.is_some() { Some(sampled.iter().map(|e| e.safety.unwrap_or(0.0)).collect()) } else { None };
        let old_ent: Vec<Vec<f32>> = sampled.iter().map(|e| e.entropy.clone()).collect();
        let old_lp: Vec<Vec<f32>> = sampled.iter().map(|e| e.logprobs.clone()).collect();
        let old_v: Vec<Vec<f32>> = sampled.iter().map(|e| e.values.clone()).collect();
        let ref_lp: Vec<Vec<f32>> = sampled.iter().map(|e| e.ref_logprobs.clone()).collect();
        let pairs: Vec<(Vec<u32>, Vec<u32>)> = batch_prompts.into_iter().zip(sampled).map(|(p, e)| (p, e.answer)).collect();
        let f64v = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<f64>>();
        let eps: Vec<Episode> = (0..pairs.len())
            .map(|i| Episode {
                logprobs: f64v(&old_lp[i]),
                ref_logprobs: f64v(&ref_lp[i]),
                values: f64v(&old_v[i]),
                score_helpful: sh[i] as f64,
                score_safety: ss.as_ref().map(|s| s[i] as f64),
                unsafe_prompt: prompts[idx[i]].unsafe_prompt,
                eos: eos[i],
            })
            .collect();
        let adv = advantages(&st.math, &eps);
        let f32v = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        let rollouts: Vec<Rollout> = pairs
            .iter()
            .enumerate()
            .map(|(i, (p, r))| Rollout {
                prompt: p.clone(),
                response: r.clone(),
                logprobs: old_lp[i].clone(),
                values: old_v[i].clone(),
                advantages: f32v(&adv.advantages[i]),
                returns: f32v(&adv.returns[i]),
            })
            .collect();
        // ---- optimisation: mini-batches of one (or more) pass
        let t0 = Instant::now();
        let mut step_stats = Vec::new();
        for epoch in 0..st.ppo_epochs {
            let mut order: Vec<usize> = (0..rollouts.len()).collect();
            Rng::derive(st.seed, &format!("ppo/mb/{it}/{epoch}")).shuffle(&mut order);
            for mb in order.chunks(st.minibatch) {
                // the micro-batches one process would run; this rank's share
                let micro: Vec<Vec<Rollout>> = mb
                    .chunks(st.micro_batch)
                    .enumerate()
                    .filter(|(j, _)| j % world == dist.rank())
                    .map(|(_, c)| c.iter().map(|&i| rollouts[i].clone()).collect())
                    .collect();
                step_stats.push(dist.step(be, obj, &micro, &[st.policy_lr, st.value_lr])?);
            }
        }
        be.synchronize()?;
        let train_s = t0.elapsed().as_secs_f64();
        // ---- metrics
        let metric = |k: &str| mean(step_stats.iter().filter_map(|s| s.metrics.iter().find(|m| m.0 == k).map(|m| m.1)));
        let rets: Vec<f64> = adv.returns.iter().flatten().copied().collect();
        let vals: Vec<f64> = eps.iter().flat_map(|e| e.values.iter().copied()).collect();
        let resid: Vec<f64> = rets.iter().zip(&vals).map(|(r, v)| r - v).collect();
        let vr = var(&rets);
        let chosen_raw: Vec<f64> = (0..eps.len()).map(|i| chosen(&st.math, sh[i], ss.as_ref().map(|x| x[i]), eps[i].unsafe_prompt)).collect();
        let mut rec = json!({
            "step": it + 1,
            "score_raw": mean(chosen_raw.iter().copied()),
            "score_helpful": mean(sh.iter().map(|&x| x as f64)),
            "score_transformed": mean(adv.scores.iter().map(|s| s.transformed)),
            "safety_used": mean(adv.scores.iter().map(|s| s.safety as u8 as f64)),
            "kl": adv.kl,
            "policy_loss": mean(step_stats.iter().map(|s| s.loss)),
            "value_loss": metric("value_loss"),
            "clip_frac": metric("clip_frac"),
            "approx_kl": metric("approx_kl"),
            "entropy": mean(old_ent.iter().flatten().map(|&x| x as f64)),
            "answer_len": mean(pairs.iter().map(|p| p.1.len() as f64)),
            "eos_rate": mean(eos.iter().map(|&e| e as u8 as f64)),
            "explained_variance": if vr > 0.0 { 1.0 - var(&resid) / vr } else { 0.0 },
            "grad_norm_policy": mean(step_stats.iter().map(|s| s.grad_norms[0].1)),
            "grad_norm_value": mean(step_stats.iter().map(|s| s.grad_norms.get(1).map_or(0.0, |g| g.1))),
            "optimizer_steps": step_stats.len(),
            "seconds": {"generate": gen_s, "score": score_s, "policy_value": policy_s, "reference": ref_s, "train": train_s},
        });
        if let Some(s) = &ss {
            rec["score_safety"] = json!(mean(s.iter().map(|&x| x as f64)));
        }
        state.step += 1;
        state.data = next_pos;
        state.tokens_seen += pairs.iter().map(|p| (p.0.len() + p.1.len()) as u64).sum::<u64>();
        if st.eval_every > 0 && !val.is_empty() && (state.step.is_multiple_of(st.eval_every) || state.step == st.iterations) {
            let vr = evaluate_prompts_dist(be, dist.comm, &obj.policy.model, frozen, val, st)?;
            rec["val_reward"] = json!(vr);
            if vr > best {
                (best, since) = (vr, 0);
            } else {
                since += 1;
            }
            if st.patience > 0 && since >= st.patience {
                stopped = true;
            }
        }
        state.elapsed_s += t_all.elapsed().as_secs_f64();
        rec["elapsed_s"] = json!(state.elapsed_s);
        if let Some(log) = log.as_mut() {
            log.write(&rec)?;
        }
        if lead {
            progress.update(
                state.step,
                st.iterations,
                &format!(
                    "reward {:.3} kl {:.3} pg {:.4} vf {:.4}",
                    rec["score_raw"].as_f64().unwrap_or(0.0),
                    adv.kl,
                    rec["policy_loss"].as_f64().unwrap_or(0.0),
                    rec["value_loss"].as_f64().unwrap_or(0.0)
                ),
            );
        }
        let mut s = state.clone();
        s.config = resolved.clone();
        checkpoint::save_parts_dist(be, dist.comm, out, &obj_parts(obj), &s, st.keep_last)?;
        stats.push(IterationStats { iteration: state.step, record: rec });
        if stopped {
            break;
        }
    }
    progress.finish();
    Ok((stats, stopped))
}

fn obj_parts<B: Backend>(obj: &mut PpoObjective<B>) -> Vec<crate::trainer::Part<'_, B>> {
    use crate::trainer::Objective;
    obj.parts()
}
