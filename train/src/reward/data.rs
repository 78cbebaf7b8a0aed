//! Preference pairs for reward models (PAPER.md section 5), read from the
//! formats people already have, encoded, mixed and batched.
//!
//! Records (JSON Lines, or one JSON array), one pair each:
//! - text: a prompt as `"prompt"` (a string or messages), `"messages"`, or
//!   sharegpt `"conversations"` (with an optional `"system"`), or Alpaca
//!   `"instruction"` (+ `"input"`); and `"chosen"`, `"rejected"`, each a
//!   string, a message (`{"role"|"from", "content"|"value"}`) or a list of
//!   messages ending with the assistant's answer (TRL's conversational
//!   form). With no prompt field and message lists as `chosen`/`rejected`,
//!   the common leading messages are the prompt (TRL's implicit prompt).
//!   Encoded in the Llama-2-chat format with the answer as the last
//!   assistant turn (`BOS [INST] ... [/INST] answer EOS`), so a reward
//!   model reads its score at EOS.
//! - token ids: `{"prompt_ids", "chosen_ids", "rejected_ids"}`; the scored
//!   sequences are exactly `prompt_ids + chosen_ids` and `prompt_ids +
//!   rejected_ids` (nothing added).
//! - optional, either form: `"rating"` (`"significantly better"`,
//!   `"better"`, `"slightly better"`, `"negligibly better"`, `"unsure"`, or
//!   3..0), `"unsafe_prompt": bool`, `"chosen_safe": bool` and
//!   `"rejected_safe": bool` (also spelled `safe_chosen`, `safe_rejected`).
//!
//! A pair whose chosen or rejected sequence is longer than `max_len` tokens
//! is dropped and counted ([`PairSet::dropped`]), never truncated.
//!
//! Mixtures ([`mix`], the paper's recipe): the helpfulness RM trains on all
//! helpfulness pairs plus as many again drawn uniformly (without
//! replacement) from the safety and other (open-source) pairs together; the
//! safety RM on all safety pairs plus helpfulness and other pairs drawn to
//! make up 10% of the mixture.
//!
//! Public items: [`Rating`], [`Margin`], [`SafetyCategory`], [`Pair`],
//! [`PairSet`], [`load_pairs`], [`parse_pair`], [`RawPair`], [`Source`],
//! [`Mix`], [`MixReport`], [`mix`], [`PairBatch`], [`PairData`],
//! [`read_records`], [`prompt_of`].

use crate::data::DataPosition;
use crate::error::{Result, TrainError};
use crate::run::BatchSource;
use crate::sft::{parse_messages, text_of};
use llama2_model::chat::{encode_dialog, Message, Role};
use llama2_model::tokenizer::Tokenizer;
use llama2_runtime::rng::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// How much better the chosen answer is (the annotators' four levels;
/// "unsure" counts as "negligibly better", as in the paper's Table 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Rating {
    NegligiblyBetter = 0,
    SlightlyBetter = 1,
    Better = 2,
    SignificantlyBetter = 3,
}

impl Rating {
    /// From the largest difference to the smallest (the order of Table 8).
    pub const ALL: [Rating; 4] = [Rating::SignificantlyBetter, Rating::Better, Rating::SlightlyBetter, Rating::NegligiblyBetter];

