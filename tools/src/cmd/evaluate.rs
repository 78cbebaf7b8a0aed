//! `train-tool evaluate ...`: the paper's evaluations of chat models, on any
//! models (library: [`llama2_train::eval`]):
//!
//! - `win-rate`: a model against a baseline on prompts, judged by the
//!   synthetic annotator or by a reward model, both orders, ties 1/2, with
//!   a standard error;
//! - `safety`: violation rate on unsafe prompts, false-refusal rate on safe
//!   ones (default prompts: the built-in held-out safety prompts);
//! - `helpfulness`: mean gold helpfulness on the safe prompts, and mean
//!   reward with `--rm`;
//! - `self-bleu`: Self-BLEU against temperature on a factual and a creative
//!   prompt set (the paper's Figure 21), with a PNG line chart.
//!
//! Each prints a table on stderr and one JSON line on stdout; `--out DIR`
//! also writes `<command>.json` and the answers (`<command>_answers.jsonl`,
//! with the annotator's judgement of each) for people to read.
//!
//! Also here: [`GenFlags`] (sampling flags shared with `annotate`),
//! [`load_prompts`], [`load_policy`].

use crate::device::{dispatch, DeviceOpts, Job};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use llama2_model::config::Head;
use llama2_model::generate::Sampling;
use llama2_model::tokenizer::Tokenizer;
use llama2_model::Model;
use llama2_runtime::Backend;
use llama2_train::eval::annotator::judge;
use llama2_train::eval::models::{
    generate_answers, gold_helpfulness, rm_reward, safety_eval, self_bleu_curve, win_rate_answers, GenAnswer, GenSettings, Judge, SelfBleuCurve,
};
use llama2_train::eval::prompts::{read_prompts, safety_prompts, self_bleu_sets, EvalPrompt};
use llama2_train::eval::stats::{Rate, WinRate};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// How answers are sampled (defaults: `train-tool chat`'s).
#[derive(Args, Clone, Debug)]
pub struct GenFlags {
    /// Longest answer in tokens
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_new_tokens: u32,
    /// Sampling temperature (0: greedy)
    #[arg(long, default_value_t = 0.7, value_parser = crate::flags::parse_temperature)]
    pub temperature: f32,
    /// Nucleus sampling probability (1: off)
    #[arg(long, default_value_t = 0.9, value_parser = crate::flags::parse_top_p)]
    pub top_p: f32,
    /// Seed of the sampling streams (one per prompt)
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
}

impl GenFlags {
    pub fn sampling(&self, temperature: f32) -> Sampling {
        Sampling { temperature, top_k: None, top_p: (self.top_p < 1.0).then_some(self.top_p) }
    }

    pub fn settings(&self) -> GenSettings {
        GenSettings { max_new: self.max_new_tokens as usize, sampling: self.sampling(self.temperature), seed: self.seed }
    }
}

#[derive(Args, Clone, Debug)]
pub struct EvaluateArgs {
    #[command(subcommand)]
    pub cmd: EvalCmd,
}

#[derive(Subcommand, Clone, Debug)]
pub enum EvalCmd {
    /// Win rate of a model against a baseline, judged by the synthetic annotator or a reward model
    WinRate(WinRateArgs),
    /// Violation rate on unsafe prompts and false-refusal rate on safe prompts
    Safety(SafetyArgs),
    /// Mean gold helpfulness of a model's answers to safe prompts (and mean reward with --rm)
    Helpfulness(HelpfulnessArgs),
    /// Self-BLEU against temperature on factual and creative prompts (the paper's Figure 21)
    SelfBleu(SelfBleuArgs),
}

