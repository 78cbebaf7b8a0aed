//! Supervised fine-tuning data (PAPER.md section 4): dialogs from the
//! dataset formats people already have, tokenised in the tokenizer's chat
//! format ([`ChatFormat::for_tokenizer`]: the model's own template, else
//! Llama-2-chat) with the loss zeroed on every prompt token, and packed: all dialogs of
//! the training set concatenated (in a seeded order, new each epoch) and cut
//! into sequences of exactly `seq_len` tokens.
//!
//! Formats (JSON Lines, or one JSON array), one record per dialog:
//! - `{"messages": [{"role": "system"|"user"|"assistant", "content": ..}]}`
//! - sharegpt style: `{"conversations": [{"from": "system"|"human"|"gpt",
//!   "value": ..}], "system"?: .., "chosen"?: ..}` (a preference record's
//!   chosen answer becomes the last turn)
//! - `{"prompt": .., "completion": ..}` (prompt: a string or messages)
//! - Alpaca: `{"instruction": .., "input"?: .., "output": ..}` (the input,
//!   if any, follows the instruction after a blank line)
//!
//! A record may also say where its loss goes: `"loss": "last"` keeps the
//! loss on the final answer only (Ghost Attention samples: the earlier turns
//! are context), `"loss": "answers"` (the default) on every answer.
//!
//! Packing ([`Packing`]): `Concat` (the default) cuts the concatenated
//! dialogs into rows without regard to their boundaries; `Whole` puts each
//! dialog on its own row, right-padded with masked targets and never cut
//! (a dialog that needs its whole context, as a GAtt sample needs its
//! system message, is seen whole; dialogs longer than a row are skipped and
//! counted in [`SftData::skipped`]).
//!
//! Public items: [`load_dialogs`], [`load_records`], [`parse_record`],
//! [`parse_messages`], [`parse_loss`], [`LossOn`], [`SftRecord`],
//! [`Packing`], [`SftData`] (from dialogs, records, or already tokenised
//! examples with [`SftData::from_encoded`]: rejection sampling's kept
//! answers),
//! [`split_dialogs`].

use crate::data::DataPosition;
use crate::error::{Result, TrainError};
use crate::run::BatchSource;
use crate::step::MicroBatch;
use llama2_model::chat::{ChatFormat, Message, Role};
use llama2_model::tokenizer::Tokenizer;
use llama2_runtime::rng::Rng;
use serde_json::Value;
use std::path::Path;

fn bad(path: &Path, msg: String) -> TrainError {
    TrainError::BadFile {
        path: path.to_path_buf(),
        msg,
        hint: "records are {\"messages\": [...]}, {\"conversations\": [...]}, {\"prompt\", \"completion\"} or {\"instruction\", \"input\", \"output\"}".into(),
    }
}

pub(crate) fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").or_else(|| o.get("value")).and_then(|x| x.as_str()).map(String::from),
        _ => None,
    }
}

/// A `messages` (or sharegpt `conversations`) array as messages.
pub fn parse_messages(v: &Value) -> std::result::Result<Vec<Message>, String> {
    let arr = v.as_array().ok_or("`messages` must be an array")?;
    arr.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m.get("role").or_else(|| m.get("from")).and_then(|r| r.as_str()).ok_or(format!("message {i} has no role/from"))?;
            let role = Role::parse(role).ok_or(format!("message {i} has unknown role `{role}`"))?;
            let content = m.get("content").or_else(|| m.get("value")).and_then(|c| c.as_str()).ok_or(format!("message {i} has no content/value"))?;
            Ok(Message::new(role, content))
        })
        .collect()
}