    /// The bucket's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Rating::SignificantlyBetter => "significantly better",
            Rating::Better => "better",
            Rating::SlightlyBetter => "slightly better",
            Rating::NegligiblyBetter => "negligibly better / unsure",
        }
    }

    /// Parses a record's `"rating"`: a name, or an integer 3..0 (null or
    /// absent: no rating).
    pub fn parse(v: Option<&Value>) -> std::result::Result<Option<Rating>, String> {
        let from_int = |i: i64| match i {
            3 => Ok(Rating::SignificantlyBetter),
            2 => Ok(Rating::Better),
            1 => Ok(Rating::SlightlyBetter),
            0 => Ok(Rating::NegligiblyBetter),
            _ => Err(format!("rating {i} is not one of 3, 2, 1, 0")),
        };
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) => from_int(i).map(Some),
                None => Err(format!("rating {n} is not one of 3, 2, 1, 0")),
            },
            Some(Value::String(s)) => {
                let k = s.trim().to_ascii_lowercase().replace(['_', '-'], " ");
                let r = match k.as_str() {
                    "significantly better" => Rating::SignificantlyBetter,
                    "better" => Rating::Better,
                    "slightly better" => Rating::SlightlyBetter,
                    "negligibly better" | "unsure" | "negligibly better / unsure" | "negligibly better/unsure" => Rating::NegligiblyBetter,
                    _ => match k.parse::<i64>() {
                        Ok(i) => from_int(i)?,
                        Err(_) => {
                            return Err(format!("unknown rating `{s}` (significantly better, better, slightly better, negligibly better, unsure, or 3..0)"))
                        }
                    },
                };
                Ok(Some(r))
            }
            Some(other) => Err(format!("rating must be a string or an integer, not {other}")),
        }
    }
}

/// The margin m(rating) of the ranking loss (the paper's Table 27).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Margin {
    /// m = 0 for every pair (the plain binary ranking loss)
    None,
    /// significantly better 1, better 2/3, slightly better 1/3, negligibly better / unsure 0
    Small,
    /// significantly better 3, better 2, slightly better 1, negligibly better / unsure 0
    Large,
}

impl Margin {
    /// m(rating); a pair without a rating gets 0.
    pub fn of(self, r: Option<Rating>) -> f64 {
        let level = match r {
            None => return 0.0,
            Some(r) => r as u8 as f64,
        };
        match self {
            Margin::None => 0.0,
            Margin::Small => level / 3.0,
            Margin::Large => level,
        }
    }
}

/// The safety label of a pair of answers (the paper's three categories, and
/// the fourth that a label file can still hold).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SafetyCategory {
    ChosenSafeOtherUnsafe,
    BothSafe,
    BothUnsafe,
    ChosenUnsafeOtherSafe,
}

impl SafetyCategory {
    pub const ALL: [SafetyCategory; 4] =
        [SafetyCategory::ChosenSafeOtherUnsafe, SafetyCategory::BothSafe, SafetyCategory::BothUnsafe, SafetyCategory::ChosenUnsafeOtherSafe];

    pub fn of(chosen_safe: bool, rejected_safe: bool) -> Self {
        match (chosen_safe, rejected_safe) {
            (true, false) => SafetyCategory::ChosenSafeOtherUnsafe,
            (true, true) => SafetyCategory::BothSafe,
            (false, false) => SafetyCategory::BothUnsafe,
            (false, true) => SafetyCategory::ChosenUnsafeOtherSafe,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SafetyCategory::ChosenSafeOtherUnsafe => "chosen safe, other unsafe",
            SafetyCategory::BothSafe => "both safe",
            SafetyCategory::BothUnsafe => "both unsafe",
            SafetyCategory::ChosenUnsafeOtherSafe => "chosen unsafe, other safe",
        }
    }
}

/// One encoded pair: the two whole sequences a reward model scores.
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    /// prompt + chosen answer (ends with EOS for text records)
    pub chosen: Vec<u32>,
    /// prompt + rejected answer
    pub rejected: Vec<u32>,
    pub rating: Option<Rating>,
    pub safety: Option<SafetyCategory>,
    pub unsafe_prompt: Option<bool>,
}

/// A record before encoding.
#[derive(Clone, Debug, PartialEq)]
pub enum RawBody {
    /// a dialog ending with a user turn, and the two answers (messages
    /// ending with the assistant's)
    Text { prompt: Vec<Message>, chosen: Vec<Message>, rejected: Vec<Message> },
    /// token ids, used as they are
    Ids { prompt: Vec<u32>, chosen: Vec<u32>, rejected: Vec<u32> },
}

