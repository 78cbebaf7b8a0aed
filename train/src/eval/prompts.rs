//! Prompt sets of the evaluations and the safety data, from the files of
//! `data/rlhf/` (compiled in, so a library user needs no data directory):
//!
//! - unsafe prompts (`unsafe_prompts.json`): every template of a category
//!   (weapons, poison, theft, hacking, fraud, violence, drugs, arson) with
//!   every object of that category, tagged unsafe; and borderline prompts,
//!   safe ones that use the same words ("How do I kill a process ..."),
//!   tagged safe with category `borderline`. [`safety_prompts`] splits each
//!   category separately into train and held-out prompts, seeded, so every
//!   category is in both.
//! - SFT safety demonstrations ([`safety_demonstrations`]): unsafe training
//!   prompts answered by a refusal assembled from `refusals.json` (an
//!   opener, the category's reason, sometimes a redirect), varied by a
//!   seeded draw.
//! - Self-BLEU prompt sets ([`self_bleu_sets`], `self_bleu_prompts.json`):
//!   small written lists of factual and creative prompts.
//! - prompt files ([`read_prompts`]): JSON Lines or a JSON array, one
//!   prompt per record as `"prompt"` (a string), `"messages"` (the last
//!   user message is the prompt), or Alpaca `"instruction"` (+ `"input"`);
//!   optional `"unsafe"` (or `"unsafe_prompt"`) and `"category"`.
//!
//! Public items: [`EvalPrompt`], [`BORDERLINE`], [`SafetyPrompts`],
//! [`safety_prompts`], [`refusal_for`], [`safety_demonstrations`],
//! [`self_bleu_sets`], [`read_prompts`], [`write_prompts`], [`write_dialogs`].

use crate::error::{Result, TrainError};
use llama2_model::chat::{Message, Role};
use llama2_runtime::rng::Rng;
use serde_json::{json, Value};
use std::path::Path;

const UNSAFE_JSON: &str = include_str!("../../../data/rlhf/unsafe_prompts.json");
const REFUSALS_JSON: &str = include_str!("../../../data/rlhf/refusals.json");
const SELF_BLEU_JSON: &str = include_str!("../../../data/rlhf/self_bleu_prompts.json");

/// The category of the borderline (safe) prompts.
pub const BORDERLINE: &str = "borderline";

/// One single-turn prompt of an evaluation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EvalPrompt {
    /// the user message
    pub text: String,
    /// tagged as unsafe: only a refusal is a safe answer
    pub unsafe_prompt: bool,
    /// where it comes from (an unsafe category, `borderline`, or empty)
    pub category: String,
}

impl EvalPrompt {
    pub fn safe(text: impl Into<String>) -> Self {
        EvalPrompt { text: text.into(), unsafe_prompt: false, category: String::new() }
    }
}

fn embedded(name: &str, text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| TrainError::Invalid(format!("data/rlhf/{name} (compiled in) is not valid JSON: {e}")))
}

fn strings(v: &Value, what: &str) -> Result<Vec<String>> {
    v.as_array()
        .and_then(|a| a.iter().map(|x| x.as_str().map(String::from)).collect::<Option<Vec<_>>>())
        .ok_or_else(|| TrainError::Invalid(format!("data/rlhf: {what} must be a list of strings")))
}

/// Every unsafe prompt (category order of the file, templates x objects)
/// and every borderline prompt.
fn all_safety_prompts() -> Result<Vec<EvalPrompt>> {
    let v = embedded("unsafe_prompts.json", UNSAFE_JSON)?;
    let cats = v["categories"].as_object().ok_or_else(|| TrainError::Invalid("data/rlhf/unsafe_prompts.json: no categories".into()))?;
    let mut out = Vec::new();
    for (cat, c) in cats {
        let (ts, os) = (strings(&c["templates"], &format!("{cat}.templates"))?, strings(&c["objects"], &format!("{cat}.objects"))?);
        for t in &ts {
            if !t.contains("{x}") {
                return Err(TrainError::Invalid(format!("data/rlhf/unsafe_prompts.json: template `{t}` has no {{x}}")));
            }
            for o in &os {
                out.push(EvalPrompt { text: t.replace("{x}", o), unsafe_prompt: true, category: cat.clone() });
            }
        }
    }
    for p in strings(&v["borderline"]["prompts"], "borderline.prompts")? {
        out.push(EvalPrompt { text: p, unsafe_prompt: false, category: BORDERLINE.into() });
    }
    Ok(out)
}

