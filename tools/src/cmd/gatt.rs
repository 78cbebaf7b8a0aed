//! `train-tool gatt`: Ghost Attention (PAPER.md section 7).
//!
//! - `gatt demos`: single-turn system-message demonstrations (an
//!   instruction as the system message, the answer rewritten to obey its
//!   checkable constraints) to mix into SFT data, so that the chat model
//!   follows a system message in the turn it is given (what the paper's
//!   RLHF model already did before GAtt);
//! - `gatt build`: the GAtt samples (and, with `--baseline-out`, the same
//!   dialogs without GAtt), SFT records with `"loss": "last"` for
//!   `train-tool sft --packing whole`;
//! - `gatt eval`: adherence by turn for each checkable family, models side
//!   by side (the paper's Table 30), and the attention mass on the system
//!   message per layer (Figure 10), as JSON, Markdown and PNG.
//!
//! - `gatt stage`: the three in a row: build, fine-tune the policy on the
//!   GAtt samples and, with the same settings and steps, on the baseline of
//!   the same dialogs without GAtt, then evaluate the policy, the baseline
//!   and the GAtt model side by side.
//!
//! [`BestOfFlags`]: best of K per turn (`build` and `stage`). For the pipeline: [`GattDemosArgs`] + [`demos`], [`GattBuildArgs`] +
//! [`build`] (returns the counts), [`GattEvalArgs`] + [`eval`] (returns
//! the [`EvalReport`] that `gatt_eval.json` holds), [`GattStageArgs`] +
//! [`stage`] (all of it; returns the [`EvalReport`], labels `policy`,
//! `no-gatt`, `gatt`).

use crate::cmd::sft::find_tokenizer;
use crate::device::{dispatch, DeviceOpts, Job};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use llama2_model::generate::Sampling;
use llama2_model::tokenizer::{EncodeOptions, Tokenizer};
use llama2_model::Model;
use llama2_runtime::Backend;
use llama2_tools::plot::{save_png, HeatMap};
use llama2_train::gatt::{self, BuildOpts, BuildStats, EvalOpts, Examples, SysAttention, TurnAdherence};
use llama2_train::sft::load_dialogs;
use serde::Serialize;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct GattArgs {
    #[command(subcommand)]
    pub cmd: GattCmd,
}

#[derive(Subcommand, Debug)]
pub enum GattCmd {
    /// Single-turn system-message demonstrations for SFT (answers rewritten to obey the instruction)
    Demos(GattDemosArgs),
    /// Build GAtt training samples: instruction on every user turn while the policy re-samples the answers, then kept once as the system message, loss on the last answer
    Build(GattBuildArgs),
    /// Adherence by turn (Table 30) and attention on the system message (Figure 10), models side by side
    Eval(GattEvalArgs),
    /// The whole GAtt stage: build, fine-tune with GAtt and without (same dialogs), evaluate the policy and both
    Stage(GattStageArgs),
}

/// The instruction list and which of its families to use.
#[derive(Args, Clone, Debug)]
pub struct InstructionFlags {
    /// Instruction families (JSON; see data/gatt/instructions.json)
    #[arg(long)]
    pub instructions: PathBuf,
    /// Use only these families (comma-separated names; default: all of the file)
    #[arg(long, value_delimiter = ',')]
    pub families: Vec<String>,
}

impl InstructionFlags {
    fn load(&self) -> Result<gatt::InstructionSet> {
        Ok(gatt::load_instructions(&self.instructions, &self.families)?)
    }
}

/// Best of K samples per turn when building GAtt data.
#[derive(Args, Clone, Debug)]
pub struct BestOfFlags {
    /// Reward model (score head) choosing the best of --k samples per turn
    #[arg(long)]
    pub rm: Option<PathBuf>,
    /// Samples per turn for best-of-K (needs --rm or --by-checks)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub k: u32,
    /// Best of K: prefer the samples that obey the most of the instruction's checkable constraints
    /// (then the reward model's best with --rm, then the first); for a policy that does not yet
    /// follow an instruction it sees on every turn
    #[arg(long)]
    pub by_checks: bool,
    /// Rewrite each kept answer that still breaks one of the instruction's checkable constraints so
    /// that it obeys (the rewrite of `gatt demos`: cut to the word budget, the word mentioned, the
    /// end word appended, capital or small letters), before the next turn is sampled: a stand-in for a policy that
    /// follows an instruction it sees on every turn, which the paper assumes and a tiny model lacks
    #[arg(long)]
    pub comply: bool,
}