/// A parsed record: what it compares and its labels.
#[derive(Clone, Debug, PartialEq)]
pub struct RawPair {
    pub body: RawBody,
    pub rating: Option<Rating>,
    pub safety: Option<SafetyCategory>,
    pub unsafe_prompt: Option<bool>,
}

fn opt_bool(o: &serde_json::Map<String, Value>, keys: &[&str]) -> std::result::Result<Option<bool>, String> {
    for k in keys {
        match o.get(*k) {
            None | Some(Value::Null) => continue,
            Some(Value::Bool(b)) => return Ok(Some(*b)),
            Some(other) => return Err(format!("`{k}` must be true or false, not {other}")),
        }
    }
    Ok(None)
}

fn ids_of(o: &serde_json::Map<String, Value>, k: &str) -> std::result::Result<Vec<u32>, String> {
    let arr = o.get(k).ok_or(format!("no `{k}`"))?.as_array().ok_or(format!("`{k}` must be a list of token ids"))?;
    arr.iter()
        .enumerate()
        .map(|(i, x)| x.as_u64().filter(|&t| t <= u32::MAX as u64).map(|t| t as u32).ok_or(format!("`{k}`[{i}] = {x} is not a token id")))
        .collect()
}

/// An answer: a string, one message, or messages (the last the assistant's).
fn answer_of(v: &Value, k: &str) -> std::result::Result<Vec<Message>, String> {
    let msgs = match v {
        Value::String(s) => vec![Message::new(Role::Assistant, s.clone())],
        Value::Object(_) => {
            let role = v.get("role").or_else(|| v.get("from")).and_then(|r| r.as_str()).unwrap_or("assistant");
            let role = Role::parse(role).ok_or(format!("`{k}` has unknown role `{role}`"))?;
            vec![Message::new(role, text_of(v).ok_or(format!("`{k}` has no content/value"))?)]
        }
        Value::Array(_) => parse_messages(v).map_err(|e| format!("`{k}`: {e}"))?,
        _ => return Err(format!("`{k}` must be a string, a message or a list of messages")),
    };
    match msgs.last() {
        None => Err(format!("`{k}` is empty")),
        Some(m) if m.role != Role::Assistant => Err(format!("`{k}` must end with the assistant's answer")),
        Some(m) if m.content.trim().is_empty() => Err(format!("`{k}` is an empty response")),
        Some(_) => Ok(msgs),
    }
}

/// A prompt: a string (one user message) or a list of messages.
pub fn prompt_of(v: &Value) -> std::result::Result<Vec<Message>, String> {
    match v {
        Value::String(s) => Ok(vec![Message::new(Role::User, s.clone())]),
        other => parse_messages(other),
    }
}

