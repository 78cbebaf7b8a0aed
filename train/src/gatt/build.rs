//! GAtt data construction (PAPER.md section 7): for a dialog
//! `[u1, a1, ..., un, an]` and an instruction `inst`,
//!
//! 1. sampling: `inst` is put on EVERY user message (as a Llama-2-chat
//!    system block, `B_SYS inst E_SYS u_i`, the text the chat format makes
//!    of a system message on the first turn, so each turn looks to the
//!    policy like a first turn with its system message) and every
//!    assistant message is re-sampled from the policy, turn by turn, each
//!    turn seeing the answers sampled before it; with a reward model, the
//!    best of K samples (the paper's "analogous to rejection sampling");
//! 2. training: the sample keeps `inst` only once, as the system message
//!    of the first turn, the later user messages plain, the sampled
//!    answers; its record says `"loss": "last"`: the loss is zero on every
//!    token of the previous turns, assistant turns included, and one on the
//!    last answer and its EOS.
//!
//! Best of K: each turn samples K answers and keeps one: with
//! `by_checks`, the answers obeying the most of the instruction's checkable
//! constraints ([`super::checks`]) are the candidates, else all K; among
//! the candidates the reward model's best, or without one the first. The
//! checks stand in for what the paper assumes of its RLHF model, that it
//! follows an instruction it sees on every turn: a model too small to do so
//! by itself still yields samples that obey it (where one of the K does).
//!
//! With `comply`, a kept answer that still breaks a checkable constraint is
//! rewritten to obey it ([`super::checks::comply`], the rewrite of the SFT
//! demonstrations) before the next turn is sampled after it. This is a
//! stand-in, not the paper's method: the paper's RLHF model already obeys
//! an instruction it sees on every turn, so its samples need no edit; a
//! tiny model does not, and without the rewrite its GAtt data carries
//! almost no obeyed instruction to later turns (docs/gatt.md). The
//! recipe under test (instruction once, in turn 1; loss on the last answer
//! only) is unchanged.
//!
//! Examples per dialog ([`Examples`]): `Last` gives one sample per dialog
//! (its last turn is learned); `Prefixes` gives one per prefix (turn k of
//! an n-turn dialog is learned in the sample that ends at turn k), so each
//! sampled answer is learned once, after the context it was sampled in.
//!
//! A dialog stops at the turn whose sampling prompt plus the answer budget
//! would overflow the policy's context, or whose training sample would
//! exceed `max_tokens`; the turns before it are kept (a dialog with no turn
//! left is dropped); both are counted in [`BuildStats`].
//!
//! The baseline of the same data without GAtt ([`Built::baseline`]): the
//! same dialogs, turns and instructions, the instruction only in turn 1,
//! the dataset's own answers (no re-sampling), the same loss placement.
//!
//! The control of the same answers without the ghost trick
//! ([`Built::every_turn`]): the GAtt samples with the instruction left on
//! every user turn (as it was while sampling) and no system message, the
//! same loss placement. Trained on, it shows what the instruction-once
//! construction adds to obeying answers alone: at test time the
//! instruction is in turn 1 only.
//!
//! Public items: [`Examples`], [`BuildOpts`], [`GattSample`], [`BuildStats`],
//! [`Built`], [`with_instruction`], [`sampling_context`], [`choose`],
//! [`training_messages`], [`examples_of`], [`every_turn_of`], [`build`].

use super::dialogs::Dialog;
use super::instructions::Instruction;
use super::sample::generate_answers;
use crate::error::{Result, TrainError};
use crate::ppo::rollout::score_sequences;
use llama2_model::chat::{encode_dialog, encode_prompt, Message, Role, B_SYS, E_SYS};
use llama2_model::generate::Sampling;
use llama2_model::tokenizer::Tokenizer;
use llama2_model::{Model, ModelError};
use llama2_runtime::Backend;
use serde_json::{json, Value};

/// How many training samples a dialog gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Examples {
    /// one: the whole dialog, its last answer learned
    Last,
    /// one per prefix: the sample ending at turn k learns answer k
    Prefixes,
}

