//! `train-tool annotate ...`: the synthetic annotator and the safety data
//! (library: [`llama2_train::eval`]):
//!
//! - `prompts`: the built-in unsafe and borderline prompts split into
//!   train and held-out files, and SFT safety demonstrations;
//! - `score`: the annotator's judgement of given answers;
//! - `pairs`: preference pairs labelled like the paper's annotators, from
//!   two model variants (or two temperatures of one model) or from given
//!   answer pairs, written as the reward-model trainer's `helpful.jsonl`
//!   and `safety.jsonl`.

use crate::cmd::evaluate::{load_policy, load_prompts, parse_fraction, GenFlags};
use crate::device::{dispatch, DeviceOpts, Job};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use llama2_runtime::Backend;
use llama2_train::eval::annotator::{judge, Bucket};
use llama2_train::eval::models::GenAnswer;
use llama2_train::eval::preferences::{label_answers, sample_pairs, write_jsonl, PreferenceSet, Variant};
use llama2_train::eval::prompts::{safety_demonstrations, safety_prompts, write_dialogs, write_prompts, EvalPrompt};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Args, Clone, Debug)]
pub struct AnnotateArgs {
    #[command(subcommand)]
    pub cmd: AnnotateCmd,
}

#[derive(Subcommand, Clone, Debug)]
pub enum AnnotateCmd {
    /// Write the safety prompts (train and held-out) and the SFT safety demonstrations
    Prompts(PromptsArgs),
    /// The annotator's judgement of answers: gold helpfulness, refusal, safety
    Score(ScoreArgs),
    /// Label preference pairs (helpful.jsonl, safety.jsonl) from two model variants or given answers
    Pairs(PairsArgs),
}

#[derive(Args, Clone, Debug)]
pub struct PromptsArgs {
    /// Output directory: safety_train.jsonl, safety_held_out.jsonl, safety_sft.jsonl
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the split and of the demonstrations
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Held-out share of each category
    #[arg(long, default_value_t = 0.25, value_parser = parse_fraction)]
    pub held_out_fraction: f64,
    /// SFT safety demonstrations (refusals of unsafe training prompts)
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u32).range(0..=100000))]
    pub demos: u32,
}

#[derive(Args, Clone, Debug)]
pub struct ScoreArgs {
    /// JSON Lines: {"prompt", "answer" (or "response"), optional "eos" (default true), optional "unsafe"}
    #[arg(long)]
    pub input: PathBuf,
}

#[derive(Args, Clone, Debug)]
pub struct PairsArgs {
    /// Prompt files (JSON Lines or JSON arrays; optional "unsafe" and "category" tags): answers are sampled
    #[arg(long, num_args = 1.., conflicts_with = "input")]
    pub prompts: Vec<PathBuf>,
    /// Answer pairs instead of models, JSON Lines: {"prompt", "answer_a", "answer_b", optional "eos_a", "eos_b", "unsafe", "category"}
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// First model variant (a causal LM directory)
    #[arg(long, required_unless_present = "input")]
    pub model_a: Option<PathBuf>,
    /// Its sampling temperature (default: --temperature)
    #[arg(long, value_parser = crate::flags::parse_temperature)]
    pub temperature_a: Option<f32>,
    /// Second model variant (default: --model-a, then the temperatures must differ)
    #[arg(long)]
    pub model_b: Option<PathBuf>,
    /// Its sampling temperature (default: --temperature)
    #[arg(long, value_parser = crate::flags::parse_temperature)]
    pub temperature_b: Option<f32>,
    /// Tokenizer (default: the one beside --model-a)
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Records hold the text only (no prompt_ids / chosen_ids / rejected_ids)
    #[arg(long)]
    pub text_only: bool,
    #[command(flatten)]
    pub gen: GenFlags,
    /// Output directory: helpful.jsonl, safety.jsonl, annotation.json
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

fn run_prompts(a: PromptsArgs) -> Result<()> {
    let s = safety_prompts(a.seed, a.held_out_fraction)?;
    let demos = safety_demonstrations(&s.train, a.demos as usize, a.seed)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    write_prompts(&a.out.join("safety_train.jsonl"), &s.train)?;
    write_prompts(&a.out.join("safety_held_out.jsonl"), &s.held_out)?;
    write_dialogs(&a.out.join("safety_sft.jsonl"), &demos)?;
    let count = |v: &[EvalPrompt], u: bool| v.iter().filter(|p| p.unsafe_prompt == u).count();
    let j = json!({
        "train": {"unsafe": count(&s.train, true), "borderline": count(&s.train, false)},
        "held_out": {"unsafe": count(&s.held_out, true), "borderline": count(&s.held_out, false)},
        "demonstrations": demos.len(), "seed": a.seed, "held_out_fraction": a.held_out_fraction, "out": a.out,
    });
    eprintln!(
        "wrote {}: safety_train.jsonl ({} prompts), safety_held_out.jsonl ({}), safety_sft.jsonl ({} dialogs)",
        a.out.display(),
        s.train.len(),
        s.held_out.len(),
        demos.len()
    );
    println!("{j}");
    Ok(())
}

fn bad_line(path: &Path, line: usize, msg: &str, hint: &str) -> anyhow::Error {
    anyhow::anyhow!("{}: line {line}: {msg}; HINT: {hint}", path.display())
}

fn opt_bool(o: &Value, k: &str, default: bool) -> std::result::Result<bool, String> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!("`{k}` must be true or false, not {other}")),
    }
}

