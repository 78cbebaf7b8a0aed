//! GAtt evaluation (the paper's Table 30 and Figure 10): multi-turn dialogs
//! with the instruction as the system message of turn 1 only, then
//! held-out user turns; the model answers every turn (its own answers stay
//! in the context); at each measured turn every checkable constraint is
//! checked ([`super::checks::passes`]) and the adherence rate reported per
//! family and for "all checks of the instruction".
//!
//! A dialog ends when the next prompt plus the answer budget would not fit
//! the context; a turn's rate counts only the dialogs that reached it
//! ([`TurnAdherence::dialogs`]). If the last asked turn is reached by no
//! dialog, the last turn reached is measured instead ([`measured_turns`]).
//!
//! The attention picture ([`system_attention`]): for the answer at a given
//! turn, each answer token's attention mass on the tokens of the
//! instruction text in the system message, per layer, the maximum over
//! heads, recomputed on the debug path ([`llama2_model::attn_probe`]).
//!
//! Public items: [`EvalDialog`], [`EvalOpts`], [`Transcript`], [`Rate`],
//! [`TurnAdherence`], [`SysAttention`], [`eval_dialogs`], [`converse`], [`by_turn`],
//! [`eval_messages`], [`measured_turns`], [`adherence`],
//! [`system_span`], [`system_attention`].

use super::checks::passes;
use super::instructions::Instruction;
use super::sample::generate_answers;
use crate::error::{Result, TrainError};
use llama2_model::attn_probe::AttnProbe;
use llama2_model::chat::{encode_dialog_last, encode_prompt, Message, Role, B_INST, B_SYS};
use llama2_model::generate::Sampling;
use llama2_model::tokenizer::{EncodeOptions, Tokenizer};
use llama2_model::{Acts, LogitRows, Model, ModelError};
use llama2_runtime::rng::Rng;
use llama2_runtime::Backend;
use serde::Serialize;
use std::collections::BTreeMap;
use std::ops::Range;

/// An instruction and the user turns that follow it.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalDialog {
    pub instruction: Instruction,
    pub users: Vec<String>,
}

/// Sampling settings of the evaluation.
#[derive(Clone, Debug)]
pub struct EvalOpts {
    pub max_new: usize,
    pub sampling: Sampling,
    pub batch: usize,
    pub seed: u64,
    /// context budget in tokens (at most the model's)
    pub max_tokens: usize,
}

/// A dialog as the model carried it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Transcript {
    pub instruction: String,
    pub users: Vec<String>,
    /// one per answered turn (fewer than `users` when the context filled)
    pub answers: Vec<String>,
    /// whether each answer ended with EOS
    pub ended: Vec<bool>,
    #[serde(skip)]
    pub inst: Option<Instruction>,
}

/// `pass` of `n` answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Rate {
    pub pass: usize,
    pub n: usize,
}

impl Rate {
    pub fn rate(&self) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            self.pass as f64 / self.n as f64
        }
    }
}

/// Adherence at one turn.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TurnAdherence {
    pub turn: usize,
    /// dialogs that reached this turn
    pub dialogs: usize,
    /// per family: answers that obey the family's constraint
    pub families: BTreeMap<String, Rate>,
    /// per family and value (`"case: small"`): answers that obey it; a
    /// model that ignored the instruction and always answered one way
    /// would obey one value of a family and not the others
    pub by_value: BTreeMap<String, Rate>,
    /// answers that obey every checkable constraint of their instruction
    pub all: Rate,
}

/// `{turn: share of answers obeying every check}`, as issue 13's
/// `results.json` records it.
pub fn by_turn(adh: &[TurnAdherence]) -> BTreeMap<usize, f64> {
    adh.iter().map(|t| (t.turn, t.all.rate())).collect()
}

/// `n` evaluation dialogs of `turns` user turns each: instruction `i` of
/// `insts` (cycled) and user turns drawn from `prompts` (shuffled with the
/// seed, a prompt recurring only after all were used).
pub fn eval_dialogs(prompts: &[String], insts: &[Instruction], n: usize, turns: usize, seed: u64) -> Result<Vec<EvalDialog>> {
    if prompts.is_empty() || insts.is_empty() {
        return Err(TrainError::Invalid("evaluation needs at least one user prompt and one instruction; HINT: check --prompts and --instructions".into()));
    }
    let mut rng = Rng::derive(seed, "gatt/eval-dialogs");
    let mut pool: Vec<usize> = Vec::new();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut users = Vec::with_capacity(turns);
        for _ in 0..turns {
            if pool.is_empty() {
                pool = (0..prompts.len()).collect();
                rng.shuffle(&mut pool);
            }
            users.push(prompts[pool.pop().unwrap_or(0)].clone());
        }
        out.push(EvalDialog { instruction: insts[i % insts.len()].clone(), users });
    }
    Ok(out)
}