/// One record → one dialog (see the module header for the formats).
pub fn parse_record(v: &Value) -> std::result::Result<Vec<Message>, String> {
    let o = v.as_object().ok_or("a record must be a JSON object")?;
    let mut d = if let Some(m) = o.get("messages") {
        parse_messages(m)?
    } else if let Some(c) = o.get("conversations") {
        let mut d = parse_messages(c)?;
        if let Some(sys) = o.get("system").and_then(|s| s.as_str()) {
            if d.first().map(|m| m.role) != Some(Role::System) && !sys.is_empty() {
                d.insert(0, Message::new(Role::System, sys));
            }
        }
        if let Some(ch) = o.get("chosen") {
            d.push(Message::new(Role::Assistant, text_of(ch).ok_or("`chosen` must be a string or a message")?));
        }
        d
    } else if let (Some(p), Some(c)) = (o.get("prompt"), o.get("completion")) {
        let mut d = match p {
            Value::String(s) => vec![Message::new(Role::User, s.clone())],
            other => parse_messages(other)?,
        };
        d.push(Message::new(Role::Assistant, text_of(c).ok_or("`completion` must be a string")?));
        d
    } else if let (Some(ins), Some(out)) = (o.get("instruction").and_then(|x| x.as_str()), o.get("output").and_then(|x| x.as_str())) {
        let input = o.get("input").and_then(|x| x.as_str()).unwrap_or("");
        let user = if input.trim().is_empty() { ins.to_string() } else { format!("{ins}\n\n{input}") };
        vec![Message::new(Role::User, user), Message::new(Role::Assistant, out)]
    } else {
        return Err("no messages, conversations, prompt/completion or instruction/output fields".into());
    };
    if d.last().map(|m| m.role) != Some(Role::Assistant) {
        // a record that ends with a question has nothing to learn from
        d.clear();
    }
    Ok(d)
}

/// Which answers of a dialog carry loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LossOn {
    /// every answer (`"loss": "answers"`, the default)
    #[default]
    Answers,
    /// the final answer only (`"loss": "last"`)
    LastAnswer,
}

/// A record's optional `"loss"` field.
pub fn parse_loss(v: &Value) -> std::result::Result<LossOn, String> {
    match v.get("loss") {
        None => Ok(LossOn::Answers),
        Some(Value::String(s)) if s == "answers" => Ok(LossOn::Answers),
        Some(Value::String(s)) if s == "last" => Ok(LossOn::LastAnswer),
        Some(other) => Err(format!("`loss` must be \"answers\" or \"last\", not {other}")),
    }
}

/// One dialog and where its loss goes.
#[derive(Clone, Debug, PartialEq)]
pub struct SftRecord {
    pub messages: Vec<Message>,
    pub loss: LossOn,
}

/// Reads every dialog of a JSON Lines file or a JSON array file; records
/// without a final answer are skipped.
pub fn load_dialogs(path: &Path) -> Result<Vec<Vec<Message>>> {
    Ok(load_records(path)?.into_iter().map(|r| r.messages).collect())
}

/// [`load_dialogs`] with each record's `"loss"` field.
pub fn load_records(path: &Path) -> Result<Vec<SftRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let trimmed = text.trim_start();
    let records: Vec<(usize, Value)> = if trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(trimmed).map_err(|e| bad(path, format!("not a valid JSON array: {e}")))?;
        v.as_array().cloned().unwrap_or_default().into_iter().enumerate().map(|(i, r)| (i + 1, r)).collect()
    } else {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line).map_err(|e| bad(path, format!("line {}: not valid JSON: {e}", i + 1)))?;
            out.push((i + 1, v));
        }
        out
    };
    let mut dialogs = Vec::new();
    for (n, r) in records {
        let d = parse_record(&r).map_err(|m| bad(path, format!("record {n}: {m}")))?;
        let loss = parse_loss(&r).map_err(|m| bad(path, format!("record {n}: {m}")))?;
        if !d.is_empty() {
            dialogs.push(SftRecord { messages: d, loss });
        }
    }
    if dialogs.is_empty() {
        return Err(bad(path, "no dialog with an answer".into()));
    }
    Ok(dialogs)
}

/// Splits dialogs into (train, held out): a seeded choice of
/// `round(fraction * n)` held-out dialogs (at least one if fraction > 0).
pub fn split_dialogs<T>(mut d: Vec<T>, fraction: f64, seed: u64) -> (Vec<T>, Vec<T>) {
    let mut rng = Rng::derive(seed, "sft/split");
    rng.shuffle(&mut d);
    let mut k = (fraction * d.len() as f64).round() as usize;
    if fraction > 0.0 {
        k = k.max(1);
    }
    let k = k.min(d.len().saturating_sub(1));
    let held = d.split_off(d.len() - k);
    (d, held)
}

/// How dialogs become rows (see the module header).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Packing {
    /// concatenated and cut into rows of `t` tokens
    #[default]
    Concat,
    /// one dialog per row, right-padded (masked), never cut
    Whole,
}