/// The safety prompts split into train and held-out parts.
#[derive(Clone, Debug, PartialEq)]
pub struct SafetyPrompts {
    pub train: Vec<EvalPrompt>,
    pub held_out: Vec<EvalPrompt>,
}

/// Splits every category (the unsafe ones and `borderline`) separately: a
/// seeded shuffle (stream `rlhf/split/<category>`), the last
/// `round(held_out_fraction · n)` prompts held out (at least one and at
/// most n - 1 when the fraction is in (0, 1)).
pub fn safety_prompts(seed: u64, held_out_fraction: f64) -> Result<SafetyPrompts> {
    if !(0.0..1.0).contains(&held_out_fraction) {
        return Err(TrainError::Invalid(format!("held-out fraction {held_out_fraction} must be in [0, 1)")));
    }
    let all = all_safety_prompts()?;
    let mut cats: Vec<String> = Vec::new();
    for p in &all {
        if !cats.contains(&p.category) {
            cats.push(p.category.clone());
        }
    }
    let mut out = SafetyPrompts { train: Vec::new(), held_out: Vec::new() };
    for c in cats {
        let mut ps: Vec<EvalPrompt> = all.iter().filter(|p| p.category == c).cloned().collect();
        Rng::derive(seed, &format!("rlhf/split/{c}")).shuffle(&mut ps);
        let n = ps.len();
        let mut k = (held_out_fraction * n as f64).round() as usize;
        if held_out_fraction > 0.0 {
            k = k.clamp(1, n.saturating_sub(1));
        }
        out.held_out.extend(ps.split_off(n - k));
        out.train.extend(ps);
    }
    Ok(out)
}

/// A refusal of a prompt of `category`: an opener, the category's reason
/// (if the file has one) and a redirect, drawn from `rng`.
pub fn refusal_for(category: &str, rng: &mut Rng) -> Result<String> {
    let v = embedded("refusals.json", REFUSALS_JSON)?;
    let (openers, redirects) = (strings(&v["openers"], "openers")?, strings(&v["redirects"], "redirects")?);
    if openers.is_empty() || redirects.is_empty() {
        return Err(TrainError::Invalid("data/rlhf/refusals.json: no openers or redirects".into()));
    }
    let mut parts = vec![openers[rng.below(openers.len() as u64) as usize].clone()];
    if let Some(r) = v["reasons"][category].as_str() {
        parts.push(r.to_string());
    }
    let red = &redirects[rng.below(redirects.len() as u64) as usize];
    if !red.is_empty() {
        parts.push(red.clone());
    }
    Ok(parts.join(" "))
}

/// `n` SFT dialogs (user: an unsafe prompt, assistant: a refusal) from the
/// unsafe prompts of `prompts` (a seeded choice without replacement, stream
/// `rlhf/demos`; all of them if there are fewer than `n`).
pub fn safety_demonstrations(prompts: &[EvalPrompt], n: usize, seed: u64) -> Result<Vec<Vec<Message>>> {
    let mut unsafe_p: Vec<&EvalPrompt> = prompts.iter().filter(|p| p.unsafe_prompt).collect();
    let mut rng = Rng::derive(seed, "rlhf/demos");
    rng.shuffle(&mut unsafe_p);
    unsafe_p.truncate(n);
    unsafe_p.iter().map(|p| Ok(vec![Message::new(Role::User, p.text.clone()), Message::new(Role::Assistant, refusal_for(&p.category, &mut rng)?)])).collect()
}

/// The Self-BLEU prompt sets: (factual, creative).
pub fn self_bleu_sets() -> Result<(Vec<EvalPrompt>, Vec<EvalPrompt>)> {
    let v = embedded("self_bleu_prompts.json", SELF_BLEU_JSON)?;
    let f = |k: &str| -> Result<Vec<EvalPrompt>> {
        Ok(strings(&v[k], k)?.into_iter().map(|t| EvalPrompt { text: t, unsafe_prompt: false, category: k.into() }).collect())
    };
    Ok((f("factual")?, f("creative")?))
}

fn bad(path: &Path, msg: String) -> TrainError {
    TrainError::BadFile {
        path: path.to_path_buf(),
        msg,
        hint: "records are {\"prompt\": \"...\"}, {\"messages\": [...]} or {\"instruction\", \"input\"}, with optional \"unsafe\": true and \"category\""
            .into(),
    }
}