/// The dialog up to turn `upto` (1-based): the instruction as the system
/// message, then the user turns with the answers given so far (a trailing
/// user message when `upto` answers are not there yet).
pub fn eval_messages(inst: &str, users: &[String], answers: &[String], upto: usize) -> Vec<Message> {
    let mut d = vec![Message::new(Role::System, inst)];
    for (k, u) in users.iter().take(upto).enumerate() {
        d.push(Message::new(Role::User, u.clone()));
        if let Some(a) = answers.get(k) {
            d.push(Message::new(Role::Assistant, a.clone()));
        }
    }
    d
}

/// Carries every dialog turn by turn (all dialogs of a turn decoded in
/// batches) until its user turns run out or the context fills.
pub fn converse<B: Backend>(be: &B, model: &Model<B>, tok: &Tokenizer, dialogs: &[EvalDialog], o: &EvalOpts) -> Result<Vec<Transcript>> {
    let ctx = o.max_tokens.min(model.rope_len);
    let mut tr: Vec<Transcript> = dialogs
        .iter()
        .map(|d| Transcript {
            instruction: d.instruction.text.clone(),
            users: d.users.clone(),
            answers: Vec::new(),
            ended: Vec::new(),
            inst: Some(d.instruction.clone()),
        })
        .collect();
    let mut open = vec![true; dialogs.len()];
    let turns = dialogs.iter().map(|d| d.users.len()).max().unwrap_or(0);
    for turn in 0..turns {
        let (mut idx, mut prompts) = (Vec::new(), Vec::new());
        for (i, t) in tr.iter().enumerate() {
            if !open[i] || t.users.len() <= turn {
                continue;
            }
            let p = encode_prompt(tok, &eval_messages(&t.instruction, &t.users, &t.answers, turn + 1))?;
            if p.len() + o.max_new > ctx {
                open[i] = false;
                continue;
            }
            idx.push(i);
            prompts.push(p);
        }
        if idx.is_empty() {
            break;
        }
        let ans = generate_answers(be, model, &prompts, o.max_new, &o.sampling, o.batch, o.seed, &format!("gatt/eval/turn{turn}"))?;
        for (&i, a) in idx.iter().zip(ans) {
            let mut ids = a.ids;
            if a.eos {
                ids.pop();
            }
            tr[i].answers.push(tok.decode(&ids).map_err(ModelError::from)?.trim().to_string());
            tr[i].ended.push(a.eos);
        }
    }
    Ok(tr)
}

