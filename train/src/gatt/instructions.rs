//! GAtt instructions: constraint families read from a data file, random
//! combinations of them, and the shortened form (PAPER.md section 7:
//! "Instructions are built by randomly combining synthetic constraints
//! (hobbies, language, public figure); half of the time the instruction is
//! shortened ("Always act as Napoleon from now" -> "Figure: Napoleon")").
//!
//! The file (JSON; `data/gatt/instructions.json` is the shipped one):
//!
//! ```json
//! {"min_constraints": 1, "max_constraints": 2, "short_fraction": 0.5,
//!  "families": [
//!    {"name": "figure", "long": "Always act as {x} from now.", "short": "Figure: {x}", "values": ["Napoleon"]},
//!    {"name": "end_word", "check": "end_word", "long": "End every answer with the word {x}.", "short": "Last word: {x}", "values": ["amen"]}]}
//! ```
//!
//! `{x}` is replaced by a value of the family's list (a family without
//! `{x}` in its templates, such as capitals, takes `"values": [""]`). The
//! `case` check takes the values `capital` and `small` (capitals only, or
//! no capital letter): one family with two opposite values, so that a model
//! must read the instruction to obey it, and no instruction asks for both. A
//! family with `check` can be verified in an answer by a program
//! ([`Check`], see [`super::checks`]); the paper's families (hobby,
//! language, public figure) have none. An instruction combines
//! `min..=max` distinct families, each with a value drawn from its own
//! list only; its text is the long forms joined by spaces, or, with
//! probability `short_fraction` (one draw per instruction), the short
//! forms joined by "; ".
//!
//! Public items: [`Family`], [`InstructionSet`], [`Constraint`],
//! [`Instruction`], [`Check`], [`load_instructions`].

use crate::error::{Result, TrainError};
use llama2_runtime::rng::Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What a program can verify in an answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Check {
    /// the answer's last word is this word (case-insensitive, punctuation ignored)
    EndWord(String),
    /// the answer has at least one and at most this many words
    MaxWords(usize),
    /// the answer contains this word (case-insensitive, as a whole word)
    Mention(String),
    /// the answer has letters and none of them is lowercase
    Capitals,
    /// the answer has letters and none of them is uppercase
    Lowercase,
}

/// One constraint family of the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Family {
    pub name: String,
    /// `end_word`, `max_words`, `mention`, `capitals`, `lowercase` or `case`
    /// (value `capital` or `small`); absent: not checkable
    #[serde(default)]
    pub check: Option<String>,
    /// the full sentence, `{x}` marks the value
    pub long: String,
    /// the shortened form
    pub short: String,
    pub values: Vec<String>,
}

/// The families and how they are combined.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstructionSet {
    #[serde(default = "one")]
    pub min_constraints: usize,
    #[serde(default = "two")]
    pub max_constraints: usize,
    /// probability that an instruction is written in its short form
    #[serde(default = "half")]
    pub short_fraction: f64,
    pub families: Vec<Family>,
}

fn one() -> usize {
    1
}
fn two() -> usize {
    2
}
fn half() -> f64 {
    0.5
}

/// One constraint of an instruction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    pub family: String,
    pub value: String,
    /// None for the families no program can check
    pub check: Option<Check>,
}

/// A sampled instruction: its text and its constraints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instruction {
    pub text: String,
    pub short: bool,
    pub constraints: Vec<Constraint>,
}

impl Instruction {
    /// The constraints a program can check.
    pub fn checks(&self) -> impl Iterator<Item = (&str, &Check)> {
        self.constraints.iter().filter_map(|c| c.check.as_ref().map(|k| (c.family.as_str(), k)))
    }
}

fn invalid(path: &Path, msg: String) -> TrainError {
    TrainError::BadFile {
        path: path.to_path_buf(),
        msg,
        hint: "see data/gatt/instructions.json: {\"families\": [{\"name\", \"long\", \"short\", \"values\", \"check\"?}], \"min_constraints\"?, \"max_constraints\"?, \"short_fraction\"?}".into(),
    }
}

/// Reads and validates an instruction file; `only` keeps the named
/// families (all when empty; an unknown name is an error), and then an
/// instruction combines at most as many families as are kept.
pub fn load_instructions(path: &Path, only: &[String]) -> Result<InstructionSet> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let mut set: InstructionSet = serde_json::from_str(&text).map_err(|e| invalid(path, format!("not a valid instruction file: {e}")))?;
    if !only.is_empty() {
        if let Some(u) = only.iter().find(|n| !set.families.iter().any(|f| &f.name == *n)) {
            let names: Vec<&str> = set.families.iter().map(|f| f.name.as_str()).collect();
            return Err(invalid(path, format!("no family `{u}` (the file has {})", names.join(", "))));
        }
        set.families.retain(|f| only.contains(&f.name));
        // fewer families than the file's combination size: combine all of them at most
        set.max_constraints = set.max_constraints.min(set.families.len());
        set.min_constraints = set.min_constraints.min(set.max_constraints);
    }
    set.validate().map_err(|m| invalid(path, m))?;
    Ok(set)
}

