//! `train-tool pipeline`: the project's main job, the whole Llama 2 recipe
//! on data shipped with the repo, deterministic from `--seed`.
//!
//! Stages, in order ([`STAGES`]); each writes its own directory under
//! `runs/<name>/` and, when finished, `<stage>/DONE.json` (`{"stage",
//! "seconds", "cpu_seconds", "results"}`), so a restarted run skips the
//! stages already done:
//! 1. `tokenizer`: a BPE vocabulary (Llama settings) on the corpus (Jane
//!    Austen) and token shards, paragraphs as documents, every 20th held out;
//! 2. `pretrain`: a tiny Llama (warm-up + cosine, AdamW, the paper's
//!    optimizer settings);
//! 3. `sft`: the instruction set (short dialogs) plus the annotator's safety
//!    demonstrations, Llama-2-chat format, loss on answers; held-out safe
//!    prompts are set aside for the evaluation, with chat samples;
//! 4. `preferences`: two answers per RLHF prompt from two variants of the
//!    SFT model (two temperatures), labelled by the synthetic annotator
//!    (Bradley-Terry noise, rating buckets, safety labels); a seeded share
//!    of the pairs is held out;
//! 5. `rm`: a helpfulness and a safety reward model (the paper's mixtures),
//!    each evaluated on its held-out pairs by rating bucket (Table 8);
//! 6. `rs`: rejection sampling, iterations pooled (Figure 7 per iteration);
//! 7. `ppo`: PPO on top of the RS model, both reward models;
//! 8. `gatt`: Ghost Attention data from the PPO model, fine-tuning with and
//!    without GAtt, adherence by turn and the attention picture;
//! 9. `eval`: SFT, RS, PPO and GAtt models on the held-out prompts, judged by
//!    the annotator: gold helpfulness, reward, safety rates, win rate
//!    against SFT, Self-BLEU against temperature;
//! 10. `report`: `report.md` (every table and PNG) and `results.json`
//!     (always rewritten).
//!
//! `--from STAGE` redoes STAGE and every later one (their directories are
//! removed first); `--until STAGE` stops after it.
//!
//! Public items: [`PipelineArgs`], [`STAGES`], [`run`].

mod report;
mod stages;

use crate::device::DeviceOpts;
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The stages, in the order they run.
pub const STAGES: [&str; 10] = ["tokenizer", "pretrain", "sft", "preferences", "rm", "rs", "ppo", "gatt", "eval", "report"];

fn parse_stage(s: &str) -> std::result::Result<String, String> {
    if STAGES.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!("unknown stage `{s}`; HINT: the stages are {}", STAGES.join(", ")))
    }
}

fn parse_temps(s: &str) -> std::result::Result<Vec<f32>, String> {
    let mut v = Vec::new();
    for x in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        let t = crate::flags::parse_temperature(x)?;
        if t <= 0.0 || v.contains(&t) {
            return Err(format!("temperature {t}: Self-BLEU temperatures must be > 0 and listed once"));
        }
        v.push(t);
    }
    if v.is_empty() {
        return Err("no temperature given".into());
    }
    Ok(v)
}

fn parse_share(s: &str) -> std::result::Result<f64, String> {
    let x: f64 = s.parse().map_err(|e| format!("`{s}`: {e}"))?;
    if !(0.0..1.0).contains(&x) {
        return Err(format!("{x}: a share is in [0, 1)"));
    }
    Ok(x)
}

fn parse_turns(s: &str) -> std::result::Result<Vec<usize>, String> {
    let mut v: Vec<usize> = Vec::new();
    for x in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        let t: usize = x.parse().map_err(|e| format!("`{x}`: {e}"))?;
        if t == 0 || v.last().is_some_and(|&l| l >= t) {
            return Err("turns are increasing numbers from 1 (for example 1,2,4)".into());
        }
        v.push(t);
    }
    if v.is_empty() {
        return Err("no turn given".into());
    }
    Ok(v)
}