/// The turns to measure: the asked ones that some dialog reached; if the
/// last asked turn was reached by none, the last turn reached is added.
pub fn measured_turns(asked: &[usize], transcripts: &[Transcript]) -> Vec<usize> {
    let reached = transcripts.iter().map(|t| t.answers.len()).max().unwrap_or(0);
    let mut out: Vec<usize> = asked.iter().copied().filter(|&t| t >= 1 && t <= reached).collect();
    if asked.iter().any(|&t| t > reached) && reached > 0 && !out.contains(&reached) {
        out.push(reached);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Adherence at each of `turns` (1-based).
pub fn adherence(transcripts: &[Transcript], turns: &[usize]) -> Vec<TurnAdherence> {
    turns
        .iter()
        .map(|&turn| {
            let mut ta = TurnAdherence { turn, dialogs: 0, families: BTreeMap::new(), by_value: BTreeMap::new(), all: Rate::default() };
            for t in transcripts {
                let (Some(inst), Some(ans)) = (&t.inst, t.answers.get(turn.wrapping_sub(1))) else { continue };
                ta.dialogs += 1;
                let mut all = true;
                for c in &inst.constraints {
                    let Some(check) = &c.check else { continue };
                    let ok = passes(check, ans);
                    let value = if c.value.is_empty() { c.family.clone() } else { format!("{}: {}", c.family, c.value) };
                    for r in [ta.families.entry(c.family.clone()).or_default(), ta.by_value.entry(value).or_default()] {
                        r.n += 1;
                        r.pass += ok as usize;
                    }
                    all &= ok;
                }
                ta.all.n += 1;
                ta.all.pass += all as usize;
            }
            ta
        })
        .collect()
}

/// Length of the common prefix of two token sequences.
fn common(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Positions of the instruction text's tokens in `ids`, the encoding of a
/// dialog whose system message is `inst` (BOS first): where the encoding
/// of `"[INST] <<SYS>>\n"` and of `"[INST] <<SYS>>\n" + inst` stop being
/// prefixes of the dialog's first turn.
pub fn system_span(tok: &Tokenizer, ids: &[u32], inst: &str) -> Result<Range<usize>> {
    let enc = |s: &str| tok.encode(s, EncodeOptions { bos: false, eos: false }).map_err(ModelError::from);
    let body = ids.get(1..).unwrap_or(&[]);
    let start = 1 + common(&enc(&format!("{B_INST} {B_SYS}"))?, body);
    let end = 1 + common(&enc(&format!("{B_INST} {B_SYS}{inst}"))?, body);
    if end <= start {
        return Err(TrainError::Invalid(format!("the system message `{inst}` has no tokens of its own in this dialog")));
    }
    Ok(start..end)
}

/// Attention on the system message at one turn.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SysAttention {
    pub turn: usize,
    /// dialogs measured (those that reached the turn with a non-empty answer)
    pub dialogs: usize,
    /// per layer: mean over dialogs of the mean over answer tokens of the
    /// mass on the instruction's tokens (max over heads)
    pub per_layer: Vec<f64>,
    /// the mean over layers of `per_layer`
    pub mean: f64,
    /// standard error of `mean` over dialogs (each dialog's mean over
    /// layers and answer tokens is one observation)
    pub mean_se: f64,
    /// the first dialog's map: per layer, one value per answer token
    pub example: Vec<Vec<f64>>,
    /// the first dialog's answer tokens (pieces)
    pub example_tokens: Vec<String>,
}

/// Attention mass of the answer at `turn` on the instruction text of the
/// system message (see the module header), over the transcripts that
/// reached `turn`.
pub fn system_attention<B: Backend>(be: &B, model: &Model<B>, tok: &Tokenizer, transcripts: &[Transcript], turn: usize) -> Result<SysAttention> {
    let layers = model.cfg.n_layers;
    let mut out = SysAttention { turn, per_layer: vec![0.0; layers], ..Default::default() };
    let mut per_dialog = Vec::new();
    for t in transcripts {
        if t.answers.len() < turn || turn == 0 {
            continue;
        }
        let msgs = eval_messages(&t.instruction, &t.users, &t.answers, turn);
        let (ids, mask) = encode_dialog_last(tok, &msgs, true)?;
        // the answer's tokens: the learned positions of the last turn, EOS excluded
        let rows: Vec<usize> = (0..ids.len().saturating_sub(1)).filter(|&i| mask[i]).collect();
        if rows.is_empty() {
            continue;
        }
        let span = system_span(tok, &ids, &t.instruction)?;
        let mut acts = Acts::new(be, &model.cfg, 1, ids.len(), true, LogitRows::Last)?;
        model.trunk(be, &mut acts, &ids, None, None)?;
        let probe = AttnProbe::new(be, model, &acts)?;
        let m = probe.mass(0, &rows, span)?; // (L, rows, H)
        let h = probe.heads;
        let map: Vec<Vec<f64>> = (0..layers)
            .map(|l| (0..rows.len()).map(|r| m[(l * rows.len() + r) * h..(l * rows.len() + r + 1) * h].iter().copied().fold(0.0, f64::max)).collect())
            .collect();
        let mut dialog_mean = 0.0;
        for (l, row) in map.iter().enumerate() {
            let m = row.iter().sum::<f64>() / row.len() as f64;
            out.per_layer[l] += m;
            dialog_mean += m / layers as f64;
        }
        per_dialog.push(dialog_mean);
        if out.dialogs == 0 {
            out.example_tokens = rows.iter().map(|&i| tok.id_to_piece(ids[i]).unwrap_or("?").to_string()).collect();
            out.example = map;
        }
        out.dialogs += 1;
    }
    if out.dialogs > 0 {
        out.per_layer.iter_mut().for_each(|x| *x /= out.dialogs as f64);
        out.mean = out.per_layer.iter().sum::<f64>() / layers as f64;
    }
    if per_dialog.len() > 1 {
        let n = per_dialog.len() as f64;
        let var = per_dialog.iter().map(|x| (x - out.mean).powi(2)).sum::<f64>() / (n - 1.0);
        out.mean_se = (var / n).sqrt();
    }
    Ok(out)
}