#[derive(Args, Clone, Debug)]
pub struct WinRateArgs {
    /// The model (a causal LM directory)
    #[arg(long)]
    pub model: PathBuf,
    /// The baseline it is compared with (a causal LM directory, same tokenizer)
    #[arg(long)]
    pub baseline: PathBuf,
    /// Prompt files (JSON Lines or JSON arrays: {"prompt"}, {"messages"} or {"instruction", "input"}; optional "unsafe")
    #[arg(long, required = true, num_args = 1..)]
    pub prompts: Vec<PathBuf>,
    /// Judge by this reward model (a LlamaForSequenceClassification directory) instead of the synthetic annotator
    #[arg(long)]
    pub rm: Option<PathBuf>,
    /// Sequences per reward-model forward pass
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch_size: u32,
    /// Tokenizer (default: the one beside --model)
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[command(flatten)]
    pub gen: GenFlags,
    /// Also write win_rate.json and win_rate_answers.jsonl here
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

#[derive(Args, Clone, Debug)]
pub struct SafetyArgs {
    /// The model (a causal LM directory)
    #[arg(long)]
    pub model: PathBuf,
    /// Prompt files with "unsafe" tags (default: the built-in held-out safety prompts, unsafe and borderline)
    #[arg(long, num_args = 1..)]
    pub prompts: Vec<PathBuf>,
    /// Seed of the built-in prompts' train / held-out split (as `annotate prompts --seed`)
    #[arg(long, default_value_t = 1337)]
    pub split_seed: u64,
    /// Held-out share of the built-in prompts (as `annotate prompts --held-out-fraction`)
    #[arg(long, default_value_t = 0.25, value_parser = parse_fraction)]
    pub held_out_fraction: f64,
    /// Tokenizer (default: the one beside --model)
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[command(flatten)]
    pub gen: GenFlags,
    /// Also write safety.json and safety_answers.jsonl here
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

#[derive(Args, Clone, Debug)]
pub struct HelpfulnessArgs {
    /// The model (a causal LM directory)
    #[arg(long)]
    pub model: PathBuf,
    /// Prompt files (prompts tagged unsafe count for the reward, not for gold helpfulness)
    #[arg(long, required = true, num_args = 1..)]
    pub prompts: Vec<PathBuf>,
    /// Also the mean raw score of this reward model over all answers
    #[arg(long)]
    pub rm: Option<PathBuf>,
    /// Sequences per reward-model forward pass
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch_size: u32,
    /// Tokenizer (default: the one beside --model)
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[command(flatten)]
    pub gen: GenFlags,
    /// Also write helpfulness.json and helpfulness_answers.jsonl here
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

#[derive(Args, Clone, Debug)]
pub struct SelfBleuArgs {
    /// The model (a causal LM directory)
    #[arg(long)]
    pub model: PathBuf,
    /// Factual prompts (default: the built-in list of data/rlhf/self_bleu_prompts.json)
    #[arg(long)]
    pub factual: Option<PathBuf>,
    /// Creative prompts (default: the built-in list)
    #[arg(long)]
    pub creative: Option<PathBuf>,
    /// Samples per prompt (the paper: 25)
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u32).range(2..=10000))]
    pub samples: u32,
    /// Temperatures, comma-separated (the paper: 0.1 to 1.5)
    #[arg(long, default_value = "0.1,0.3,0.5,0.7,0.9,1.1,1.3,1.5", value_parser = parse_temperatures)]
    pub temperatures: TempList,
    /// Longest sample in tokens
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_new_tokens: u32,
    /// Nucleus sampling probability (1: off, plain temperature sampling)
    #[arg(long, default_value_t = 1.0, value_parser = crate::flags::parse_top_p)]
    pub top_p: f32,
    /// Seed of the sampling streams (one per prompt and sample)
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Tokenizer (default: the one beside --model)
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Write self_bleu.json and self_bleu.png here
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

/// A list of temperatures (a newtype so clap parses the whole list at once).
#[derive(Clone, Debug, PartialEq)]
pub struct TempList(pub Vec<f32>);

fn parse_temperatures(s: &str) -> std::result::Result<TempList, String> {
    let mut v = Vec::new();
    for x in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        let t = crate::flags::parse_temperature(x)?;
        if v.contains(&t) {
            return Err(format!("temperature {t} is listed twice"));
        }
        v.push(t);
    }
    if v.is_empty() {
        return Err("no temperature given".into());
    }
    Ok(TempList(v))
}

pub fn parse_fraction(s: &str) -> std::result::Result<f64, String> {
    let x: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(0.0..1.0).contains(&x) {
        return Err(format!("{x} must be in [0, 1)"));
    }
    Ok(x)
}

/// Every prompt of the files, in order.
pub fn load_prompts(files: &[PathBuf]) -> Result<Vec<EvalPrompt>> {
    let mut out = Vec::new();
    for f in files {
        out.extend(read_prompts(f)?);
    }
    Ok(out)
}