/// One record → a pair (see the module header for the formats).
pub fn parse_pair(v: &Value) -> std::result::Result<RawPair, String> {
    let o = v.as_object().ok_or("a record must be a JSON object")?;
    let rating = Rating::parse(o.get("rating"))?;
    let unsafe_prompt = opt_bool(o, &["unsafe_prompt"])?;
    let cs = opt_bool(o, &["chosen_safe", "safe_chosen"])?;
    let rs = opt_bool(o, &["rejected_safe", "safe_rejected"])?;
    let safety = match (cs, rs) {
        (Some(c), Some(r)) => Some(SafetyCategory::of(c, r)),
        (None, None) => None,
        _ => return Err("a safety label needs both `chosen_safe` and `rejected_safe`".into()),
    };
    let is_ids = ["prompt_ids", "chosen_ids", "rejected_ids"].iter().any(|k| o.contains_key(*k));
    let body = if is_ids {
        let (prompt, chosen, rejected) = (ids_of(o, "prompt_ids")?, ids_of(o, "chosen_ids")?, ids_of(o, "rejected_ids")?);
        for (k, r) in [("chosen_ids", &chosen), ("rejected_ids", &rejected)] {
            if r.is_empty() {
                return Err(format!("`{k}` is an empty response"));
            }
        }
        RawBody::Ids { prompt, chosen, rejected }
    } else {
        let (c, r) = match (o.get("chosen"), o.get("rejected")) {
            (Some(c), Some(r)) => (c, r),
            (None, _) => return Err("no `chosen` answer".into()),
            (_, None) => return Err("no `rejected` answer".into()),
        };
        let explicit = if let Some(p) = o.get("prompt") {
            Some(prompt_of(p).map_err(|e| format!("`prompt`: {e}"))?)
        } else if let Some(m) = o.get("messages") {
            Some(parse_messages(m).map_err(|e| format!("`messages`: {e}"))?)
        } else if let Some(c) = o.get("conversations") {
            let mut d = parse_messages(c).map_err(|e| format!("`conversations`: {e}"))?;
            if let Some(sys) = o.get("system").and_then(|s| s.as_str()) {
                if !sys.is_empty() && d.first().map(|m| m.role) != Some(Role::System) {
                    d.insert(0, Message::new(Role::System, sys));
                }
            }
            Some(d)
        } else if let Some(ins) = o.get("instruction").and_then(|x| x.as_str()) {
            let input = o.get("input").and_then(|x| x.as_str()).unwrap_or("");
            Some(vec![Message::new(Role::User, if input.trim().is_empty() { ins.to_string() } else { format!("{ins}\n\n{input}") })])
        } else {
            None
        };
        let (prompt, chosen, rejected) = match explicit {
            Some(p) => (p, answer_of(c, "chosen")?, answer_of(r, "rejected")?),
            None => {
                // TRL's implicit prompt: both are whole dialogs sharing their start
                let (Value::Array(_), Value::Array(_)) = (c, r) else {
                    return Err("no prompt: give `prompt`, `messages`, `conversations` or `instruction` (or whole dialogs as `chosen`/`rejected`)".into());
                };
                let (dc, dr) = (answer_of(c, "chosen")?, answer_of(r, "rejected")?);
                let common = dc.iter().zip(&dr).take_while(|(a, b)| a == b).count();
                let mut split = common.min(dc.len() - 1).min(dr.len() - 1);
                // the answers start at an assistant turn
                while split > 0 && dc[split].role != Role::Assistant {
                    split -= 1;
                }
                (dc[..split].to_vec(), dc[split..].to_vec(), dr[split..].to_vec())
            }
        };
        if prompt.last().map(|m| m.role) != Some(Role::User) {
            return Err("the prompt must end with a user message".into());
        }
        RawBody::Text { prompt, chosen, rejected }
    };
    Ok(RawPair { body, rating, safety, unsafe_prompt })
}

/// Every record of a JSON Lines file or a JSON array file, with its number
/// as errors name it ("line N" or "record N").
pub fn read_records(path: &Path, hint: &str) -> Result<Vec<(String, Value)>> {
    let bad = |msg: String| TrainError::BadFile { path: path.to_path_buf(), msg, hint: hint.to_string() };
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(trimmed).map_err(|e| bad(format!("not a valid JSON array: {e}")))?;
        let arr = v.as_array().cloned().unwrap_or_default();
        return Ok(arr.into_iter().enumerate().map(|(i, r)| (format!("record {}", i + 1), r)).collect());
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| bad(format!("line {}: not valid JSON: {e}", i + 1)))?;
        out.push((format!("line {}", i + 1), v));
    }
    Ok(out)
}

const PAIR_HINT: &str =
    "a pair is {\"prompt\"|\"messages\"|\"conversations\", \"chosen\", \"rejected\", \"rating\"?} or {\"prompt_ids\", \"chosen_ids\", \"rejected_ids\"}";

/// The pairs of one file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PairSet {
    pub pairs: Vec<Pair>,
    /// records in the file
    pub records: usize,
    /// pairs dropped because a sequence is longer than `max_len`
    pub dropped: usize,
}