/// `--gatt-families`: names, comma-separated, or `all` (returned empty: every family of the file).
fn parse_families(s: &str) -> std::result::Result<Vec<String>, String> {
    let v: Vec<String> = s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(String::from).collect();
    if v.is_empty() {
        return Err("no family given (names from data/gatt/instructions.json, or `all`)".into());
    }
    if v.iter().any(|x| x == "all") {
        return if v.len() == 1 { Ok(Vec::new()) } else { Err("`all` stands alone".into()) };
    }
    Ok(v)
}

#[derive(Args, Clone, Debug, serde::Serialize)]
pub struct PipelineArgs {
    /// Run name: everything goes to `runs/<name>/`
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Directory of the runs
    #[arg(long, default_value = "runs")]
    pub runs_dir: PathBuf,
    /// Redo this stage and every later one (their outputs are removed first); the earlier ones must be done
    #[arg(long, value_parser = parse_stage)]
    pub from: Option<String>,
    /// Stop after this stage
    #[arg(long, value_parser = parse_stage)]
    pub until: Option<String>,
    /// Corpus: text files or directories of .txt files (default: the Jane Austen novels in data/corpus)
    #[arg(long, num_args = 1..)]
    pub corpus: Vec<PathBuf>,
    /// SFT dialogs (default: data/sft/alpaca_en_demo.json)
    #[arg(long, num_args = 1..)]
    pub sft_data: Vec<PathBuf>,
    /// BPE vocabulary size
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(300..=65536))]
    pub vocab_size: u32,
    /// Model shape (a preset: tiny, small, ...)
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Pretraining steps
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub pretrain_steps: u64,
    /// Pretraining batch size
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Sequence length (pretraining and SFT)
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(8..))]
    pub seq_len: u32,
    /// Pretraining peak learning rate (a tiny model takes a larger one than the paper's 3e-4 for 7B)
    #[arg(long, default_value_t = 2e-3, value_parser = crate::flags::parse_lr)]
    pub lr: f64,
    /// SFT epochs
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub sft_epochs: u32,
    /// SFT peak learning rate (the paper's 2e-5 is for 7B; a tiny model takes more)
    #[arg(long, default_value_t = 1e-3, value_parser = crate::flags::parse_lr)]
    pub sft_lr: f64,
    /// SFT keeps dialogs of at most this many tokens (short answers suit a tiny model)
    #[arg(long, default_value_t = 160, value_parser = clap::value_parser!(u32).range(16..))]
    pub sft_max_tokens: u32,
    /// Held-out chat prompts answered at the end of SFT (the SFT run's own validation dialogs)
    #[arg(long, default_value_t = 40)]
    pub samples: usize,
    /// SFT safety demonstrations (refusals of unsafe training prompts) mixed into the SFT data
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u32).range(0..=100000))]
    pub safety_demos: u32,
    /// Held-out safe instruction prompts of the final evaluation (never trained on; with the held-out safety prompts)
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u32).range(1..=100000))]
    pub eval_prompts: u32,
    /// Instruction prompts of RLHF (preferences, rejection sampling, PPO; with the safety training prompts)
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=100000))]
    pub rlhf_prompts: u32,
    /// Longest sampled answer in tokens (preferences, RS, PPO, evaluation)
    #[arg(long, default_value_t = 96, value_parser = clap::value_parser!(u32).range(4..=4096))]
    pub max_new_tokens: u32,
    /// Preference pairs: the two temperatures of the SFT model's answers
    #[arg(long, value_delimiter = ',', default_value = "0.7,1.2", value_parser = crate::flags::parse_temperature)]
    pub pref_temperatures: Vec<f32>,
    /// Preference pairs per RLHF prompt (each from its own random streams)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub pref_pairs_per_prompt: u32,
    /// Share of the RLHF prompts whose labelled pairs are held out to measure the reward models
    #[arg(long, default_value_t = 0.2, value_parser = crate::cmd::evaluate::parse_fraction)]
    pub rm_val_fraction: f64,
    /// Reward-model epochs
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub rm_epochs: u32,
    /// Reward-model peak learning rate (the paper's 1e-5 is for 7B; a tiny model takes more)
    #[arg(long, default_value_t = 3e-4, value_parser = crate::flags::parse_lr)]
    pub rm_lr: f64,
    /// Reward-model score centring C·mean((r_c + r_r)²) (Eisenstein et al.'s 0.01): anchors the
    /// scores at 0 so that the paper's threshold sigmoid(safety) < 0.15 reads a calibrated scale
    #[arg(long, default_value_t = 0.01, value_parser = crate::cmd::rm::parse_coef)]
    pub rm_center_coef: f64,
    /// SFT: system-message demonstrations (`gatt demos`: an instruction as the system message, the
    /// answer rewritten to obey it) mixed into the SFT data, so the model can follow an
    /// instruction at the first turn before GAtt carries it to later turns (0 = none)
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(0..=100000))]
    pub gatt_demos: u32,
    /// Rejection sampling and PPO: the safety RM decides where sigmoid(safety score) is below this
    /// (the paper's 0.15) or the prompt is tagged unsafe
    #[arg(long, default_value_t = 0.15, value_parser = crate::cmd::evaluate::parse_fraction)]
    pub safety_threshold: f64,
    /// Rejection sampling: answers per prompt (K)
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rs_k: u32,
    /// Rejection sampling: iterations (pooled)
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rs_iterations: u32,
    /// Rejection sampling: fine-tuning epochs per iteration
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub rs_epochs: u32,
    /// Rejection sampling: fine-tuning peak learning rate
    #[arg(long, default_value_t = 3e-4, value_parser = crate::flags::parse_lr)]
    pub rs_lr: f64,
    /// Rejection sampling: sampling temperature
    #[arg(long, default_value_t = 1.0, value_parser = crate::flags::parse_temperature)]
    pub rs_temperature: f32,
    /// PPO iterations
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    pub ppo_iterations: u64,
    /// PPO prompts: the share of unsafe prompts (every safe instruction and borderline prompt is
    /// kept, a seeded subset of the unsafe training prompts added up to this share). The RS model
    /// already refuses most unsafe prompts; a large unsafe share makes PPO push refusals onto
    /// safe prompts too (measured: docs/pipeline.md)
    #[arg(long, default_value_t = 0.15, value_parser = parse_share)]
    pub ppo_unsafe_share: f64,
    /// PPO episodes per iteration
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub ppo_prompts_per_iter: u32,
    /// PPO episodes per optimizer step
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub ppo_minibatch: u32,
    /// PPO policy learning rate (the paper's 1e-6 is for 7B+)
    #[arg(long, default_value_t = 2e-5, value_parser = crate::flags::parse_lr)]
    pub ppo_lr: f64,
    /// PPO KL penalty beta
    #[arg(long, default_value_t = 0.01, value_parser = crate::cmd::evaluate::parse_fraction)]
    pub ppo_beta: f64,
    /// GAtt instruction families of data/gatt/instructions.json (system-message demonstrations in
    /// SFT, GAtt data, evaluation), comma-separated; `all` for every family of the file. The
    /// default is the one family the tiny model learns to follow: answer in capital or in small
    /// letters (docs/gatt.md)
    #[arg(long, default_value = "case", value_parser = parse_families)]
    pub gatt_families: std::vec::Vec<String>,
    /// GAtt dialogs built
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub gatt_count: u32,
    /// GAtt fine-tuning steps (the same with and without GAtt)
    #[arg(long, default_value_t = 160, value_parser = clap::value_parser!(u64).range(1..))]
    pub gatt_steps: u64,
    /// GAtt building: samples per turn, the one obeying the most of the instruction's checkable
    /// constraints kept (then the helpfulness RM's best): the tiny model does not follow an
    /// instruction by itself, which the paper's GAtt assumes of its RLHF model (1 = no choice)
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub gatt_k: u32,
    /// GAtt building: rewrite each kept answer that still breaks a checkable constraint so that it
    /// obeys (`gatt build --comply`), a stand-in for a policy that follows an instruction it sees
    /// on every turn, which the tiny model does not
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    pub gatt_comply: bool,
    /// GAtt: also fine-tune and evaluate the every-turn control (the same answers, the instruction
    /// on every user turn, no system message: what the ghost trick adds to obeying answers)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    pub gatt_every_turn: bool,
    /// GAtt fine-tuning peak learning rate (the same with and without GAtt)
    #[arg(long, default_value_t = 5e-4, value_parser = crate::flags::parse_lr)]
    pub gatt_lr: f64,
    /// GAtt fine-tuning batch size (one dialog per row)
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub gatt_batch_size: u32,
    /// GAtt turns measured
    #[arg(long, default_value = "1,2,4", value_parser = parse_turns)]
    pub gatt_turns: std::vec::Vec<usize>,
    /// GAtt evaluation dialogs
    #[arg(long, default_value_t = 96, value_parser = clap::value_parser!(u32).range(1..))]
    pub gatt_eval_dialogs: u32,
    /// Token budget of each GAtt answer (building and evaluating)
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub gatt_max_new_tokens: u32,
    /// Evaluation: answers per held-out prompt and model, each from its own random stream (more
    /// answers, smaller standard errors; the prompts are few)
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub eval_samples: u32,
    /// Self-BLEU: samples per prompt (the paper: 25)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub self_bleu_samples: u32,
    /// Self-BLEU: temperatures, comma-separated (the paper: 0.1 to 1.5)
    #[arg(long, default_value = "0.1,0.5,0.9,1.3", value_parser = parse_temps)]
    pub self_bleu_temperatures: std::vec::Vec<f32>,
    /// Evaluation sampling temperature (top-p 0.9, as `train-tool chat`)
    #[arg(long, default_value_t = 0.7, value_parser = crate::flags::parse_temperature)]
    pub eval_temperature: f32,
    /// Seed of every random stream
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    #[command(flatten)]
    #[serde(skip)]
    pub dev: DeviceOpts,
}

