//! Preference collection, as the paper's annotation (PAPER.md section 5):
//! for each prompt, two answers sampled from different model variants (or
//! one model at two temperatures), labelled by the synthetic annotator
//! ([`super::annotator::label_pair`]: the preferred answer drawn with
//! Bradley-Terry noise, the rating from the gold gap, a safety label per
//! answer).
//!
//! Which annotation a prompt gets: prompts tagged unsafe and borderline
//! prompts go to safety annotation (safety first) and to the safety file;
//! every other prompt to helpfulness annotation and the helpfulness file,
//! so `train-tool rm train --mix helpfulness|safety --data helpful=F
//! safety=F` builds the paper's mixtures.
//!
//! Records are the reward-model trainer's preference format, one JSON line
//! each: `{"prompt", "chosen", "rejected", "rating", "unsafe_prompt",
//! "chosen_safe", "rejected_safe"}` and, when the answers were generated
//! here, `"prompt_ids", "chosen_ids", "rejected_ids"`: the exact sequences
//! the policy produced (EOS only where it was generated), which the trainer
//! then scores instead of re-encoding the text (the text stays for people
//! to read). A pair of identical answers teaches nothing and is dropped; a
//! text-only pair with an empty answer (the trainer rejects those) too.
//! Both are counted in the report.
//!
//! Public items: [`Variant`], [`PreferenceSet`], [`PreferenceReport`],
//! [`label_answers`], [`sample_pairs`], [`collect_preferences`], [`pair_record`],
//! [`write_jsonl`].

use super::annotator::{judge, label_pair, Annotation, Bucket, PairLabel};
use super::models::{generate_answers, GenAnswer, GenSettings};
use super::prompts::{EvalPrompt, BORDERLINE};
use crate::error::{Result, TrainError};
use llama2_model::generate::Sampling;
use llama2_model::tokenizer::Tokenizer;
use llama2_model::Model;
use llama2_runtime::rng::Rng;
use llama2_runtime::Backend;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// A model variant answers are sampled from.
pub struct Variant<'a, B: Backend> {
    pub name: String,
    pub model: &'a Model<B>,
    pub sampling: Sampling,
}

/// What a collection produced and how its labels came out.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct PreferenceReport {
    /// pairs labelled (both files)
    pub pairs: usize,
    pub helpful_pairs: usize,
    pub safety_pairs: usize,
    /// pairs dropped because the two answers were identical
    pub dropped_identical: usize,
    /// text-only pairs dropped because an answer was empty
    pub dropped_empty: usize,
    /// pairs per rating bucket
    pub by_rating: BTreeMap<String, usize>,
    /// safety pairs per safety category (chosen safe & other unsafe, both safe, both unsafe, chosen unsafe & other safe)
    pub by_safety_category: BTreeMap<String, usize>,
    /// share of labels that agree with the sign of the gold gap (the rest is Bradley-Terry noise)
    pub agreement_with_gold: f64,
}

/// Labelled pairs, split by annotation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PreferenceSet {
    pub helpful: Vec<Value>,
    pub safety: Vec<Value>,
    pub report: PreferenceReport,
}

fn safety_category(chosen_safe: bool, rejected_safe: bool) -> &'static str {
    match (chosen_safe, rejected_safe) {
        (true, false) => "chosen safe, other unsafe",
        (true, true) => "both safe",
        (false, false) => "both unsafe",
        (false, true) => "chosen unsafe, other safe",
    }
}

/// The preference record of a labelled pair (see the module header).
pub fn pair_record(p: &EvalPrompt, a: &GenAnswer, b: &GenAnswer, l: &PairLabel) -> Value {
    let (c, r, cs, rs) = if l.a_preferred { (a, b, l.safe_a, l.safe_b) } else { (b, a, l.safe_b, l.safe_a) };
    let mut v = json!({
        "prompt": p.text, "chosen": c.text, "rejected": r.text, "rating": l.rating.name(),
        "unsafe_prompt": p.unsafe_prompt, "chosen_safe": cs, "rejected_safe": rs,
    });
    let with_ids = [a, b].iter().all(|x| !x.ids.is_empty() && !x.prompt_ids.is_empty()) && a.prompt_ids == b.prompt_ids;
    if let (true, Value::Object(m)) = (with_ids, &mut v) {
        m.insert("prompt_ids".into(), json!(c.prompt_ids));
        m.insert("chosen_ids".into(), json!(c.ids));
        m.insert("rejected_ids".into(), json!(r.ids));
    }
    v
}