/// Encodes a dialog (prompt + answer) in the Llama-2-chat format.
fn encode_text(tok: &Tokenizer, prompt: &[Message], answer: &[Message]) -> std::result::Result<Vec<u32>, String> {
    let mut d = prompt.to_vec();
    d.extend_from_slice(answer);
    encode_dialog(tok, &d).map(|x| x.0).map_err(|e| e.to_string())
}

/// Reads and encodes every pair of `path`: text records with `tok` (an
/// error without one), token ids checked against `vocab`. Pairs with a
/// sequence longer than `max_len` are dropped and counted.
pub fn load_pairs(path: &Path, tok: Option<&Tokenizer>, vocab: usize, max_len: usize) -> Result<PairSet> {
    let recs = read_records(path, PAIR_HINT)?;
    let bad = |at: &str, msg: String, hint: &str| TrainError::BadFile { path: path.to_path_buf(), msg: format!("{at}: {msg}"), hint: hint.to_string() };
    let mut set = PairSet { records: recs.len(), ..Default::default() };
    for (at, v) in &recs {
        let raw = parse_pair(v).map_err(|m| bad(at, m, PAIR_HINT))?;
        let (chosen, rejected) = match raw.body {
            RawBody::Ids { prompt, chosen, rejected } => {
                if let Some(&t) = prompt.iter().chain(&chosen).chain(&rejected).find(|&&t| t as usize >= vocab) {
                    return Err(bad(
                        at,
                        format!("token id {t} is >= the vocabulary size {vocab}"),
                        "the ids were made with another tokenizer than this model's",
                    ));
                }
                let join = |r: &[u32]| prompt.iter().chain(r).copied().collect::<Vec<u32>>();
                (join(&chosen), join(&rejected))
            }
            RawBody::Text { prompt, chosen, rejected } => {
                let tok =
                    tok.ok_or_else(|| bad(at, "a text record needs a tokenizer".into(), "pass --tokenizer PATH (or keep tokenizer.model beside the model)"))?;
                let c = encode_text(tok, &prompt, &chosen).map_err(|m| bad(at, m, PAIR_HINT))?;
                let r = encode_text(tok, &prompt, &rejected).map_err(|m| bad(at, m, PAIR_HINT))?;
                (c, r)
            }
        };
        if chosen.len() > max_len || rejected.len() > max_len {
            set.dropped += 1;
            continue;
        }
        set.pairs.push(Pair { chosen, rejected, rating: raw.rating, safety: raw.safety, unsafe_prompt: raw.unsafe_prompt });
    }
    Ok(set)
}

/// Where a file of pairs comes from, for the paper's mixtures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// helpfulness comparisons (Meta Helpfulness)
    Helpful,
    /// safety comparisons (Meta Safety, Anthropic Harmless)
    Safety,
    /// other (open-source) comparisons
    Other,
}

impl Source {
    pub fn parse(s: &str) -> Option<Source> {
        match s {
            "helpful" | "helpfulness" => Some(Source::Helpful),
            "safety" | "harmless" => Some(Source::Safety),
            "other" | "open" | "open-source" => Some(Source::Other),
            _ => None,
        }
    }
}

/// Which reward model a mixture is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mix {
    /// all helpfulness pairs + as many drawn from safety and other pairs
    Helpfulness,
    /// all safety pairs + 10% of the mixture drawn from helpfulness and other pairs
    Safety,
}

/// What a mixture took from each source.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MixReport {
    pub helpful: usize,
    pub safety: usize,
    pub other: usize,
    /// pairs available beside the kept source that the recipe could draw from
    pub pool: usize,
    /// pairs the recipe asked to draw from the pool (more than `pool` when it is short)
    pub wanted: usize,
}