/// Where the run lives and what it reads.
pub(crate) struct Ctx {
    pub a: PipelineArgs,
    pub run: PathBuf,
    pub corpus: Vec<PathBuf>,
    pub sft_data: Vec<PathBuf>,
}

impl Ctx {
    pub fn dir(&self, stage: &str) -> PathBuf {
        self.run.join(stage)
    }
    pub fn data(&self, f: &str) -> PathBuf {
        self.run.join("data").join(f)
    }
    pub fn tokenizer(&self) -> PathBuf {
        self.run.join("tokenizer.model")
    }
}

pub(crate) fn repo_default(rel: &str) -> PathBuf {
    // next to the working directory first (a clone), then next to the binary's source tree
    let here = PathBuf::from(rel);
    if here.exists() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// A finished stage's marker.
pub(crate) fn marker(run: &Path, stage: &str) -> PathBuf {
    run.join(stage).join("DONE.json")
}

/// The results of a finished stage (its marker's `results`).
pub(crate) fn read_marker(run: &Path, stage: &str) -> Result<Value> {
    let p = marker(run, stage);
    let t = std::fs::read_to_string(&p).with_context(|| format!("reading {}; HINT: run the stage `{stage}` first (drop --from)", p.display()))?;
    serde_json::from_str(&t).with_context(|| format!("{} is not valid JSON; HINT: rerun with --from {stage}", p.display()))
}

/// CPU seconds of this process so far (user + system, from /proc; None elsewhere).
fn cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // fields after the command name (which is in parentheses and may hold spaces)
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; clock ticks of 1/100 s (Linux's USER_HZ)
    let (u, st): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((u + st) / 100.0)
}

/// The options a restarted run must share with the one that started it
/// (everything but the stage selection and the device).
fn settings(a: &PipelineArgs) -> Result<Value> {
    let mut v = serde_json::to_value(a)?;
    if let Value::Object(m) = &mut v {
        for k in ["from", "until", "name", "runs_dir"] {
            m.remove(k);
        }
    }
    Ok(v)
}

pub fn run(a: PipelineArgs) -> Result<()> {
    if a.pref_temperatures.len() != 2 || a.pref_temperatures[0] == a.pref_temperatures[1] {
        bail!("--pref-temperatures takes two different temperatures (for example 0.7,1.2); HINT: the two answers of a pair come from two variants");
    }
    // an unknown GAtt family is refused now, not after the stages before GAtt
    llama2_train::gatt::load_instructions(&repo_default("data/gatt/instructions.json"), &a.gatt_families).context("--gatt-families")?;
    let run = a.runs_dir.join(&a.name);
    std::fs::create_dir_all(&run).with_context(|| format!("creating {}", run.display()))?;
    let from = a.from.as_deref().map(|s| STAGES.iter().position(|x| *x == s).unwrap_or(0));
    let until = a.until.as_deref().map(|s| STAGES.iter().position(|x| *x == s).unwrap_or(STAGES.len() - 1)).unwrap_or(STAGES.len() - 1);
    if let Some(f) = from {
        if f > until {
            bail!("--from {} comes after --until {}; HINT: the order is {}", STAGES[f], STAGES[until], STAGES.join(", "));
        }
    }
    // the settings of the run: a restart must keep them (or redo the stages from the changed one on)
    let cfg_path = run.join("pipeline.config.json");
    let now = settings(&a)?;
    if cfg_path.is_file() && from.is_none() {
        let saved: Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path)?).with_context(|| format!("reading {}", cfg_path.display()))?;
        if let (Some(s), Some(n)) = (saved.as_object(), now.as_object()) {
            let changed: Vec<String> = n.iter().filter(|(k, v)| s.get(*k) != Some(v)).map(|(k, _)| format!("--{}", k.replace('_', "-"))).collect();
            let any_done = STAGES.iter().any(|st| marker(&run, st).is_file());
            if !changed.is_empty() && any_done {
                bail!(
                    "{} was started with other settings ({} differ); HINT: continue with the same flags, redo the affected stages with --from STAGE, or use another --name",
                    run.display(),
                    changed.join(", ")
                );
            }
        }
    }
    llama2_model::weights::write_atomic(&cfg_path, serde_json::to_string_pretty(&now)?.as_bytes())?;
    let corpus = if a.corpus.is_empty() { vec![repo_default("data/corpus/janeausten")] } else { a.corpus.clone() };
    let sft_data = if a.sft_data.is_empty() { vec![repo_default("data/sft/alpaca_en_demo.json")] } else { a.sft_data.clone() };
    let ctx = Ctx { a, run: run.clone(), corpus, sft_data };

    for (i, stage) in STAGES.iter().enumerate().take(until + 1) {
        if *stage == "report" {
            break;
        }
        let redo = from.is_some_and(|f| i >= f);
        let done = marker(&run, stage).is_file();
        if redo {
            let d = ctx.dir(stage);
            if d.exists() {
                std::fs::remove_dir_all(&d).with_context(|| format!("removing {} (--from)", d.display()))?;
            }
        } else if done {
            eprintln!("[pipeline] {stage}: done before, skipped ({})", marker(&run, stage).display());
            continue;
        } else if from.is_some() {
            bail!("--from {}: the earlier stage `{stage}` is not done; HINT: run from `{stage}` (or drop --from)", STAGES[from.unwrap_or(0)]);
        }
        eprintln!("[pipeline] {stage}: starting");
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let results = stages::run_stage(&ctx, stage)?;
        let secs = t0.elapsed().as_secs_f64();
        let cpu = match (c0, cpu_seconds()) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        std::fs::create_dir_all(ctx.dir(stage))?;
        let m = json!({"stage": stage, "seconds": secs, "cpu_seconds": cpu, "results": results});
        llama2_model::weights::write_atomic(&marker(&run, stage), serde_json::to_string_pretty(&m)?.as_bytes())?;
        eprintln!("[pipeline] {stage}: {secs:.1} s{}", cpu.map(|c| format!(" ({c:.1} CPU s)")).unwrap_or_default());
    }
    if until == STAGES.len() - 1 {
        report::write(&ctx)?;
    } else {
        eprintln!("[pipeline] stopped after `{}` (--until)", STAGES[until]);
    }
    Ok(())
}