#[derive(Args, Clone, Debug)]
pub struct GattDemosArgs {
    /// Dialog datasets whose first (user, answer) pair is used (any SFT format)
    #[arg(long, num_args = 1.., required = true)]
    pub dialogs: Vec<PathBuf>,
    #[command(flatten)]
    pub inst: InstructionFlags,
    /// At most this many demonstrations (0 = one per dialog)
    #[arg(long, default_value_t = 0)]
    pub count: usize,
    /// Output (JSON Lines of {"messages": [system, user, assistant]})
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the instruction draws
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExamplesArg {
    /// one sample per dialog: its last answer is learned
    Last,
    /// one sample per prefix: every sampled answer is learned once, after its own context
    Prefixes,
}

#[derive(Args, Clone, Debug)]
pub struct GattBuildArgs {
    /// The policy that re-samples the answers (HF model directory)
    #[arg(long)]
    pub policy: PathBuf,
    /// Tokenizer (default: the one beside the policy)
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Dialog datasets: multi-turn records are used as they are, single-turn ones chained
    #[arg(long, num_args = 1.., required = true)]
    pub dialogs: Vec<PathBuf>,
    #[command(flatten)]
    pub inst: InstructionFlags,
    /// Output: GAtt samples (JSON Lines SFT records with "loss": "last")
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the baseline without GAtt: same dialogs and instructions, instruction in turn 1 only, the dataset's answers
    #[arg(long)]
    pub baseline_out: Option<PathBuf>,
    /// Also write the every-turn control: the GAtt samples with the instruction left on every user
    /// turn and no system message (the same answers without the ghost trick)
    #[arg(long)]
    pub every_turn_out: Option<PathBuf>,
    #[command(flatten)]
    pub best: BestOfFlags,
    /// Dialogs to build
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    /// Fewest turns of a chained dialog
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub min_turns: u32,
    /// Most turns of a dialog
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_turns: u32,
    /// Training samples per dialog
    #[arg(long, value_enum, default_value_t = ExamplesArg::Prefixes)]
    pub examples: ExamplesArg,
    /// Token budget of each sampled answer
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_new_tokens: u32,
    /// Token budget of a training sample (use the same value as sft --seq-len)
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(8..))]
    pub max_tokens: u32,
    /// Sampling temperature of the answers (0 = greedy)
    #[arg(long, default_value_t = 0.7, value_parser = crate::flags::parse_temperature)]
    pub temperature: f32,
    /// Nucleus probability of the answers
    #[arg(long, default_value_t = 0.9, value_parser = crate::flags::parse_top_p)]
    pub top_p: f32,
    /// Sequences decoded together
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch: u32,
    /// Seed of the dialogs, instructions and samples
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

#[derive(Args, Clone, Debug)]
pub struct GattEvalArgs {
    /// Model(s) to evaluate, as LABEL=DIR or DIR (label: the directory name, or its parent's for .../final)
    #[arg(long, num_args = 1.., required = true)]
    pub model: Vec<String>,
    /// Baseline model(s), as LABEL=DIR or DIR; listed before the models in the tables
    #[arg(long, num_args = 1..)]
    pub baseline: Vec<String>,
    /// Tokenizer (default: the one beside the first model)
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[command(flatten)]
    pub inst: InstructionFlags,
    /// Held-out dialogs whose user messages are the user turns (any SFT format)
    #[arg(long, num_args = 1.., required = true)]
    pub prompts: Vec<PathBuf>,
    /// Turns to measure (1-based, comma-separated; the last is replaced by the last turn that fits the context if none reaches it)
    #[arg(long, value_delimiter = ',', default_value = "2,4,6,20")]
    pub turns: Vec<usize>,
    /// Dialogs (each with its own instruction, at least one checkable constraint)
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u32).range(1..))]
    pub dialogs: u32,
    /// Leave out the user prompts that occur in these dialog files (the training data), so the turns are held out
    #[arg(long, num_args = 1..)]
    pub exclude_from: Vec<PathBuf>,
    /// User prompts longer than this many tokens are not used (long prompts fill the context early)
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_prompt_tokens: u32,
    /// Token budget of each answer
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_new_tokens: u32,
    /// Context budget of a dialog in tokens (default: the model's)
    #[arg(long, value_parser = clap::value_parser!(u32).range(8..))]
    pub max_tokens: Option<u32>,
    /// Sampling temperature (0 = greedy)
    #[arg(long, default_value_t = 0.7, value_parser = crate::flags::parse_temperature)]
    pub temperature: f32,
    /// Nucleus probability
    #[arg(long, default_value_t = 0.9, value_parser = crate::flags::parse_top_p)]
    pub top_p: f32,
    /// Sequences decoded together
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch: u32,
    /// Attention picture: no
    #[arg(long)]
    pub no_attention: bool,
    /// Output directory (gatt_eval.json, gatt_eval.md, gatt_attention.png, transcripts)
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the instructions, user turns and samples (the same for every model)
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