fn str_field<'a>(o: &'a Value, keys: &[&str]) -> std::result::Result<&'a str, String> {
    for k in keys {
        if let Some(v) = o.get(*k) {
            return v.as_str().ok_or(format!("`{k}` must be a string"));
        }
    }
    Err(format!("no `{}`", keys.join("` or `")))
}

/// The non-empty lines of a JSON Lines file, parsed.
fn json_lines(path: &Path, hint: &str) -> Result<Vec<(usize, Value)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).map_err(|e| bad_line(path, i + 1, &format!("not valid JSON ({e})"), hint))?;
        if !v.is_object() {
            return Err(bad_line(path, i + 1, "a record must be a JSON object", hint));
        }
        out.push((i + 1, v));
    }
    if out.is_empty() {
        bail!("{}: no records; HINT: {hint}", path.display());
    }
    Ok(out)
}

fn run_score(a: ScoreArgs) -> Result<()> {
    const HINT: &str = "lines are {\"prompt\": \"...\", \"answer\": \"...\", \"eos\": true, \"unsafe\": false}";
    let mut out = String::new();
    for (n, v) in json_lines(&a.input, HINT)? {
        let f = || -> std::result::Result<Value, String> {
            let p = str_field(&v, &["prompt"])?;
            let ans = str_field(&v, &["answer", "response"])?;
            let g = judge(p, opt_bool(&v, "unsafe", false)?, ans, opt_bool(&v, "eos", true)?);
            serde_json::to_value(g).map_err(|e| e.to_string())
        };
        out += &f().map_err(|m| bad_line(&a.input, n, &m, HINT))?.to_string();
        out.push('\n');
    }
    print!("{out}");
    Ok(())
}

/// The label report as a table.
fn pairs_table(s: &PreferenceSet) -> String {
    let r = &s.report;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{} pairs: {} helpfulness, {} safety; dropped {} identical, {} empty; labels agreeing with the gold gap: {:.1}%",
        r.pairs,
        r.helpful_pairs,
        r.safety_pairs,
        r.dropped_identical,
        r.dropped_empty,
        100.0 * r.agreement_with_gold
    );
    t += "| rating | pairs |\n|---|---|\n";
    for b in Bucket::ALL {
        let _ = writeln!(t, "| {} | {} |", b.name(), r.by_rating.get(b.name()).copied().unwrap_or(0));
    }
    if !r.by_safety_category.is_empty() {
        t += "| safety category | pairs |\n|---|---|\n";
        for (k, v) in &r.by_safety_category {
            let _ = writeln!(t, "| {k} | {v} |");
        }
    }
    t
}

fn write_pairs(out: &Path, s: &PreferenceSet, extra: Value) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_jsonl(&out.join("helpful.jsonl"), &s.helpful)?;
    write_jsonl(&out.join("safety.jsonl"), &s.safety)?;
    let mut j = serde_json::to_value(&s.report)?;
    if let (Value::Object(m), Value::Object(x)) = (&mut j, extra) {
        m.extend(x);
    }
    llama2_model::weights::write_atomic(&out.join("annotation.json"), serde_json::to_string_pretty(&j)?.as_bytes())?;
    eprint!("{}", pairs_table(s));
    eprintln!("wrote {} (helpful.jsonl, safety.jsonl, annotation.json)", out.display());
    println!("{j}");
    Ok(())
}