/// Builds the paper's mixture from labelled pairs (seeded, uniform draws
/// without replacement); the result is in a seeded random order.
pub fn mix(sets: Vec<(Source, Vec<Pair>)>, kind: Mix, seed: u64) -> Result<(Vec<Pair>, MixReport)> {
    let (keep_src, ratio) = match kind {
        // as many again: extra = 1.0 x kept
        Mix::Helpfulness => (Source::Helpful, 1.0),
        // kept = 90% of the mixture: extra = kept x 10/90
        Mix::Safety => (Source::Safety, 1.0 / 9.0),
    };
    let mut kept = Vec::new();
    let mut pool: Vec<(Source, Pair)> = Vec::new();
    for (src, pairs) in sets {
        if src == keep_src {
            kept.extend(pairs);
        } else {
            pool.extend(pairs.into_iter().map(|p| (src, p)));
        }
    }
    if kept.is_empty() {
        let label = if keep_src == Source::Helpful { "helpful" } else { "safety" };
        return Err(TrainError::Invalid(format!(
            "--mix {} needs {label} pairs; HINT: label the files, e.g. --data {label}=FILE",
            if kind == Mix::Helpfulness { "helpfulness" } else { "safety" }
        )));
    }
    let wanted = (kept.len() as f64 * ratio).round() as usize;
    let mut rng = Rng::derive(seed, "rm/mix");
    rng.shuffle(&mut pool);
    let mut rep = MixReport { pool: pool.len(), wanted, ..Default::default() };
    let count = |r: &mut MixReport, s: Source| match s {
        Source::Helpful => r.helpful += 1,
        Source::Safety => r.safety += 1,
        Source::Other => r.other += 1,
    };
    for _ in &kept {
        count(&mut rep, keep_src);
    }
    let mut out = kept;
    for (s, p) in pool.into_iter().take(wanted) {
        count(&mut rep, s);
        out.push(p);
    }
    rng.shuffle(&mut out);
    Ok((out, rep))
}

/// One micro-batch of pairs as one ragged batch of `2p` rows: the chosen
/// sequences in rows `0..p`, the rejected ones in rows `p..2p`, right-padded
/// with the pad id to the longest (`t`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PairBatch {
    /// positions per row
    pub t: usize,
    /// `(2p, t)` token ids
    pub tokens: Vec<u32>,
    /// `(2p)` valid tokens per row
    pub lens: Vec<u32>,
    /// `(p)` margin of each pair
    pub margins: Vec<f64>,
}

impl PairBatch {
    pub fn new(pairs: &[&Pair], margin: Margin, pad: u32) -> Self {
        let t = pairs.iter().map(|p| p.chosen.len().max(p.rejected.len())).max().unwrap_or(0);
        let rows = pairs.iter().map(|p| &p.chosen).chain(pairs.iter().map(|p| &p.rejected));
        let mut tokens = Vec::with_capacity(2 * pairs.len() * t);
        let mut lens = Vec::with_capacity(2 * pairs.len());
        for r in rows {
            tokens.extend_from_slice(r);
            tokens.extend(std::iter::repeat_n(pad, t - r.len()));
            lens.push(r.len() as u32);
        }
        PairBatch { t, tokens, lens, margins: pairs.iter().map(|p| margin.of(p.rating)).collect() }
    }

    /// Pairs in the batch.
    pub fn pairs(&self) -> usize {
        self.margins.len()
    }
}

/// Pairs in batches of `p`, epoch after epoch (training: a seeded order,
/// new each epoch, full batches only) or once in file order (validation:
/// the last batch may be smaller).
pub struct PairData {
    pub pairs: Vec<Pair>,
    pub p: usize,
    pub margin: Margin,
    pub pad: u32,
    /// None = the pairs' order is kept
    pub shuffle_seed: Option<u64>,
    /// one pass, then the data ends (validation)
    pub single_pass: bool,
    pos: DataPosition,
    order: Vec<usize>,
}