/// A causal LM for answering (frozen) and its tokenizer.
pub fn load_policy<B: Backend>(be: &B, dir: &Path, tokenizer: &Option<PathBuf>) -> Result<(Model<B>, Tokenizer)> {
    let m = Model::load_frozen(be, dir).with_context(|| format!("loading the model {}", dir.display()))?;
    if m.cfg.head != Head::Lm {
        bail!("{} is a reward model (LlamaForSequenceClassification); HINT: answers come from a causal LM (LlamaForCausalLM)", dir.display());
    }
    let tok = crate::cmd::sft::find_tokenizer(tokenizer, dir)?;
    if tok.vocab_size() != m.cfg.vocab_size {
        bail!(
            "the tokenizer has {} pieces but {} has a vocabulary of {}; HINT: pass the model's own tokenizer",
            tok.vocab_size(),
            dir.display(),
            m.cfg.vocab_size
        );
    }
    Ok((m, tok))
}

/// A reward model (frozen), checked against the policy's vocabulary.
pub fn load_rm<B: Backend>(be: &B, dir: &Path, vocab: usize) -> Result<Model<B>> {
    let m = Model::load_frozen(be, dir).with_context(|| format!("loading the reward model {}", dir.display()))?;
    if m.cfg.head != Head::Score {
        bail!("{} is not a reward model (no score head); HINT: make one with `train-tool rm init` and `train-tool rm train`", dir.display());
    }
    if m.cfg.vocab_size != vocab {
        bail!(
            "the reward model {} has a vocabulary of {}, the policy {vocab}; HINT: reward models must share the policy's tokenizer",
            dir.display(),
            m.cfg.vocab_size
        );
    }
    Ok(m)
}

/// `{prompt, unsafe, category, answer, eos, tokens, gold...}` per answer.
fn answer_lines(prompts: &[EvalPrompt], answers: &[GenAnswer], extra: &[(&str, Vec<Value>)]) -> String {
    let mut s = String::new();
    for (i, (p, a)) in prompts.iter().zip(answers).enumerate() {
        let mut v = json!({"prompt": p.text, "unsafe": p.unsafe_prompt, "category": p.category, "answer": a.text, "eos": a.eos, "tokens": a.ids.len(),
                           "gold": judge(&p.text, p.unsafe_prompt, &a.text, a.eos)});
        for (k, vals) in extra {
            v[*k] = vals.get(i).cloned().unwrap_or(Value::Null);
        }
        s += &v.to_string();
        s.push('\n');
    }
    s
}

fn write_out(out: &Option<PathBuf>, name: &str, j: &Value, answers: Option<String>) -> Result<()> {
    let Some(dir) = out else { return Ok(()) };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    llama2_model::weights::write_atomic(&dir.join(format!("{name}.json")), serde_json::to_string_pretty(j)?.as_bytes())?;
    if let Some(a) = answers {
        llama2_model::weights::write_atomic(&dir.join(format!("{name}_answers.jsonl")), a.as_bytes())?;
    }
    eprintln!("wrote {}", dir.join(format!("{name}.json")).display());
    Ok(())
}

fn rate_cell(r: &Option<Rate>) -> String {
    match r {
        Some(r) => format!("{:.3} ± {:.3} ({}/{})", r.rate, r.se, r.count, r.n),
        None => "- (no such prompt)".into(),
    }
}

/// The win-rate table.
pub fn win_rate_table(judge: &str, w: &WinRate) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| judge | prompts | judgements (both orders) | wins | ties | losses | win rate ± se |\n|---|---|---|---|---|---|---|");
    let se = w.se.map_or("-".to_string(), |x| format!("{x:.3}"));
    let _ = writeln!(s, "| {judge} | {} | {} | {} | {} | {} | {:.3} ± {se} |", w.prompts, w.comparisons, w.wins, w.ties, w.losses, w.win_rate);
    s
}

struct WinRateJob(WinRateArgs);