fn pairs_from_input(a: &PairsArgs, input: &Path) -> Result<()> {
    const HINT: &str = "lines are {\"prompt\", \"answer_a\", \"answer_b\"} with optional \"eos_a\", \"eos_b\" (default true), \"unsafe\", \"category\"";
    let (mut ps, mut xa, mut xb) = (Vec::new(), Vec::new(), Vec::new());
    for (n, v) in json_lines(input, HINT)? {
        let f = || -> std::result::Result<(EvalPrompt, GenAnswer, GenAnswer), String> {
            let category = match v.get("category") {
                None | Some(Value::Null) => String::new(),
                Some(c) => c.as_str().ok_or("`category` must be a string")?.to_string(),
            };
            let p = EvalPrompt { text: str_field(&v, &["prompt"])?.to_string(), unsafe_prompt: opt_bool(&v, "unsafe", false)?, category };
            let x = GenAnswer::text(str_field(&v, &["answer_a"])?, opt_bool(&v, "eos_a", true)?);
            let y = GenAnswer::text(str_field(&v, &["answer_b"])?, opt_bool(&v, "eos_b", true)?);
            Ok((p, x, y))
        };
        let (p, x, y) = f().map_err(|m| bad_line(input, n, &m, HINT))?;
        ps.push(p);
        xa.push(x);
        xb.push(y);
    }
    let s = label_answers(&ps, &xa, &xb, a.gen.seed)?;
    write_pairs(&a.out, &s, json!({"input": input, "seed": a.gen.seed}))
}

struct PairsJob(PairsArgs);

impl Job for PairsJob {
    type Out = ();
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let a = self.0;
        if a.prompts.is_empty() {
            bail!("annotate pairs needs --prompts (answers are sampled from --model-a / --model-b) or --input (given answer pairs)");
        }
        let dir_a = a.model_a.clone().context("--model-a is required with --prompts")?;
        let prompts = load_prompts(&a.prompts)?;
        let (ta, tb) = (a.temperature_a.unwrap_or(a.gen.temperature), a.temperature_b.unwrap_or(a.gen.temperature));
        let dir_b = a.model_b.clone().unwrap_or_else(|| dir_a.clone());
        if dir_b == dir_a && ta == tb {
            bail!("both variants are {} at temperature {ta}; HINT: give --model-b, or different --temperature-a / --temperature-b", dir_a.display());
        }
        let (ma, tok) = load_policy(be, &dir_a, &a.tokenizer)?;
        let mb = if dir_b == dir_a { None } else { Some(load_policy(be, &dir_b, &Some(tok.path().to_path_buf()))?.0) };
        let variants = vec![
            Variant { name: format!("{} T={ta}", dir_a.display()), model: &ma, sampling: a.gen.sampling(ta) },
            Variant { name: format!("{} T={tb}", dir_b.display()), model: mb.as_ref().unwrap_or(&ma), sampling: a.gen.sampling(tb) },
        ];
        let (mut xa, mut xb) = sample_pairs(be, &tok, &variants, &prompts, a.gen.max_new_tokens as usize, a.gen.seed)?;
        if a.text_only {
            for x in xa.iter_mut().chain(xb.iter_mut()) {
                (x.prompt_ids, x.ids) = (Vec::new(), Vec::new());
            }
        }
        let s = label_answers(&prompts, &xa, &xb, a.gen.seed)?;
        let extra = json!({"variants": variants.iter().map(|v| v.name.clone()).collect::<Vec<_>>(), "prompts": a.prompts, "seed": a.gen.seed,
                           "max_new_tokens": a.gen.max_new_tokens, "top_p": a.gen.top_p, "text_only": a.text_only});
        write_pairs(&a.out, &s, extra)
    }
}

pub fn run(a: AnnotateArgs) -> Result<()> {
    match a.cmd {
        AnnotateCmd::Prompts(x) => run_prompts(x),
        AnnotateCmd::Score(x) => run_score(x),
        AnnotateCmd::Pairs(x) => match x.input.clone() {
            Some(input) => pairs_from_input(&x, &input),
            None => dispatch(&x.dev.clone(), PairsJob(x)),
        },
    }
}