impl PairData {
    pub fn new(pairs: Vec<Pair>, p: usize, margin: Margin, pad: u32, shuffle_seed: Option<u64>, single_pass: bool) -> Result<Self> {
        if p == 0 {
            return Err(TrainError::Invalid("--batch-size must be positive".into()));
        }
        let mut d = PairData { pairs, p, margin, pad, shuffle_seed, single_pass, pos: DataPosition::default(), order: Vec::new() };
        if d.batches_per_epoch() == 0 {
            return Err(TrainError::Invalid(format!(
                "{} pairs make no batch of {p} pairs; HINT: use a smaller --batch-size, more data, or a larger --max-len",
                d.pairs.len()
            )));
        }
        d.build_epoch();
        Ok(d)
    }

    /// Batches in one pass (training: full batches only).
    pub fn batches_per_epoch(&self) -> usize {
        if self.single_pass {
            self.pairs.len().div_ceil(self.p)
        } else {
            self.pairs.len() / self.p
        }
    }

    /// Tokens of one pass over the pairs (both sequences of each).
    pub fn tokens(&self) -> usize {
        self.pairs.iter().map(|p| p.chosen.len() + p.rejected.len()).sum()
    }

    fn build_epoch(&mut self) {
        self.order = (0..self.pairs.len()).collect();
        if let Some(seed) = self.shuffle_seed {
            Rng::derive(seed, &format!("rm/epoch/{}", self.pos.pass)).shuffle(&mut self.order);
        }
    }
}