/// Tokenised dialogs, packed into `b x t` batches epoch after epoch.
pub struct SftData {
    /// (ids, loss mask) per dialog
    pub dialogs: Vec<(Vec<u32>, Vec<bool>)>,
    pub b: usize,
    pub t: usize,
    /// None = the dialogs' order is kept (validation)
    pub shuffle_seed: Option<u64>,
    /// stop after one pass (validation) instead of starting a new epoch
    pub single_pass: bool,
    pub packing: Packing,
    /// dialogs left out because they do not fit a row (`Packing::Whole`)
    pub skipped: usize,
    pos: DataPosition,
    stream: Vec<u32>,
    mask: Vec<bool>,
}

impl SftData {
    pub fn new(tok: &Tokenizer, dialogs: &[Vec<Message>], b: usize, t: usize, shuffle_seed: Option<u64>, single_pass: bool) -> Result<Self> {
        let fmt = ChatFormat::for_tokenizer(tok)?;
        let enc = dialogs.iter().map(|d| fmt.encode_dialog(tok, d)).collect::<std::result::Result<Vec<_>, _>>()?;
        Self::from_encoded(enc, b, t, shuffle_seed, single_pass, Packing::Concat)
    }

    /// [`SftData::new`] of records, each with its own loss placement, packed as `packing` says.
    pub fn from_records(
        tok: &Tokenizer,
        records: &[SftRecord],
        b: usize,
        t: usize,
        shuffle_seed: Option<u64>,
        single_pass: bool,
        packing: Packing,
    ) -> Result<Self> {
        let fmt = ChatFormat::for_tokenizer(tok)?;
        let enc = records.iter().map(|r| fmt.encode_dialog_last(tok, &r.messages, r.loss == LossOn::LastAnswer)).collect::<std::result::Result<Vec<_>, _>>()?;
        Self::from_encoded(enc, b, t, shuffle_seed, single_pass, packing)
    }

    /// Packs already tokenised examples: (ids, loss mask) each, the mask
    /// true on the tokens to learn (targets; the first token of an example
    /// is never a target), as `packing` says.
    pub fn from_encoded(
        mut enc: Vec<(Vec<u32>, Vec<bool>)>,
        b: usize,
        t: usize,
        shuffle_seed: Option<u64>,
        single_pass: bool,
        packing: Packing,
    ) -> Result<Self> {
        if let Some(i) = enc.iter().position(|(ids, m)| ids.len() != m.len()) {
            return Err(TrainError::Invalid(format!("example {i}: {} ids but {} mask entries", enc[i].0.len(), enc[i].1.len())));
        }
        let n = enc.len();
        if packing == Packing::Whole {
            enc.retain(|d| d.0.len() <= t);
        }
        let skipped = n - enc.len();
        let mut s =
            SftData { dialogs: enc, b, t, shuffle_seed, single_pass, packing, skipped, pos: DataPosition::default(), stream: Vec::new(), mask: Vec::new() };
        s.build_epoch();
        if s.batches_per_epoch() == 0 {
            return Err(TrainError::Invalid(format!(
                "the {} dialogs hold {} tokens, fewer than one batch of {b} x {t} (+1){}; HINT: use a smaller --batch-size{}",
                s.dialogs.len(),
                s.stream.len(),
                if s.skipped > 0 { format!(" ({} dialogs longer than {t} tokens skipped)", s.skipped) } else { String::new() },
                if s.packing == Packing::Whole { " or a larger --seq-len" } else { " or --seq-len" }
            )));
        }
        Ok(s)
    }

    /// Tokens in one epoch.
    pub fn tokens(&self) -> usize {
        self.dialogs.iter().map(|d| d.0.len()).sum()
    }

    /// Tokens that carry loss in one epoch.
    pub fn answer_tokens(&self) -> usize {
        self.dialogs.iter().map(|d| d.1.iter().filter(|&&m| m).count()).sum()
    }

    pub fn batches_per_epoch(&self) -> usize {
        let n = self.stream.len();
        if n < self.b * self.t + 1 {
            0
        } else {
            (n - 1) / (self.b * self.t)
        }
    }