/// Settings of [`build`].
#[derive(Clone, Debug)]
pub struct BuildOpts {
    /// token budget of each sampled answer
    pub max_new: usize,
    pub sampling: Sampling,
    /// sequences decoded together
    pub batch: usize,
    pub seed: u64,
    pub examples: Examples,
    /// token budget of a training sample (the SFT `--seq-len` with `--packing whole`)
    pub max_tokens: usize,
    /// samples per turn, the best of them kept (see [`build`]; 1: the one sample)
    pub k: usize,
    /// choose among the K samples first by how many of the instruction's
    /// checkable constraints an answer obeys (the reward model, if any,
    /// breaks ties)
    pub by_checks: bool,
    /// rewrite each kept answer that still breaks one of the instruction's
    /// checkable constraints so that it obeys ([`super::checks::comply`]),
    /// before it becomes the context of the next turn
    pub comply: bool,
}

/// One training sample: messages (system first), its instruction, and
/// the number of (user, assistant) turns.
#[derive(Clone, Debug, PartialEq)]
pub struct GattSample {
    pub messages: Vec<Message>,
    pub instruction: Instruction,
    pub turns: usize,
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

impl GattSample {
    /// The SFT record: `{"messages", "loss": "last", "gatt": {..}}`.
    pub fn to_json(&self) -> Value {
        let msgs: Vec<Value> = self.messages.iter().map(|m| json!({"role": role_name(m.role), "content": m.content})).collect();
        json!({"messages": msgs, "loss": "last", "gatt": {"instruction": self.instruction.text, "short": self.instruction.short,
               "constraints": self.instruction.constraints, "turns": self.turns}})
    }
}

/// What [`build`] did.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct BuildStats {
    pub dialogs_in: usize,
    /// dialogs with at least one turn kept
    pub dialogs_used: usize,
    /// answers kept (sampled, or chosen among K)
    pub answers: usize,
    /// answers that hit the token budget before EOS
    pub unfinished: usize,
    /// dialogs cut short because the next turn would not fit
    pub cut_by_context: usize,
    /// dialogs dropped because not even their first turn fits
    pub dropped: usize,
    pub samples: usize,
    pub baseline_samples: usize,
    /// baseline samples left out because they exceed `max_tokens`
    pub baseline_too_long: usize,
    pub every_turn_samples: usize,
    /// every-turn control samples left out because they exceed `max_tokens`
    pub every_turn_too_long: usize,
    /// per checkable family: kept answers that obey it (how well the policy
    /// followed the instruction it saw on every turn)
    pub sampled_adherence: std::collections::BTreeMap<String, super::eval::Rate>,
    /// kept answers rewritten to obey their checks (with `comply`);
    /// `sampled_adherence` counts the answers as sampled, before the rewrite
    pub rewritten: usize,
    /// mean reward of the kept answers and of all K samples (with a reward model)
    pub rm_best_mean: Option<f64>,
    pub rm_all_mean: Option<f64>,
}

/// The GAtt samples, the no-GAtt baseline of the same dialogs, the counts.
#[derive(Clone, Debug, Default)]
pub struct Built {
    pub gatt: Vec<GattSample>,
    pub baseline: Vec<GattSample>,
    /// the GAtt samples with the instruction on every user turn (the control)
    pub every_turn: Vec<GattSample>,
    pub stats: BuildStats,
}

/// A user message carrying the instruction as a system block.
pub fn with_instruction(user: &str, inst: &str) -> String {
    format!("{B_SYS}{inst}{E_SYS}{user}")
}

/// The context in which answer `answers.len() + 1` is sampled: every user
/// message carries the instruction; ends with a user message.
pub fn sampling_context(inst: &str, users: &[String], answers: &[String]) -> Result<Vec<Message>> {
    if users.len() != answers.len() + 1 {
        return Err(TrainError::Invalid(format!("sampling context: {} user turns for {} answers (need one more)", users.len(), answers.len())));
    }
    let mut d = Vec::with_capacity(2 * users.len());
    for (i, u) in users.iter().enumerate() {
        d.push(Message::new(Role::User, with_instruction(u, inst)));
        if let Some(a) = answers.get(i) {
            d.push(Message::new(Role::Assistant, a.clone()));
        }
    }
    Ok(d)
}

/// The training dialog: the instruction once, as the system message,
/// then the plain turns.
pub fn training_messages(inst: &str, users: &[String], answers: &[String]) -> Result<Vec<Message>> {
    if users.len() != answers.len() || users.is_empty() {
        return Err(TrainError::Invalid(format!("training sample: {} user turns for {} answers (need as many, at least one)", users.len(), answers.len())));
    }
    let mut d = vec![Message::new(Role::System, inst)];
    for (u, a) in users.iter().zip(answers) {
        d.push(Message::new(Role::User, u.clone()));
        d.push(Message::new(Role::Assistant, a.clone()));
    }
    Ok(d)
}