fn prompt_of_record(v: &Value) -> std::result::Result<EvalPrompt, String> {
    let o = v.as_object().ok_or("a record must be a JSON object")?;
    let text = if let Some(p) = o.get("prompt") {
        p.as_str().ok_or("`prompt` must be a string")?.to_string()
    } else if let Some(m) = o.get("messages").or_else(|| o.get("conversations")) {
        let arr = m.as_array().ok_or("`messages` must be a list")?;
        let mut last = None;
        for (i, x) in arr.iter().enumerate() {
            let role = x.get("role").or_else(|| x.get("from")).and_then(|r| r.as_str()).ok_or(format!("message {i} has no role"))?;
            let role = Role::parse(role).ok_or(format!("message {i} has unknown role `{role}`"))?;
            let content = x.get("content").or_else(|| x.get("value")).and_then(|c| c.as_str()).ok_or(format!("message {i} has no content"))?;
            if role == Role::User {
                last = Some(content.to_string());
            }
        }
        last.ok_or("`messages` has no user message")?
    } else if let Some(ins) = o.get("instruction") {
        let ins = ins.as_str().ok_or("`instruction` must be a string")?;
        let input = o.get("input").and_then(|x| x.as_str()).unwrap_or("");
        if input.trim().is_empty() {
            ins.to_string()
        } else {
            format!("{ins}\n\n{input}")
        }
    } else {
        return Err("no `prompt`, `messages` or `instruction`".into());
    };
    if text.trim().is_empty() {
        return Err("empty prompt".into());
    }
    let mut unsafe_prompt = false;
    for k in ["unsafe", "unsafe_prompt"] {
        match o.get(k) {
            None | Some(Value::Null) => {}
            Some(Value::Bool(b)) => unsafe_prompt = *b,
            Some(other) => return Err(format!("`{k}` must be true or false, not {other}")),
        }
    }
    let category = match o.get("category") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(format!("`category` must be a string, not {other}")),
    };
    Ok(EvalPrompt { text, unsafe_prompt, category })
}

/// Reads a prompt file (see the module header).
pub fn read_prompts(path: &Path) -> Result<Vec<EvalPrompt>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let trimmed = text.trim_start();
    let records: Vec<(String, Value)> = if trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(trimmed).map_err(|e| bad(path, format!("not a valid JSON array: {e}")))?;
        v.as_array().cloned().unwrap_or_default().into_iter().enumerate().map(|(i, r)| (format!("record {}", i + 1), r)).collect()
    } else {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).map_err(|e| bad(path, format!("line {}: not valid JSON: {e}", i + 1)))?;
            out.push((format!("line {}", i + 1), v));
        }
        out
    };
    let mut out = Vec::with_capacity(records.len());
    for (at, r) in records {
        out.push(prompt_of_record(&r).map_err(|m| bad(path, format!("{at}: {m}")))?);
    }
    if out.is_empty() {
        return Err(bad(path, "no prompts".into()));
    }
    Ok(out)
}

/// Writes prompts as JSON Lines `{"prompt", "unsafe", "category"}` (the
/// form `train-tool ppo --prompts` and [`read_prompts`] read), atomically.
pub fn write_prompts(path: &Path, prompts: &[EvalPrompt]) -> Result<()> {
    let mut s = String::new();
    for p in prompts {
        s += &json!({"prompt": p.text, "unsafe": p.unsafe_prompt, "category": p.category}).to_string();
        s.push('\n');
    }
    Ok(llama2_model::weights::write_atomic(path, s.as_bytes())?)
}

/// Writes dialogs as JSON Lines `{"messages": [...]}` (the SFT format),
/// atomically.
pub fn write_dialogs(path: &Path, dialogs: &[Vec<Message>]) -> Result<()> {
    let mut s = String::new();
    for d in dialogs {
        let msgs: Vec<Value> = d
            .iter()
            .map(|m| {
                let role = match m.role {
                    Role::System => "system",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                };
                json!({"role": role, "content": m.content})
            })
            .collect();
        s += &json!({ "messages": msgs }).to_string();
        s.push('\n');
    }
    Ok(llama2_model::weights::write_atomic(path, s.as_bytes())?)
}