/// Labels given answer pairs (`a[i]`, `b[i]` to `prompts[i]`), the
/// Bradley-Terry draws from the stream `rlhf/labels` of `seed`, in prompt
/// order.
pub fn label_answers(prompts: &[EvalPrompt], a: &[GenAnswer], b: &[GenAnswer], seed: u64) -> Result<PreferenceSet> {
    if prompts.len() != a.len() || prompts.len() != b.len() {
        return Err(TrainError::Invalid(format!("{} prompts but {} and {} answers", prompts.len(), a.len(), b.len())));
    }
    let mut rng = Rng::derive(seed, "rlhf/labels");
    let mut out = PreferenceSet::default();
    let mut agree = 0usize;
    for bk in Bucket::ALL {
        out.report.by_rating.insert(bk.name().into(), 0);
    }
    for ((p, x), y) in prompts.iter().zip(a).zip(b) {
        let ids_known = !x.ids.is_empty() && !y.ids.is_empty();
        if (ids_known && x.ids == y.ids) || (!ids_known && x.text == y.text && x.eos == y.eos) {
            out.report.dropped_identical += 1;
            continue;
        }
        if !ids_known && (x.text.trim().is_empty() || y.text.trim().is_empty()) {
            out.report.dropped_empty += 1;
            continue;
        }
        let safety = p.unsafe_prompt || p.category == BORDERLINE;
        let kind = if safety { Annotation::Safety } else { Annotation::Helpfulness };
        let (gx, gy) = (judge(&p.text, p.unsafe_prompt, &x.text, x.eos), judge(&p.text, p.unsafe_prompt, &y.text, y.eos));
        let l = label_pair(&gx, &gy, kind, &mut rng);
        agree += l.agrees_with_gold() as usize;
        *out.report.by_rating.entry(l.rating.name().into()).or_insert(0) += 1;
        let rec = pair_record(p, x, y, &l);
        if safety {
            let (cs, rs) = if l.a_preferred { (l.safe_a, l.safe_b) } else { (l.safe_b, l.safe_a) };
            *out.report.by_safety_category.entry(safety_category(cs, rs).into()).or_insert(0) += 1;
            out.safety.push(rec);
        } else {
            out.helpful.push(rec);
        }
    }
    let r = &mut out.report;
    (r.helpful_pairs, r.safety_pairs) = (out.helpful.len(), out.safety.len());
    r.pairs = r.helpful_pairs + r.safety_pairs;
    r.agreement_with_gold = if r.pairs == 0 { 0.0 } else { agree as f64 / r.pairs as f64 };
    Ok(out)
}

/// [`sample_pairs`], then [`label_answers`].
pub fn collect_preferences<B: Backend>(
    be: &B,
    tok: &Tokenizer,
    variants: &[Variant<B>],
    prompts: &[EvalPrompt],
    max_new: usize,
    seed: u64,
) -> Result<PreferenceSet> {
    let (a, b) = sample_pairs(be, tok, variants, prompts, max_new, seed)?;
    label_answers(prompts, &a, &b, seed)
}

/// Two answers per prompt from two different variants: an unordered pair
/// of variants drawn uniformly per prompt from the stream `rlhf/variants`;
/// the answers of variant v from [`generate_answers`] with the tag
/// `annotate/<v>`. Returns (answers a, answers b), one of each per prompt.
pub fn sample_pairs<B: Backend>(
    be: &B,
    tok: &Tokenizer,
    variants: &[Variant<B>],
    prompts: &[EvalPrompt],
    max_new: usize,
    seed: u64,
) -> Result<(Vec<GenAnswer>, Vec<GenAnswer>)> {
    let v = variants.len();
    if v < 2 {
        return Err(TrainError::Invalid(format!(
            "preference pairs need at least 2 model variants, got {v}; HINT: one model at two temperatures is two variants"
        )));
    }
    let mut rng = Rng::derive(seed, "rlhf/variants");
    // per prompt: (variant of answer a, variant of answer b)
    let pick: Vec<(usize, usize)> = prompts
        .iter()
        .map(|_| {
            let i = rng.below(v as u64) as usize;
            let j = (i + 1 + rng.below(v as u64 - 1) as usize) % v;
            (i, j)
        })
        .collect();
    let mut slots: Vec<[Option<GenAnswer>; 2]> = vec![[None, None]; prompts.len()];
    for (vi, var) in variants.iter().enumerate() {
        // (prompt, slot) pairs this variant answers, in prompt order
        let todo: Vec<(usize, usize)> =
            pick.iter().enumerate().flat_map(|(k, &(i, j))| [(i == vi).then_some((k, 0)), (j == vi).then_some((k, 1))]).flatten().collect();
        if todo.is_empty() {
            continue;
        }
        let ps: Vec<EvalPrompt> = todo.iter().map(|&(k, _)| prompts[k].clone()).collect();
        let g = GenSettings { max_new, sampling: var.sampling, seed };
        let ans = generate_answers(be, var.model, tok, &ps, &g, &format!("annotate/{vi}"))?;
        for (&(k, s), a) in todo.iter().zip(ans) {
            slots[k][s] = Some(a);
        }
    }
    let (mut a, mut b) = (Vec::with_capacity(prompts.len()), Vec::with_capacity(prompts.len()));
    for [x, y] in slots {
        match (x, y) {
            (Some(x), Some(y)) => {
                a.push(x);
                b.push(y);
            }
            _ => return Err(TrainError::Invalid("internal: a prompt was left without two answers".into())),
        }
    }
    Ok((a, b))
}

/// Writes records as JSON Lines, atomically.
pub fn write_jsonl(path: &Path, recs: &[Value]) -> Result<()> {
    let mut s = String::new();
    for r in recs {
        s += &r.to_string();
        s.push('\n');
    }
    Ok(llama2_model::weights::write_atomic(path, s.as_bytes())?)
}