    fn build_epoch(&mut self) {
        let mut order: Vec<usize> = (0..self.dialogs.len()).collect();
        if let Some(seed) = self.shuffle_seed {
            Rng::derive(seed, &format!("sft/epoch/{}", self.pos.pass)).shuffle(&mut order);
        }
        self.stream.clear();
        self.mask.clear();
        for i in order {
            self.stream.extend_from_slice(&self.dialogs[i].0);
            self.mask.extend_from_slice(&self.dialogs[i].1);
            if self.packing == Packing::Whole {
                // pad the row to t: the pad predicts nothing and is never
                // attended by the dialog (right padding, causal attention)
                let pad = self.t - self.dialogs[i].0.len();
                self.stream.extend(std::iter::repeat_n(0, pad));
                self.mask.extend(std::iter::repeat_n(false, pad));
            }
        }
        if self.packing == Packing::Whole {
            // the target of a row's last position: never learned
            self.stream.push(0);
            self.mask.push(false);
        }
    }
}

impl BatchSource for SftData {
    fn next_batch(&mut self) -> Result<Option<MicroBatch>> {
        if self.pos.window >= self.batches_per_epoch() {
            if self.single_pass {
                return Ok(None);
            }
            self.pos.pass += 1;
            self.pos.window = 0;
            self.build_epoch();
        }
        let bt = self.b * self.t;
        let start = self.pos.window * bt;
        self.pos.window += 1;
        let mut mb = MicroBatch { inputs: Vec::with_capacity(bt), targets: Vec::with_capacity(bt) };
        for r in 0..self.b {
            let o = start + r * self.t;
            mb.inputs.extend_from_slice(&self.stream[o..o + self.t]);
            // the target at j is token j+1, learned only if it is an answer token
            mb.targets.extend((o + 1..o + self.t + 1).map(|j| if self.mask[j] { self.stream[j] as i32 } else { -1 }));
        }
        Ok(Some(mb))
    }

    fn position(&self) -> DataPosition {
        self.pos
    }

    fn seek(&mut self, pos: DataPosition) -> Result<()> {
        let rebuild = pos.pass != self.pos.pass;
        self.pos = pos;
        if rebuild {
            self.build_epoch();
        }
        if self.pos.window > self.batches_per_epoch() {
            return Err(TrainError::Invalid(format!("data position {pos:?} is outside this dataset; HINT: resume with the same --data")));
        }
        Ok(())
    }
}

/// One answer to a held-out prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatSample {
    /// the dialog up to the last user message
    pub prompt: Vec<Message>,
    /// the generated answer (decoded, EOS removed)
    pub answer: String,
    /// the dataset's answer, if any
    pub reference: Option<String>,
    /// the answer ended with EOS within the token budget
    pub ended: bool,
    pub tokens: usize,
}

/// Answers the last user turn of each dialog (its final answer, if any, is
/// dropped and kept as the reference), sampling with `s`.
pub fn answer_prompts<B: llama2_runtime::Backend>(
    be: &B,
    model: &llama2_model::Model<B>,
    tok: &Tokenizer,
    dialogs: &[Vec<Message>],
    max_new: usize,
    s: &llama2_model::generate::Sampling,
    seed: u64,
) -> Result<Vec<ChatSample>> {
    use llama2_model::generate::Generator;
    let mut rng = Rng::derive(seed, "chat-eval");
    let fmt = ChatFormat::for_tokenizer(tok)?;
    let mut out = Vec::with_capacity(dialogs.len());
    for d in dialogs {
        let mut prompt = d.clone();
        let reference = if prompt.last().map(|m| m.role) == Some(Role::Assistant) { prompt.pop().map(|m| m.content) } else { None };
        let ids = fmt.encode_prompt(tok, &prompt)?;
        let cap = (ids.len() + max_new).min(model.rope_len);
        if ids.len() >= cap {
            continue; // the prompt alone fills the context
        }
        let mut gen = Generator::new(be, model, 1, cap)?;
        let g = gen.generate(be, model, std::slice::from_ref(&ids), cap - ids.len(), s, &mut rng, true)?;
        let mut ans = g.ids[0].clone();
        let ended = g.ended[0];
        if ended {
            ans.pop();
        }
        out.push(ChatSample { prompt, answer: tok.decode(&ans).map_err(llama2_model::ModelError::from)?, reference, ended, tokens: g.ids[0].len() });
    }
    Ok(out)
}