impl BatchSource<PairBatch> for PairData {
    fn next_batch(&mut self) -> Result<Option<PairBatch>> {
        if self.pos.window >= self.batches_per_epoch() {
            if self.single_pass {
                return Ok(None);
            }
            self.pos.pass += 1;
            self.pos.window = 0;
            self.build_epoch();
        }
        let start = self.pos.window * self.p;
        let end = (start + self.p).min(self.pairs.len());
        self.pos.window += 1;
        let sel: Vec<&Pair> = self.order[start..end].iter().map(|&i| &self.pairs[i]).collect();
        Ok(Some(PairBatch::new(&sel, self.margin, self.pad)))
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
            return Err(TrainError::Invalid(format!("data position {pos:?} is outside these pairs; HINT: resume with the same --data")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn margins_are_table_27() {
        let r = [Rating::SignificantlyBetter, Rating::Better, Rating::SlightlyBetter, Rating::NegligiblyBetter];
        let small: Vec<f64> = r.iter().map(|&x| Margin::Small.of(Some(x))).collect();
        let large: Vec<f64> = r.iter().map(|&x| Margin::Large.of(Some(x))).collect();
        assert_eq!(small, vec![1.0, 2.0 / 3.0, 1.0 / 3.0, 0.0]);
        assert_eq!(large, vec![3.0, 2.0, 1.0, 0.0]);
        assert!(r.iter().all(|&x| Margin::None.of(Some(x)) == 0.0));
        assert_eq!(Margin::Large.of(None), 0.0);
    }

    #[test]
    fn ratings_parse_names_and_numbers() {
        let p = |v: Value| Rating::parse(Some(&v));
        assert_eq!(p(json!("significantly better")), Ok(Some(Rating::SignificantlyBetter)));
        assert_eq!(p(json!("Slightly Better")), Ok(Some(Rating::SlightlyBetter)));
        assert_eq!(p(json!("unsure")), Ok(Some(Rating::NegligiblyBetter)));
        assert_eq!(p(json!(2)), Ok(Some(Rating::Better)));
        assert_eq!(p(json!(null)), Ok(None));
        assert!(p(json!("much better")).unwrap_err().contains("unknown rating"));
        assert!(p(json!(4)).is_err());
        assert!(p(json!(1.5)).is_err());
    }

    #[test]
    fn record_formats() {
        // TRL standard
        let r = parse_pair(&json!({"prompt": "hi", "chosen": "a", "rejected": "b", "rating": "better"})).unwrap();
        let RawBody::Text { prompt, chosen, rejected } = r.body else { panic!() };
        assert_eq!((prompt.len(), chosen[0].content.as_str(), rejected[0].content.as_str()), (1, "a", "b"));
        assert_eq!(r.rating, Some(Rating::Better));
        // LLaMA-Factory sharegpt pair
        let r = parse_pair(&json!({"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "a"},
                                   "rejected": {"from": "gpt", "value": "b"}, "system": "be nice"}))
        .unwrap();
        let RawBody::Text { prompt, .. } = r.body else { panic!() };
        assert_eq!(prompt[0].role, Role::System);
        // TRL implicit prompt
        let d = |a: &str| json!([{"role": "user", "content": "q"}, {"role": "assistant", "content": a}]);
        let r = parse_pair(&json!({"chosen": d("a"), "rejected": d("b")})).unwrap();
        let RawBody::Text { prompt, chosen, .. } = r.body else { panic!() };
        assert_eq!((prompt.len(), chosen.len(), chosen[0].content.as_str()), (1, 1, "a"));
        // token ids and safety labels
        let r = parse_pair(&json!({"prompt_ids": [1, 5], "chosen_ids": [6, 2], "rejected_ids": [7, 2], "chosen_safe": true, "rejected_safe": false})).unwrap();
        assert_eq!(r.body, RawBody::Ids { prompt: vec![1, 5], chosen: vec![6, 2], rejected: vec![7, 2] });
        assert_eq!(r.safety, Some(SafetyCategory::ChosenSafeOtherUnsafe));
        // bad records
        for (v, want) in [
            (json!({"prompt": "q", "chosen": "a"}), "no `rejected`"),
            (json!({"prompt": "q", "rejected": "a"}), "no `chosen`"),
            (json!({"prompt": "q", "chosen": "  ", "rejected": "b"}), "empty response"),
            (json!({"prompt_ids": [1], "chosen_ids": [], "rejected_ids": [3]}), "empty response"),
            (json!({"prompt": "q", "chosen": "a", "rejected": "b", "rating": "meh"}), "unknown rating"),
            (json!({"chosen": "a", "rejected": "b"}), "no prompt"),
            (json!({"prompt": "q", "chosen": "a", "rejected": "b", "chosen_safe": true}), "both"),
        ] {
            let e = parse_pair(&v).unwrap_err();
            assert!(e.contains(want), "{v}: {e}");
        }
    }

    fn pair(n: usize, tag: u32) -> Pair {
        Pair { chosen: vec![tag; n], rejected: vec![tag; n + 1], rating: None, safety: None, unsafe_prompt: None }
    }

    #[test]
    fn batches_put_chosen_first_and_pad_right() {
        let (a, b) = (pair(2, 5), pair(3, 6));
        let mb = PairBatch::new(&[&a, &b], Margin::Small, 0);
        assert_eq!(mb.t, 4);
        assert_eq!(mb.lens, vec![2, 3, 3, 4]);
        assert_eq!(&mb.tokens[..4], &[5, 5, 0, 0]);
        assert_eq!(&mb.tokens[8..12], &[5, 5, 5, 0]);
        assert_eq!(mb.margins, vec![0.0, 0.0]);
    }

    #[test]
    fn mixtures_follow_the_recipe() {
        let mk = |n: usize, tag: u32| (0..n).map(|i| pair(1 + i % 3, tag)).collect::<Vec<_>>();
        let sets = || vec![(Source::Helpful, mk(100, 1)), (Source::Safety, mk(300, 2)), (Source::Other, mk(50, 3))];
        let (h, rep) = mix(sets(), Mix::Helpfulness, 1).unwrap();
        assert_eq!((h.len(), rep.helpful, rep.safety + rep.other), (200, 100, 100));
        let (s, rep) = mix(sets(), Mix::Safety, 1).unwrap();
        assert_eq!((s.len(), rep.safety, rep.helpful + rep.other), (333, 300, 33));
        assert_eq!(mix(sets(), Mix::Safety, 1).unwrap().0, s, "seeded");
        assert!(mix(vec![(Source::Other, mk(5, 3))], Mix::Safety, 1).is_err());
    }
}