/// The every-turn control of a GAtt sample: its system message dropped and
/// the instruction put on every user message, as while sampling.
pub fn every_turn_of(g: &GattSample) -> GattSample {
    let messages = g
        .messages
        .iter()
        .filter(|m| m.role != Role::System)
        .map(|m| if m.role == Role::User { Message::new(Role::User, with_instruction(&m.content, &g.instruction.text)) } else { m.clone() })
        .collect();
    GattSample { messages, instruction: g.instruction.clone(), turns: g.turns }
}

/// The training samples of one dialog (see [`Examples`]).
pub fn examples_of(inst: &Instruction, users: &[String], answers: &[String], ex: Examples) -> Result<Vec<GattSample>> {
    let n = users.len().min(answers.len());
    let ends: Vec<usize> = match ex {
        Examples::Last => vec![n],
        Examples::Prefixes => (1..=n).collect(),
    };
    ends.into_iter()
        .map(|k| Ok(GattSample { messages: training_messages(&inst.text, &users[..k], &answers[..k])?, instruction: inst.clone(), turns: k }))
        .collect()
}

/// Which of K samples to keep (its index): the candidates are the samples
/// passing the most checks (`passed[x]`; all of them when no check counts),
/// then the one with the highest reward-model score, then the first.
pub fn choose(passed: &[usize], scores: Option<&[f32]>) -> usize {
    let most = passed.iter().copied().max().unwrap_or(0);
    let mut best: Option<usize> = None;
    for x in (0..passed.len()).filter(|&x| passed[x] == most) {
        best = match (best, scores) {
            (Some(b), Some(s)) if s[b] >= s[x] => Some(b),
            (Some(b), None) => Some(b),
            _ => Some(x),
        };
    }
    best.unwrap_or(0)
}

