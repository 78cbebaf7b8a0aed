//! Multi-turn dialogs for GAtt: multi-turn records taken as they are
//! (cut to the longest length asked), single-turn records chained into
//! dialogs of a seeded random length, and the single-turn
//! system-message demonstrations.
//!
//! A source's own system message is dropped (the GAtt instruction takes its
//! place); a source with no user turn, or whose turns do not alternate
//! user / assistant, is skipped and counted.
//!
//! Public items: [`Dialog`], [`DialogOpts`], [`Dialogs`], [`build_dialogs`],
//! [`user_prompts`], [`demos`].

use super::checks::comply;
use super::instructions::{Instruction, InstructionSet};
use crate::error::{Result, TrainError};
use llama2_model::chat::{Message, Role};
use llama2_runtime::rng::Rng;

/// User turns and the dataset's answers to them (`answers.len() == users.len()`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dialog {
    pub users: Vec<String>,
    pub answers: Vec<String>,
}

/// How many dialogs, of how many turns.
#[derive(Clone, Copy, Debug)]
pub struct DialogOpts {
    pub min_turns: usize,
    pub max_turns: usize,
    /// dialogs to make (multi-turn sources first, then chains)
    pub count: usize,
    pub seed: u64,
}

/// The dialogs made, and the sources that could not be used.
#[derive(Clone, Debug, Default)]
pub struct Dialogs {
    pub dialogs: Vec<Dialog>,
    /// sources with no user turn or a broken alternation
    pub skipped: usize,
}

/// The (user, answer) pairs of a source, or None when it has no user turn
/// or does not alternate.
fn pairs(src: &[Message]) -> Option<Dialog> {
    let rest: Vec<&Message> = src.iter().skip_while(|m| m.role == Role::System).collect();
    let mut d = Dialog { users: Vec::new(), answers: Vec::new() };
    for pair in rest.chunks(2) {
        match pair {
            [u, a] if u.role == Role::User && a.role == Role::Assistant => {
                d.users.push(u.content.clone());
                d.answers.push(a.content.clone());
            }
            [u] if u.role == Role::User => {} // a last question without answer
            _ => return None,
        }
    }
    (!d.users.is_empty()).then_some(d)
}

/// Dialogs from `sources` (see the module header).
pub fn build_dialogs(sources: &[Vec<Message>], o: DialogOpts) -> Result<Dialogs> {
    if o.min_turns == 0 || o.min_turns > o.max_turns {
        return Err(TrainError::Invalid(format!("turns {}..{}: need 1 <= min <= max", o.min_turns, o.max_turns)));
    }
    let mut out = Dialogs::default();
    let (mut multi, mut single) = (Vec::new(), Vec::new());
    for s in sources {
        match pairs(s) {
            None => out.skipped += 1,
            Some(d) if d.users.len() >= 2 => multi.push(d),
            Some(d) => single.push(d),
        }
    }
    if multi.is_empty() && single.is_empty() {
        return Err(TrainError::Invalid(format!(
            "none of the {} dialogs has a user turn followed by an answer; HINT: pass SFT records (messages, conversations, prompt/completion, Alpaca)",
            sources.len()
        )));
    }
    let mut rng = Rng::derive(o.seed, "gatt/dialogs");
    rng.shuffle(&mut multi);
    for mut d in multi {
        if out.dialogs.len() == o.count {
            break;
        }
        d.users.truncate(o.max_turns);
        d.answers.truncate(o.max_turns);
        out.dialogs.push(d);
    }
    // chains of single-turn records, drawn from a shuffled pool that is
    // refilled when it runs out (a record recurs only after all were used)
    let mut pool: Vec<usize> = Vec::new();
    while out.dialogs.len() < o.count && !single.is_empty() {
        let n = o.min_turns + rng.below((o.max_turns - o.min_turns + 1) as u64) as usize;
        let mut d = Dialog { users: Vec::with_capacity(n), answers: Vec::with_capacity(n) };
        for _ in 0..n {
            if pool.is_empty() {
                pool = (0..single.len()).collect();
                rng.shuffle(&mut pool);
            }
            let s = &single[pool.pop().unwrap_or(0)];
            d.users.push(s.users[0].clone());
            d.answers.push(s.answers[0].clone());
        }
        out.dialogs.push(d);
    }
    Ok(out)
}

/// The user messages of `sources` (every user turn), for evaluation prompts.
pub fn user_prompts(sources: &[Vec<Message>]) -> Vec<String> {
    sources.iter().flat_map(|d| d.iter().filter(|m| m.role == Role::User).map(|m| m.content.clone())).collect()
}

/// Single-turn system-message demonstrations: for each source's first
/// (user, answer) pair, a seeded instruction as the system message and the
/// answer rewritten to obey its checkable constraints ([`comply`]); the
/// paper's families (hobby, language, figure) leave the answer as it is.
/// Returns the dialogs (system, user, assistant) and their instructions.
pub fn demos(sources: &[Vec<Message>], set: &InstructionSet, seed: u64) -> Result<(Vec<Vec<Message>>, Vec<Instruction>)> {
    let mut rng = Rng::derive(seed, "gatt/demos");
    let (mut out, mut insts) = (Vec::new(), Vec::new());
    for s in sources {
        let Some(d) = pairs(s) else { continue };
        let inst = set.sample(&mut rng)?;
        let checks: Vec<_> = inst.checks().map(|c| c.1).collect();
        let answer = if checks.is_empty() { d.answers[0].clone() } else { comply(&d.answers[0], &checks) };
        out.push(vec![Message::new(Role::System, inst.text.clone()), Message::new(Role::User, d.users[0].clone()), Message::new(Role::Assistant, answer)]);
        insts.push(inst);
    }
    if out.is_empty() {
        return Err(TrainError::Invalid("no source dialog has a user turn followed by an answer".into()));
    }
    Ok((out, insts))
}