impl InstructionSet {
    /// Checks the set: families, lists, checks and combination sizes.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.families.is_empty() {
            return Err("the instruction list is empty: no family".into());
        }
        for (i, f) in self.families.iter().enumerate() {
            if self.families[..i].iter().any(|g| g.name == f.name) {
                return Err(format!("family `{}` appears twice", f.name));
            }
            if f.values.is_empty() {
                return Err(format!("family `{}` has an empty value list", f.name));
            }
            if f.long.trim().is_empty() || f.short.trim().is_empty() {
                return Err(format!("family `{}` needs a long and a short form", f.name));
            }
            for v in &f.values {
                check_of(f.check.as_deref(), v).map_err(|m| format!("family `{}`: {m}", f.name))?;
            }
        }
        if self.min_constraints == 0 || self.min_constraints > self.max_constraints || self.max_constraints > self.families.len() {
            return Err(format!(
                "min_constraints {} and max_constraints {} must satisfy 1 <= min <= max <= {} (the number of families)",
                self.min_constraints,
                self.max_constraints,
                self.families.len()
            ));
        }
        if !(0.0..=1.0).contains(&self.short_fraction) {
            return Err(format!("short_fraction {} must be in [0, 1]", self.short_fraction));
        }
        Ok(())
    }

    /// Whether some family can be checked by a program.
    pub fn has_checkable(&self) -> bool {
        self.families.iter().any(|f| f.check.is_some())
    }

    /// One random instruction: `min..=max` distinct families in a random
    /// order, one value of each family's list, short form with probability
    /// `short_fraction`.
    pub fn sample(&self, rng: &mut Rng) -> Result<Instruction> {
        self.validate().map_err(TrainError::Invalid)?;
        let span = (self.max_constraints - self.min_constraints + 1) as u64;
        let k = self.min_constraints + rng.below(span) as usize;
        let mut order: Vec<usize> = (0..self.families.len()).collect();
        rng.shuffle(&mut order);
        let short = rng.next_f64() < self.short_fraction;
        let mut parts = Vec::with_capacity(k);
        let mut constraints = Vec::with_capacity(k);
        for &fi in &order[..k] {
            let f = &self.families[fi];
            let value = f.values[rng.below(f.values.len() as u64) as usize].clone();
            let template = if short { &f.short } else { &f.long };
            parts.push(template.replace("{x}", &value));
            let check = check_of(f.check.as_deref(), &value).map_err(TrainError::Invalid)?;
            constraints.push(Constraint { family: f.name.clone(), value, check });
        }
        let text = if short { parts.join("; ") } else { parts.join(" ") };
        Ok(Instruction { text, short, constraints })
    }

    /// `n` instructions from the stream `Rng::derive(seed, tag)`; with
    /// `checkable`, only instructions with at least one checkable constraint.
    pub fn sample_n(&self, n: usize, seed: u64, tag: &str, checkable: bool) -> Result<Vec<Instruction>> {
        if checkable && !self.has_checkable() {
            return Err(TrainError::Invalid(
                "no family of the instruction list can be checked; HINT: keep at least one of end_word, max_words, mention, capitals, lowercase, case".into(),
            ));
        }
        let mut rng = Rng::derive(seed, tag);
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let i = self.sample(&mut rng)?;
            if !checkable || i.checks().next().is_some() {
                out.push(i);
            }
        }
        Ok(out)
    }
}

/// The check of a family kind for one value.
fn check_of(kind: Option<&str>, value: &str) -> std::result::Result<Option<Check>, String> {
    let word = |v: &str| {
        let w = v.trim();
        if w.is_empty() || w.split_whitespace().count() != 1 || !w.chars().any(|c| c.is_alphanumeric()) {
            Err(format!("`{v}` must be one word"))
        } else {
            Ok(w.to_string())
        }
    };
    Ok(match kind {
        None => None,
        Some("end_word") => Some(Check::EndWord(word(value)?)),
        Some("mention") => Some(Check::Mention(word(value)?)),
        Some("max_words") => match value.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Some(Check::MaxWords(n)),
            _ => return Err(format!("`{value}` must be a whole number >= 1 (max_words)")),
        },
        Some("capitals") => Some(Check::Capitals),
        Some("lowercase") => Some(Check::Lowercase),
        Some("case") => match value.trim() {
            "capital" => Some(Check::Capitals),
            "small" => Some(Check::Lowercase),
            _ => return Err(format!("`{value}` must be `capital` or `small` (case)")),
        },
        Some(other) => return Err(format!("unknown check `{other}` (end_word, max_words, mention, capitals, lowercase, case)")),
    })
}