/// Builds the GAtt samples of `dialogs`, dialog `i` with instruction
/// `insts[i]` (see the module header). Each turn keeps the best of `o.k`
/// samples: by the instruction's checks with `o.by_checks`, then by the
/// reward model's score of (sampling prompt, answer) with `rm`, then the first.
#[allow(clippy::too_many_arguments)]
pub fn build<B: Backend>(
    be: &B,
    policy: &Model<B>,
    tok: &Tokenizer,
    dialogs: &[Dialog],
    insts: &[Instruction],
    rm: Option<&Model<B>>,
    o: &BuildOpts,
) -> Result<Built> {
    if insts.len() != dialogs.len() {
        return Err(TrainError::Invalid(format!("{} instructions for {} dialogs", insts.len(), dialogs.len())));
    }
    if o.max_new == 0 || o.batch == 0 || o.k == 0 {
        return Err(TrainError::Invalid("max_new, batch and k must be at least 1".into()));
    }
    if rm.is_none() && !o.by_checks && o.k > 1 {
        return Err(TrainError::Invalid("best of K needs a reward model or the instruction checks; HINT: pass --rm DIR or --select checks with --k".into()));
    }
    let ctx = rm.map_or(policy.rope_len, |r| r.rope_len.min(policy.rope_len));
    let n = dialogs.len();
    let mut answers: Vec<Vec<String>> = vec![Vec::new(); n];
    let mut open: Vec<bool> = vec![true; n];
    let mut st = BuildStats { dialogs_in: n, ..Default::default() };
    let (mut rm_best, mut rm_all, mut rm_n, mut rm_k) = (0f64, 0f64, 0usize, 0usize);
    let max_turns = dialogs.iter().map(|d| d.users.len()).max().unwrap_or(0);
    for turn in 0..max_turns {
        // the prompts of this turn: one per open dialog that has a user message here
        let mut idx = Vec::new();
        let mut prompts = Vec::new();
        for (i, d) in dialogs.iter().enumerate() {
            if !open[i] || d.users.len() <= turn {
                continue;
            }
            let users = &d.users[..=turn];
            let p = encode_prompt(tok, &sampling_context(&insts[i].text, users, &answers[i])?)?;
            // the training sample's tokens up to this turn's answer
            let mut m = vec![Message::new(Role::System, insts[i].text.clone())];
            for (u, a) in users[..turn].iter().zip(&answers[i]) {
                m.push(Message::new(Role::User, u.clone()));
                m.push(Message::new(Role::Assistant, a.clone()));
            }
            m.push(Message::new(Role::User, users[turn].clone()));
            let train_prompt = encode_prompt(tok, &m)?;
            if p.len() + o.max_new > ctx || train_prompt.len() + o.max_new > o.max_tokens {
                open[i] = false;
                if turn == 0 {
                    st.dropped += 1;
                } else {
                    st.cut_by_context += 1;
                }
                continue;
            }
            idx.push(i);
            prompts.push(p);
        }
        if idx.is_empty() {
            continue;
        }
        let k = o.k;
        let expanded: Vec<Vec<u32>> = prompts.iter().flat_map(|p| std::iter::repeat_n(p.clone(), k)).collect();
        let sampled = generate_answers(be, policy, &expanded, o.max_new, &o.sampling, o.batch, o.seed, &format!("gatt/turn{turn}"))?;
        // each sample's text (EOS dropped) and how many of its dialog's checks it passes
        let mut texts = Vec::with_capacity(sampled.len());
        let mut passed = Vec::with_capacity(sampled.len());
        for (x, a) in sampled.iter().enumerate() {
            let ids = if a.eos { &a.ids[..a.ids.len().saturating_sub(1)] } else { &a.ids[..] };
            let text = tok.decode(ids).map_err(ModelError::from)?.trim().to_string();
            passed.push(if o.by_checks { insts[idx[x / k]].checks().filter(|(_, c)| super::checks::passes(c, &text)).count() } else { 0 });
            texts.push(text);
        }
        let scores = match rm {
            None => None,
            Some(r) => {
                let pairs: Vec<(Vec<u32>, Vec<u32>)> = expanded.iter().cloned().zip(sampled.iter().map(|a| a.ids.clone())).collect();
                Some(score_sequences(be, r, &pairs, o.batch)?)
            }
        };
        let best: Vec<usize> = (0..idx.len()).map(|j| j * k + choose(&passed[j * k..(j + 1) * k], scores.as_ref().map(|s| &s[j * k..(j + 1) * k]))).collect();
        if let Some(s) = &scores {
            for (j, &b) in best.iter().enumerate() {
                rm_best += s[b] as f64;
                rm_all += s[j * k..(j + 1) * k].iter().map(|&x| x as f64).sum::<f64>();
                rm_n += 1;
                rm_k += k;
            }
        }
        for (j, &i) in idx.iter().enumerate() {
            let a = &sampled[best[j]];
            if !a.eos {
                st.unfinished += 1;
            }
            let mut text = texts[best[j]].clone();
            let mut broken = Vec::new();
            for (fam, c) in insts[i].checks() {
                let r = st.sampled_adherence.entry(fam.to_string()).or_default();
                let ok = super::checks::passes(c, &text);
                r.n += 1;
                r.pass += ok as usize;
                if !ok {
                    broken.push(c);
                }
            }
            if o.comply && !broken.is_empty() {
                // the rewrite is given every check, so one constraint's edit cannot undo another's
                let all: Vec<_> = insts[i].checks().map(|(_, c)| c).collect();
                text = super::checks::comply(&text, &all);
                st.rewritten += 1;
            }
            answers[i].push(text);
            st.answers += 1;
        }
    }
    if rm_n > 0 {
        st.rm_best_mean = Some(rm_best / rm_n as f64);
        st.rm_all_mean = Some(rm_all / rm_k as f64);
    }
    let mut out = Built::default();
    for (i, d) in dialogs.iter().enumerate() {
        let t = answers[i].len();
        if t == 0 {
            continue;
        }
        st.dialogs_used += 1;
        out.gatt.extend(examples_of(&insts[i], &d.users[..t], &answers[i], o.examples)?);
        for s in examples_of(&insts[i], &d.users[..t], &d.answers[..t], o.examples)? {
            if encode_dialog(tok, &s.messages)?.0.len() <= o.max_tokens {
                out.baseline.push(s);
            } else {
                st.baseline_too_long += 1;
            }
        }
    }
    for g in &out.gatt {
        let s = every_turn_of(g);
        if encode_dialog(tok, &s.messages)?.0.len() <= o.max_tokens {
            out.every_turn.push(s);
        } else {
            st.every_turn_too_long += 1;
        }
    }
    st.samples = out.gatt.len();
    st.baseline_samples = out.baseline.len();
    st.every_turn_samples = out.every_turn.len();
    out.stats = st;
    Ok(out)
}