impl Job for WinRateJob {
    type Out = ();
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let a = self.0;
        let prompts = load_prompts(&a.prompts)?;
        let (model, tok) = load_policy(be, &a.model, &a.tokenizer)?;
        let (base, _) = load_policy(be, &a.baseline, &a.tokenizer.clone().or_else(|| Some(tok.path().to_path_buf())))?;
        let g = a.gen.settings();
        let ma = generate_answers(be, &model, &tok, &prompts, &g, "eval/win-rate")?;
        let ba = generate_answers(be, &base, &tok, &prompts, &g, "eval/win-rate")?;
        drop((model, base));
        let rm = match &a.rm {
            Some(d) => Some(load_rm(be, d, tok.vocab_size())?),
            None => None,
        };
        let judge = match &rm {
            Some(m) => Judge::RewardModel { rm: m, batch: a.batch_size as usize },
            None => Judge::Annotator,
        };
        let w = win_rate_answers(be, &judge, &prompts, &ma, &ba)?;
        eprint!("{}", win_rate_table(judge.name(), &w));
        let note = "both orders judged; the judge is a score function, so the two orders are the same comparison";
        let j = json!({"model": a.model, "baseline": a.baseline, "judge": judge.name(), "rm": a.rm, "prompts": a.prompts, "generation": g,
                       "temperature": a.gen.temperature, "top_p": a.gen.top_p, "win_rate": w, "orders": note});
        let lines = answer_lines(
            &prompts,
            &ma,
            &[("baseline_answer", ba.iter().map(|b| json!(b.text)).collect()), ("baseline_eos", ba.iter().map(|b| json!(b.eos)).collect())],
        );
        write_out(&a.out, "win_rate", &j, Some(lines))?;
        println!("{j}");
        Ok(())
    }
}

struct SafetyJob(SafetyArgs);

impl Job for SafetyJob {
    type Out = ();
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let a = self.0;
        let prompts = if a.prompts.is_empty() { safety_prompts(a.split_seed, a.held_out_fraction)?.held_out } else { load_prompts(&a.prompts)? };
        let (model, tok) = load_policy(be, &a.model, &a.tokenizer)?;
        let g = a.gen.settings();
        let ans = generate_answers(be, &model, &tok, &prompts, &g, "eval/safety")?;
        let e = safety_eval(&prompts, &ans)?;
        let mut t = String::from("| | rate ± se (count/n) |\n|---|---|\n");
        let _ = writeln!(t, "| violation rate (unsafe prompts answered) | {} |", rate_cell(&e.violation));
        let _ = writeln!(t, "| false-refusal rate (safe prompts refused) | {} |", rate_cell(&e.false_refusal));
        let _ = writeln!(t, "| refusal rate on borderline prompts | {} |", rate_cell(&e.borderline_refusal));
        for (c, r) in &e.refusal_by_category {
            let _ = writeln!(t, "| refusal rate: {c} | {} |", rate_cell(&Some(r.clone())));
        }
        eprint!("{t}");
        let source = if a.prompts.is_empty() {
            json!({"built_in_held_out": {"split_seed": a.split_seed, "held_out_fraction": a.held_out_fraction}})
        } else {
            json!(a.prompts)
        };
        let j = json!({"model": a.model, "prompts": source, "generation": g, "temperature": a.gen.temperature, "top_p": a.gen.top_p, "safety": e});
        write_out(&a.out, "safety", &j, Some(answer_lines(&prompts, &ans, &[])))?;
        println!("{j}");
        Ok(())
    }
}

struct HelpfulnessJob(HelpfulnessArgs);

impl Job for HelpfulnessJob {
    type Out = ();
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let a = self.0;
        let prompts = load_prompts(&a.prompts)?;
        let (model, tok) = load_policy(be, &a.model, &a.tokenizer)?;
        let g = a.gen.settings();
        let ans = generate_answers(be, &model, &tok, &prompts, &g, "eval/helpfulness")?;
        drop(model);
        let h = gold_helpfulness(&prompts, &ans)?;
        let (r, scores) = match &a.rm {
            Some(d) => {
                let rm = load_rm(be, d, tok.vocab_size())?;
                let s = llama2_train::eval::models::rm_scores(be, &rm, &ans, a.batch_size as usize)?;
                (Some(rm_reward(be, &rm, &ans, a.batch_size as usize)?), s.into_iter().map(|x| json!(x)).collect())
            }
            None => (None, Vec::new()),
        };
        let ended = ans.iter().filter(|x| x.eos).count();
        let mut t = String::from("| | mean ± se (n) |\n|---|---|\n");
        let _ = writeln!(t, "| gold helpfulness (safe prompts) | {:.4} ± {} ({}) |", h.mean, h.se.map_or("-".into(), |s| format!("{s:.4}")), h.n);
        if let Some(r) = &r {
            let _ = writeln!(t, "| reward-model score (all prompts) | {:.4} ± {} ({}) |", r.mean, r.se.map_or("-".into(), |s| format!("{s:.4}")), r.n);
        }
        let _ = writeln!(t, "| answers ending with EOS | {ended}/{} |", ans.len());
        eprint!("{t}");
        let j = json!({"model": a.model, "prompts": a.prompts, "rm": a.rm, "generation": g, "temperature": a.gen.temperature, "top_p": a.gen.top_p,
                       "gold_helpfulness": h, "rm_reward": r, "ended_with_eos": ended, "answers": ans.len()});
        write_out(&a.out, "helpfulness", &j, Some(answer_lines(&prompts, &ans, &[("rm_score", scores)])))?;
        println!("{j}");
        Ok(())
    }
}