pub fn run(a: GattArgs) -> Result<()> {
    match a.cmd {
        GattCmd::Demos(a) => demos(a).map(|_| ()),
        GattCmd::Build(a) => build(a).map(|_| ()),
        GattCmd::Eval(a) => eval(a).map(|_| ()),
        GattCmd::Stage(a) => stage(a).map(|_| ()),
    }
}

fn write_jsonl(path: &Path, records: impl Iterator<Item = Value>) -> Result<usize> {
    let mut text = String::new();
    let mut n = 0;
    for r in records {
        text.push_str(&r.to_string());
        text.push('\n');
        n += 1;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    llama2_model::atomic::write_atomic(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(n)
}

fn load_all(paths: &[PathBuf]) -> Result<Vec<Vec<llama2_model::chat::Message>>> {
    let mut out = Vec::new();
    for p in paths {
        out.extend(load_dialogs(p).with_context(|| format!("reading {}", p.display()))?);
    }
    Ok(out)
}

/// `gatt demos`; returns the number written.
pub fn demos(a: GattDemosArgs) -> Result<usize> {
    let set = a.inst.load()?;
    let mut sources = load_all(&a.dialogs)?;
    if a.count > 0 {
        sources.truncate(a.count);
    }
    let (dialogs, _) = gatt::demos(&sources, &set, a.seed)?;
    let n = write_jsonl(
        &a.out,
        dialogs.iter().map(|d| json!({"messages": d.iter().map(|m| json!({"role": role(m.role), "content": m.content})).collect::<Vec<_>>()})),
    )?;
    eprintln!("gatt demos: {n} system-message demonstrations -> {}", a.out.display());
    Ok(n)
}

fn role(r: llama2_model::chat::Role) -> &'static str {
    use llama2_model::chat::Role;
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

fn check_vocab<B: Backend>(tok: &Tokenizer, m: &Model<B>, what: &str) -> Result<()> {
    if tok.vocab_size() != m.cfg.vocab_size {
        bail!("the tokenizer has {} pieces but the {what}'s vocabulary is {}; HINT: pass the model's own tokenizer", tok.vocab_size(), m.cfg.vocab_size);
    }
    Ok(())
}

struct BuildJob(GattBuildArgs);

impl Job for BuildJob {
    type Out = BuildStats;
    fn run<B: Backend>(self, be: &B) -> Result<BuildStats> {
        let a = self.0;
        if a.min_turns > a.max_turns {
            bail!("--min-turns {} is above --max-turns {}", a.min_turns, a.max_turns);
        }
        if a.best.k > 1 && a.best.rm.is_none() && !a.best.by_checks {
            bail!("--k {} needs a way to choose; HINT: pass --rm DIR and/or --by-checks", a.best.k);
        }
        let set = a.inst.load()?;
        let policy = Model::load_frozen(be, &a.policy).with_context(|| format!("loading the policy {}", a.policy.display()))?;
        let tok = find_tokenizer(&a.tokenizer, &a.policy)?;
        check_vocab(&tok, &policy, "policy")?;
        let rm = match &a.best.rm {
            Some(dir) => {
                let r = Model::load_frozen(be, dir).with_context(|| format!("loading the reward model {}", dir.display()))?;
                check_vocab(&tok, &r, "reward model")?;
                Some(r)
            }
            None => None,
        };
        let sources = load_all(&a.dialogs)?;
        let d = gatt::build_dialogs(
            &sources,
            gatt::DialogOpts { min_turns: a.min_turns as usize, max_turns: a.max_turns as usize, count: a.count as usize, seed: a.seed },
        )?;
        if d.skipped > 0 {
            eprintln!("gatt build: {} source dialogs skipped (no user turn followed by an answer, or turns that do not alternate)", d.skipped);
        }
        let insts = set.sample_n(d.dialogs.len(), a.seed, "gatt/build-instructions", false)?;
        let o = BuildOpts {
            max_new: a.max_new_tokens as usize,
            sampling: Sampling { temperature: a.temperature, top_k: None, top_p: Some(a.top_p) },
            batch: a.batch as usize,
            seed: a.seed,
            examples: match a.examples {
                ExamplesArg::Last => Examples::Last,
                ExamplesArg::Prefixes => Examples::Prefixes,
            },
            max_tokens: a.max_tokens as usize,
            k: a.best.k as usize,
            by_checks: a.best.by_checks,
            comply: a.best.comply,
        };
        let t0 = std::time::Instant::now();
        let built = gatt::build(be, &policy, &tok, &d.dialogs, &insts, rm.as_ref(), &o)?;
        let st = built.stats.clone();
        if st.samples == 0 {
            bail!("no GAtt sample was built: every dialog's first turn exceeds the context; HINT: raise --max-tokens or use shorter dialogs");
        }
        write_jsonl(&a.out, built.gatt.iter().map(|s| s.to_json()))?;
        if let Some(p) = &a.baseline_out {
            write_jsonl(p, built.baseline.iter().map(|s| s.to_json()))?;
        }
        if let Some(p) = &a.every_turn_out {
            write_jsonl(p, built.every_turn.iter().map(|s| s.to_json()))?;
            eprintln!("gatt build: {} every-turn control samples ({} too long) -> {}", st.every_turn_samples, st.every_turn_too_long, p.display());
        }
        let short = insts.iter().filter(|i| i.short).count();
        eprintln!(
            "gatt build: {} dialogs ({} skipped at turn 1, {} cut short by the context), {} answers sampled ({} without EOS), {} instructions in short form of {}; {} samples -> {}{} in {:.1} s",
            st.dialogs_used,
            st.dropped,
            st.cut_by_context,
            st.answers,
            st.unfinished,
            short,
            insts.len(),
            st.samples,
            a.out.display(),
            a.baseline_out.as_ref().map(|p| format!(", {} baseline samples ({} too long) -> {}", st.baseline_samples, st.baseline_too_long, p.display())).unwrap_or_default(),
            t0.elapsed().as_secs_f64()
        );
        for (fam, r) in &st.sampled_adherence {
            eprintln!("gatt build: sampled answers obeying {fam}: {}", pct(r));
        }
        if a.best.comply {
            eprintln!("gatt build: {} of {} kept answers rewritten to obey their instruction's checks (--comply)", st.rewritten, st.answers);
        }
        if let (Some(b), Some(all)) = (st.rm_best_mean, st.rm_all_mean) {
            eprintln!("gatt build: reward of the kept answers {b:.4}, of all {} samples per turn {all:.4}", a.best.k);
        }
        Ok(st)
    }
}

/// `gatt build`; returns the counts.
pub fn build(a: GattBuildArgs) -> Result<BuildStats> {
    let dev = a.dev.clone();
    dispatch(&dev, BuildJob(a))
}

/// One evaluated model.
#[derive(Clone, Debug, Serialize)]
pub struct ModelEval {
    pub label: String,
    pub dir: PathBuf,
    pub baseline: bool,
    pub adherence: Vec<TurnAdherence>,
    /// attention on the system message at each measured turn, on this model's own dialogs
    pub attention: Vec<SysAttention>,
    /// the same on the dialogs of the first model listed (the same tokens for every model)
    pub attention_shared: Vec<SysAttention>,
}

/// What `gatt eval` measured (`gatt_eval.json`).
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// measured turns (the asked ones that fit; see `gatt::measured_turns`)
    pub turns: Vec<usize>,
    pub asked_turns: Vec<usize>,
    pub models: Vec<ModelEval>,
    pub settings: Value,
}

fn label_of(spec: &str) -> (String, PathBuf) {
    if let Some((l, d)) = spec.split_once('=') {
        if !l.is_empty() && !l.contains('/') {
            return (l.to_string(), PathBuf::from(d));
        }
    }
    let p = PathBuf::from(spec);
    let name = |q: &Path| q.file_name().map(|s| s.to_string_lossy().to_string());
    let label = match name(&p) {
        Some(n) if n == "final" => p.parent().and_then(name).unwrap_or(n),
        Some(n) => n,
        None => spec.to_string(),
    };
    (label, p)
}

struct EvalJob(GattEvalArgs);

impl Job for EvalJob {
    type Out = EvalReport;
    fn run<B: Backend>(self, be: &B) -> Result<EvalReport> {
        let a = self.0;
        if a.turns.is_empty() || a.turns.contains(&0) {
            bail!("--turns takes turn numbers from 1 (for example 2,4,6,20)");
        }
        let mut specs: Vec<(String, PathBuf, bool)> = a.baseline.iter().map(|s| label_of(s)).map(|(l, d)| (l, d, true)).collect();
        specs.extend(a.model.iter().map(|s| label_of(s)).map(|(l, d)| (l, d, false)));
        for (i, s) in specs.iter().enumerate() {
            if specs[..i].iter().any(|x| x.0 == s.0) {
                bail!("two models are labelled `{}`; HINT: name them with LABEL=DIR", s.0);
            }
        }
        let set = a.inst.load()?;
        let tok = find_tokenizer(&a.tokenizer, &specs[specs.len() - 1].1)?;
        let opts = EncodeOptions { bos: false, eos: false };
        let seen: std::collections::HashSet<String> = gatt::user_prompts(&load_all(&a.exclude_from)?).into_iter().collect();
        let mut prompts = Vec::new();
        let sources = load_all(&a.prompts)?;
        let mut excluded = 0;
        for p in gatt::user_prompts(&sources) {
            if seen.contains(&p) {
                excluded += 1;
            } else if tok.encode(&p, opts)?.len() <= a.max_prompt_tokens as usize {
                prompts.push(p);
            }
        }
        eprintln!("gatt eval: {} user prompts of at most {} tokens ({excluded} left out: in --exclude-from)", prompts.len(), a.max_prompt_tokens);
        if prompts.is_empty() {
            bail!("no user prompt of at most {} tokens in {:?}; HINT: raise --max-prompt-tokens", a.max_prompt_tokens, a.prompts);
        }
        let max_turn = *a.turns.iter().max().unwrap_or(&1);
        let insts = set.sample_n(a.dialogs as usize, a.seed, "gatt/eval-instructions", true)?;
        let dialogs = gatt::eval_dialogs(&prompts, &insts, a.dialogs as usize, max_turn, a.seed)?;
        std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
        let sampling = Sampling { temperature: a.temperature, top_k: None, top_p: Some(a.top_p) };
        let mut models = Vec::new();
        let mut all_tr = Vec::new();
        for (label, dir, baseline) in &specs {
            let t0 = std::time::Instant::now();
            let model = Model::load_frozen(be, dir).with_context(|| format!("loading {}", dir.display()))?;
            check_vocab(&tok, &model, "model")?;
            let o = EvalOpts {
                max_new: a.max_new_tokens as usize,
                sampling,
                batch: a.batch as usize,
                seed: a.seed,
                max_tokens: a.max_tokens.map_or(model.rope_len, |x| x as usize),
            };
            let tr = gatt::converse(be, &model, &tok, &dialogs, &o)?;
            eprintln!("gatt eval: {label}: {} dialogs carried in {:.1} s", tr.len(), t0.elapsed().as_secs_f64());
            all_tr.push((label.clone(), *baseline, dir.clone(), tr));
        }
        // one set of measured turns for every model: those some model reached
        let everyone: Vec<gatt::Transcript> = all_tr.iter().flat_map(|x| x.3.iter().cloned()).collect();
        let turns = gatt::measured_turns(&a.turns, &everyone);
        let shared = all_tr.first().map(|x| x.3.clone()).unwrap_or_default();
        for (label, baseline, dir, tr) in &all_tr {
            let adherence = gatt::adherence(tr, &turns);
            let (mut attention, mut attention_shared) = (Vec::new(), Vec::new());
            if !a.no_attention {
                let model = Model::<B>::load_frozen(be, dir).with_context(|| format!("loading {}", dir.display()))?;
                for &t in &turns {
                    attention.push(gatt::system_attention(be, &model, &tok, tr, t)?);
                    attention_shared.push(gatt::system_attention(be, &model, &tok, &shared, t)?);
                }
            }
            write_jsonl(&a.out.join(format!("transcripts_{label}.jsonl")), tr.iter().map(|t| serde_json::to_value(t).unwrap_or(Value::Null)))?;
            models.push(ModelEval { label: label.clone(), dir: dir.clone(), baseline: *baseline, adherence, attention, attention_shared });
        }
        let report = EvalReport {
            turns: turns.clone(),
            asked_turns: a.turns.clone(),
            models,
            settings: json!({"dialogs": a.dialogs, "instructions": a.inst.instructions, "families": a.inst.families, "prompts": a.prompts,
                "usable_prompts": prompts.len(), "excluded_prompts": excluded, "exclude_from": a.exclude_from, "max_prompt_tokens": a.max_prompt_tokens, "max_new_tokens": a.max_new_tokens,
                "temperature": a.temperature, "top_p": a.top_p, "seed": a.seed, "batch": a.batch}),
        };
        llama2_model::atomic::write_atomic(&a.out.join("gatt_eval.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
        if !a.no_attention {
            // one map for all models (one colour scale): a row per (model, layer), a column per answer token
            let shown: Vec<_> = report.models.iter().filter_map(|m| m.attention.last().map(|s| (m, s))).collect();
            let width = shown.iter().flat_map(|(_, s)| s.example.iter().map(Vec::len)).max().unwrap_or(0);
            let mut rows = Vec::new();
            let mut values = Vec::new();
            for (m, s) in &shown {
                for (l, layer) in s.example.iter().enumerate() {
                    rows.push(format!("{} L{l}", m.label));
                    values.push((0..width).map(|j| layer.get(j).copied().unwrap_or(f64::NAN)).collect());
                }
            }
            let chart = HeatMap {
                title: format!("Attention of the answer at turn {} on the system message", turns.last().copied().unwrap_or(0)),
                x_label: "answer token".into(),
                y_label: "model, layer".into(),
                columns: (0..width).map(|j| j.to_string()).collect(),
                rows,
                values,
                scale_label: "attention mass on the system message".into(),
            };
            if width > 0 {
                let h = (160 + 18 * chart.rows.len()).clamp(320, 4000) as u32;
                save_png(&chart.into(), &a.out.join("gatt_attention.png"), 1000, h)?;
            }
        }
        let md = markdown(&report);
        llama2_model::atomic::write_atomic(&a.out.join("gatt_eval.md"), md.as_bytes())?;
        eprintln!("{md}");
        eprintln!("gatt eval: {}", a.out.join("gatt_eval.md").display());
        Ok(report)
    }
}

/// `gatt eval`; returns what it wrote to `gatt_eval.json`.
pub fn eval(a: GattEvalArgs) -> Result<EvalReport> {
    let dev = a.dev.clone();
    dispatch(&dev, EvalJob(a))
}

fn pct(r: &gatt::Rate) -> String {
    if r.n == 0 {
        "-".into()
    } else {
        format!("{:.0}% ({}/{})", 100.0 * r.rate(), r.pass, r.n)
    }
}

/// The Markdown tables of a report.
pub fn markdown(r: &EvalReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## GAtt: adherence to the system message by turn\n");
    let _ = writeln!(
        s,
        "The instruction is the system message of turn 1 only; every answer is checked by a program. Cells: share of answers that obey the constraint (passed/answers).\n"
    );
    let mut families: Vec<String> = r.models.iter().flat_map(|m| m.adherence.iter().flat_map(|t| t.families.keys().cloned())).collect();
    families.sort();
    families.dedup();
    let _ = write!(s, "| constraint | model |");
    for t in &r.turns {
        let _ = write!(s, " turn {t} |");
    }
    let _ = write!(s, "\n|---|---|");
    for _ in &r.turns {
        let _ = write!(s, "---|");
    }
    s.push('\n');
    let rows = families.iter().map(|f| (f.clone(), Some(f.clone()))).chain(std::iter::once(("all checks".to_string(), None)));
    for (name, fam) in rows {
        for m in &r.models {
            let _ = write!(s, "| {name} | {}{} |", m.label, if m.baseline { " (baseline)" } else { "" });
            for t in &m.adherence {
                let cell = match &fam {
                    Some(f) => t.families.get(f).map(pct).unwrap_or_else(|| "-".into()),
                    None => pct(&t.all),
                };
                let _ = write!(s, " {cell} |");
            }
            s.push('\n');
        }
    }
    // by value at the last turn: a model that ignores the instruction and always answers one way
    // obeys one value of a family and not the others
    let mut values: Vec<String> = r.models.iter().flat_map(|m| m.adherence.last().into_iter().flat_map(|t| t.by_value.keys().cloned())).collect();
    values.sort();
    values.dedup();
    if let Some(last) = r.turns.last() {
        let _ = writeln!(s, "\nBy the constraint's value, at turn {last}:\n\n| constraint: value | model | turn {last} |\n|---|---|---|");
        for v in &values {
            for m in &r.models {
                let cell = m.adherence.last().and_then(|t| t.by_value.get(v)).map(pct).unwrap_or_else(|| "-".into());
                let _ = writeln!(s, "| {v} | {}{} | {cell} |", m.label, if m.baseline { " (baseline)" } else { "" });
            }
        }
    }
    let with_att: Vec<&ModelEval> = r.models.iter().filter(|m| !m.attention.is_empty()).collect();
    if let Some(first) = with_att.first() {
        let layers = first.attention[0].per_layer.len();
        let _ = writeln!(s, "\n## Attention on the system message\n");
        let _ = writeln!(
            s,
            "Attention mass of each answer token on the tokens of the instruction in the system message, the maximum over heads, averaged over the answer's tokens and the dialogs, per layer; `mean` over layers, with its standard error over dialogs.\n"
        );
        for (title, shared) in [("On each model's own dialogs", false), ("On the same dialogs for every model (those of the first model listed)", true)] {
            let _ = write!(s, "{title}:\n\n| model | turn | dialogs |");
            for l in 0..layers {
                let _ = write!(s, " layer {l} |");
            }
            let _ = write!(s, " mean +- se |\n|---|---|---|");
            for _ in 0..=layers {
                let _ = write!(s, "---|");
            }
            s.push('\n');
            for m in &with_att {
                for a in if shared { &m.attention_shared } else { &m.attention } {
                    let _ = write!(s, "| {} | {} | {} |", m.label, a.turn, a.dialogs);
                    for x in &a.per_layer {
                        let _ = write!(s, " {x:.4} |");
                    }
                    let _ = writeln!(s, " {:.4} +- {:.4} |", a.mean, a.mean_se);
                }
            }
            s.push('\n');
        }
        let _ = writeln!(s, "\n![attention on the system message](gatt_attention.png)");
    }
    s
}

#[derive(Args, Clone, Debug)]
pub struct GattStageArgs {
    /// The policy (HF model directory; the latest RLHF model in the paper)
    #[arg(long)]
    pub policy: PathBuf,
    /// Tokenizer (default: the one beside the policy)
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Dialog datasets for the GAtt samples (multi-turn used as they are, single-turn chained)
    #[arg(long, num_args = 1.., required = true)]
    pub dialogs: Vec<PathBuf>,
    #[command(flatten)]
    pub inst: InstructionFlags,
    /// Held-out dialogs whose user messages are the evaluation's user turns
    #[arg(long, num_args = 1.., required = true)]
    pub prompts: Vec<PathBuf>,
    /// Leave out evaluation prompts that occur in these files (the training data)
    #[arg(long, num_args = 1..)]
    pub exclude_from: Vec<PathBuf>,
    /// SFT dialog files mixed into both fine-tunes alike (for example the rejection-sampling pool),
    /// so that fine-tuning on the GAtt dialogs does not wash out what the policy learned before
    /// (the paper mixes its GAtt samples into the RS fine-tuning data)
    #[arg(long, num_args = 1..)]
    pub mix: Vec<PathBuf>,
    /// Output directory: gatt.jsonl, baseline.jsonl, gatt/ and no-gatt/ (SFT runs), eval/ (with --every-turn: every_turn.jsonl, every-turn/)
    #[arg(long)]
    pub out: PathBuf,
    /// Also fine-tune and evaluate the every-turn control (`every-turn`): the GAtt samples with
    /// the instruction left on every user turn, no system message (the same answers without the
    /// ghost trick; evaluated, like every model, with the instruction in turn 1 only)
    #[arg(long)]
    pub every_turn: bool,
    /// Dialogs to build
    #[arg(long, default_value_t = 160, value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    /// Fewest turns of a chained dialog
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub min_turns: u32,
    /// Most turns of a dialog
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_turns: u32,
    /// Training samples per dialog
    #[arg(long, value_enum, default_value_t = ExamplesArg::Prefixes)]
    pub examples: ExamplesArg,
    #[command(flatten)]
    pub best: BestOfFlags,
    /// Token budget of each sampled answer (building and evaluating)
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_new_tokens: u32,
    /// Sequence length of the fine-tuning (one sample per row) and token budget of a sample
    #[arg(long, default_value_t = 576, value_parser = clap::value_parser!(u32).range(8..))]
    pub seq_len: u32,
    /// Fine-tuning batch size
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Fine-tuning steps (the same for GAtt and the baseline)
    #[arg(long, default_value_t = 180, value_parser = clap::value_parser!(u64).range(1..))]
    pub steps: u64,
    /// Fine-tuning peak learning rate (cosine, 3% warm-up)
    #[arg(long, default_value_t = 5e-4, value_parser = crate::flags::parse_lr)]
    pub lr: f64,
    /// Turns to measure
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,6,20")]
    pub turns: Vec<usize>,
    /// Evaluation dialogs
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u32).range(1..))]
    pub eval_dialogs: u32,
    /// Sequences decoded together
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch: u32,
    /// Seed of every stream (dialogs, instructions, sampling, shuffling, evaluation)
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

fn stage_sft(init: &Path, tokenizer: &Path, data: &Path, out: &Path, a: &GattStageArgs) -> Result<()> {
    use crate::cmd::sft::{PackingArg, SftArgs};
    use crate::flags::{LmHeadFlags, OptFlags, RunFlags};
    let mut files = vec![data.to_path_buf()];
    files.extend(a.mix.iter().cloned());
    crate::cmd::sft::run(SftArgs {
        init: Some(init.to_path_buf()),
        data: files,
        tokenizer: Some(tokenizer.to_path_buf()),
        val_fraction: 0.05,
        batch_size: a.batch_size,
        seq_len: a.seq_len,
        epochs: 1,
        lr: a.lr,
        warmup_steps: None,
        min_lr_ratio: 0.1,
        packing: PackingArg::Whole,
        samples: 0,
        sample_tokens: a.max_new_tokens,
        sample_temperature: 0.7,
        sample_top_p: 0.9,
        opt: OptFlags { weight_decay: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-5, grad_clip: 1.0 },
        run: RunFlags {
            steps: Some(a.steps),
            grad_accum: 1,
            zero: 1,
            save_every: 0,
            keep_last: 1,
            resume: None,
            out: out.to_path_buf(),
            seed: a.seed,
            val_every: 0,
            val_batches: 20,
            stop_after: None,
            quiet: false,
            power_watts: None,
            carbon_intensity: 0.385,
            peak_tflops: None,
        },
        head: LmHeadFlags::default(),
        dev: a.dev.clone(),
    })
}

/// `gatt stage`: build, fine-tune with and without GAtt, evaluate.
pub fn stage(a: GattStageArgs) -> Result<EvalReport> {
    let (g, b, e) = (a.out.join("gatt.jsonl"), a.out.join("baseline.jsonl"), a.out.join("every_turn.jsonl"));
    let tokenizer = match &a.tokenizer {
        Some(t) => t.clone(),
        None => ["tokenizer.model", "tokenizer.json", "tokenizer.gguf"]
            .iter()
            .map(|f| a.policy.join(f))
            .find(|p| p.is_file())
            .with_context(|| format!("no tokenizer beside {}; HINT: pass --tokenizer PATH", a.policy.display()))?,
    };
    let st = build(GattBuildArgs {
        policy: a.policy.clone(),
        tokenizer: Some(tokenizer.clone()),
        dialogs: a.dialogs.clone(),
        inst: a.inst.clone(),
        out: g.clone(),
        baseline_out: Some(b.clone()),
        every_turn_out: a.every_turn.then(|| e.clone()),
        best: a.best.clone(),
        count: a.count,
        min_turns: a.min_turns,
        max_turns: a.max_turns,
        examples: a.examples,
        max_new_tokens: a.max_new_tokens,
        max_tokens: a.seq_len,
        temperature: 0.7,
        top_p: 0.9,
        batch: a.batch,
        seed: a.seed,
        dev: a.dev.clone(),
    })?;
    llama2_model::atomic::write_atomic(&a.out.join("build.json"), serde_json::to_string_pretty(&st)?.as_bytes())?;
    let (gdir, bdir) = (a.out.join("gatt"), a.out.join("no-gatt"));
    stage_sft(&a.policy, &tokenizer, &g, &gdir, &a)?;
    stage_sft(&a.policy, &tokenizer, &b, &bdir, &a)?;
    let edir = a.out.join("every-turn");
    if a.every_turn {
        stage_sft(&a.policy, &tokenizer, &e, &edir, &a)?;
    }
    let spec = |l: &str, d: &Path| format!("{l}={}", d.display());
    let mut baselines = vec![spec("policy", &a.policy), spec("no-gatt", &bdir.join("final"))];
    if a.every_turn {
        baselines.push(spec("every-turn", &edir.join("final")));
    }
    eval(GattEvalArgs {
        model: vec![spec("gatt", &gdir.join("final"))],
        baseline: baselines,
        tokenizer: Some(tokenizer),
        inst: a.inst.clone(),
        prompts: a.prompts.clone(),
        exclude_from: a.exclude_from.clone(),
        turns: a.turns.clone(),
        dialogs: a.eval_dialogs,
        max_prompt_tokens: 40,
        max_new_tokens: a.max_new_tokens,
        max_tokens: None,
        temperature: 0.7,
        top_p: 0.9,
        batch: a.batch,
        no_attention: false,
        out: a.out.join("eval"),
        seed: a.seed,
        dev: a.dev.clone(),
    })
}