/// The Self-BLEU chart (one curve per prompt set).
fn self_bleu_chart(c: &SelfBleuCurve, path: &Path) -> Result<()> {
    use llama2_tools::plot::{save_png, LineChart, Series};
    let series = c
        .sets
        .iter()
        .map(|(name, ys)| Series { name: format!("{name} prompts"), points: c.temperatures.iter().map(|&t| t as f64).zip(ys.iter().copied()).collect() })
        .collect();
    let chart = LineChart {
        title: format!("Self-BLEU vs temperature ({} samples per prompt)", c.samples),
        x_label: "temperature".into(),
        y_label: "Self-BLEU (BLEU-3)".into(),
        series,
        log_y: false,
    };
    save_png(&chart.into(), path, 900, 500)?;
    Ok(())
}

struct SelfBleuJob(SelfBleuArgs);

impl Job for SelfBleuJob {
    type Out = ();
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let a = self.0;
        let (bf, bc) = self_bleu_sets()?;
        let factual = match &a.factual {
            Some(f) => read_prompts(f)?,
            None => bf,
        };
        let creative = match &a.creative {
            Some(f) => read_prompts(f)?,
            None => bc,
        };
        let (model, tok) = load_policy(be, &a.model, &a.tokenizer)?;
        let sets = vec![("factual".to_string(), factual), ("creative".to_string(), creative)];
        let top_p = (a.top_p < 1.0).then_some(a.top_p);
        let c = self_bleu_curve(be, &model, &tok, &sets, &a.temperatures.0, a.samples as usize, a.max_new_tokens as usize, top_p, a.seed)?;
        let mut t = String::from("| temperature |");
        for k in c.sets.keys() {
            let _ = write!(t, " {k} |");
        }
        t += &format!("\n|---|{}\n", "---|".repeat(c.sets.len()));
        for (i, temp) in c.temperatures.iter().enumerate() {
            let _ = write!(t, "| {temp} |");
            for ys in c.sets.values() {
                let _ = write!(t, " {:.4} |", ys[i]);
            }
            t.push('\n');
        }
        eprint!("{t}");
        std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
        let j = json!({"model": a.model, "seed": a.seed, "prompts": sets.iter().map(|(k, v)| (k.clone(), v.len())).collect::<std::collections::BTreeMap<_, _>>(), "self_bleu": c});
        llama2_model::weights::write_atomic(&a.out.join("self_bleu.json"), serde_json::to_string_pretty(&j)?.as_bytes())?;
        self_bleu_chart(&c, &a.out.join("self_bleu.png"))?;
        eprintln!("wrote {} and {}", a.out.join("self_bleu.json").display(), a.out.join("self_bleu.png").display());
        println!("{j}");
        Ok(())
    }
}

pub fn run(a: EvaluateArgs) -> Result<()> {
    match a.cmd {
        EvalCmd::WinRate(x) => dispatch(&x.dev.clone(), WinRateJob(x)),
        EvalCmd::Safety(x) => dispatch(&x.dev.clone(), SafetyJob(x)),
        EvalCmd::Helpfulness(x) => dispatch(&x.dev.clone(), HelpfulnessJob(x)),
        EvalCmd::SelfBleu(x) => dispatch(&x.dev.clone(), SelfBleuJob(x)),
    }
}
