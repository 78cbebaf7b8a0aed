//! `train-tool rm`: reward models (PAPER.md section 5), Hugging Face
//! `LlamaForSequenceClassification` directories (one label).
//!
//! - `rm init`: a reward model from a causal LM (trunk copied, `lm_head`
//!   dropped, `score.weight ~ N(0, 1/(hidden+1))`, a pad id that is not EOS);
//! - `rm train`: the margin ranking loss (`llama2_train::reward`) through the
//!   run loop of pretraining and SFT, with the paper's recipe as defaults;
//! - `rm score`: one `{"score", "prob"}` line per input sequence;
//! - `rm eval`: accuracy overall, per rating bucket and per safety category
//!   (JSON on stdout, a table on stderr, JSON + PNG with `--out`).
//!
//! Also here, called from their command groups: `debug rm-grads` (the
//! gradient of the loss of a file of pairs, for parity checks) and `bench
//! rm-step` (one training step, for tools/bench/rm_step_vs_torch.sh).
//!
//! Public items: [`RmArgs`], [`run`], [`RmGradsArgs`], [`rm_grads`],
//! [`RmStepArgs`], [`rm_step`].

use crate::cmd::bench::{median, peak_rss_mib, ModelChoice};
use crate::cmd::train_common::finish;
use crate::device::{dispatch, DeviceOpts, Job};
use crate::flags::{OptFlags, RunFlags};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use llama2_model::chat::{encode_dialog, Message, Role};
use llama2_model::config::Head;
use llama2_model::tokenizer::Tokenizer;
use llama2_model::weights::{save_safetensors, write_atomic, SaveDtype};
use llama2_model::{Config, Model};
use llama2_runtime::rng::Rng;
use llama2_runtime::{v, vm, Backend, CpuBackend};
use llama2_tools::plot::{save_png, BarChart, BarSeries, LineChart, Series};
use llama2_train::checkpoint;
use llama2_train::optim::AdamWConfig;
use llama2_train::reward::data::{load_pairs, mix, prompt_of, read_records, Margin, Mix, Pair, PairBatch, PairData, Rating, Source};
use llama2_train::reward::eval::{evaluate_scores, RmEval};
use llama2_train::reward::{init_from_lm, score_sequences, RewardTrainer, SCORE_STD_NOTE};
use llama2_train::run::{run as run_loop, BatchSource};
use llama2_train::schedule::LrSchedule;
use llama2_train::session::begin;
use llama2_train::trainer::{train_step, Objective};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Clone, Debug)]
pub struct RmArgs {
    #[command(subcommand)]
    pub cmd: RmCmd,
}

#[derive(Subcommand, Clone, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum RmCmd {
    /// Make a reward model from a causal LM (trunk copied, score head drawn)
    Init(InitArgs),
    /// Train a reward model on preference pairs (margin ranking loss)
    Train(TrainArgs),
    /// Score sequences: one {"score", "prob"} line per input line
    Score(ScoreArgs),
    /// Accuracy on preference pairs, overall, by rating and by safety category
    Eval(EvalArgs),
}

/// `--margin`: the margin table of the loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MarginArg {
    /// no margin (the plain binary ranking loss)
    None,
    /// 1, 2/3, 1/3, 0 (the paper's Table 27)
    Small,
    /// 3, 2, 1, 0 (the paper's Table 27)
    Large,
}

impl MarginArg {
    fn margin(self) -> Margin {
        match self {
            MarginArg::None => Margin::None,
            MarginArg::Small => Margin::Small,
            MarginArg::Large => Margin::Large,
        }
    }
}

/// `--mix`: which reward model's mixture to build from labelled files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MixArg {
    /// every pair of every file, as given
    None,
    /// all helpful pairs + as many drawn from safety and other pairs
    Helpfulness,
    /// all safety pairs + helpful and other pairs drawn to make 10% of the mixture
    Safety,
}

pub(crate) fn parse_coef(s: &str) -> std::result::Result<f64, String> {
    let x: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(x >= 0.0 && x.is_finite()) {
        return Err(format!("{x} must be a finite number >= 0"));
    }
    Ok(x)
}

#[derive(Args, Clone, Debug)]
pub struct InitArgs {
    /// The causal LM to start from (HF directory: LlamaForCausalLM)
    #[arg(long)]
    pub init: PathBuf,
    /// Output directory (the reward model, HF LlamaForSequenceClassification)
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the score head's weights
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
}

#[derive(Args, Clone, Debug)]
pub struct TrainArgs {
    /// A reward model to continue, or a causal LM (chat/SFT) to start from (initialised as `rm init` does, with --seed)
    #[arg(long, required_unless_present = "resume")]
    pub init: Option<PathBuf>,
    /// Preference pairs (JSON Lines or JSON arrays), each optionally labelled for --mix: helpful=F, safety=F, other=F
    #[arg(long, num_args = 1.., required = true)]
    pub data: Vec<String>,
    /// Held-out pairs: validation loss and accuracy during the run, accuracy by rating at the end
    #[arg(long, num_args = 1..)]
    pub val_data: Vec<PathBuf>,
    /// Tokenizer for text pairs (.model, .gguf or tokenizer.json; default: the one beside --init)
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Build the paper's mixture for a helpfulness or a safety reward model from labelled --data files
    #[arg(long, value_enum, default_value = "none")]
    pub mix: MixArg,
    /// Margin table of the ranking loss (the paper's Table 27)
    #[arg(long, value_enum, default_value = "small")]
    pub margin: MarginArg,
    /// Adds C * mean((r_c + r_r)^2) to the loss (TRL's reward centring; 0 = off)
    #[arg(long, default_value_t = 0.0, value_parser = parse_coef)]
    pub center_coef: f64,
    /// Longest sequence (prompt + answer) in tokens; longer pairs are dropped and counted (default: 1024, or the model's positions if fewer)
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=1048576))]
    pub max_len: Option<u32>,
    /// Pairs per micro-batch (both answers of a pair run in the same batch; the paper: 512 pairs per step, e.g. 8 x --grad-accum 64)
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub batch_size: u32,
    /// Passes over the training pairs (the paper: 1, longer overfits); sets --steps unless given
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub epochs: u32,
    /// Peak learning rate (the paper: 1e-5; 5e-6 for 70B)
    #[arg(long, default_value_t = 1e-5, value_parser = crate::flags::parse_lr)]
    pub lr: f64,
    /// Warm-up steps (default: the paper's 3% of the steps, at least 5)
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// The cosine schedule ends at this fraction of the peak (the paper: 10%)
    #[arg(long, default_value_t = 0.1, value_parser = crate::flags::parse_unit)]
    pub min_lr_ratio: f64,
    #[command(flatten)]
    pub opt: OptFlags,
    #[command(flatten)]
    pub run: RunFlags,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

#[derive(Args, Clone, Debug)]
pub struct ScoreArgs {
    /// The reward model (HF LlamaForSequenceClassification directory)
    #[arg(long)]
    pub model: PathBuf,
    /// JSON Lines: {"prompt_ids", "response_ids"} or {"prompt" | "messages", "response"}
    #[arg(long)]
    pub input: PathBuf,
    /// Tokenizer for text lines (default: the one beside the model)
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Sequences per forward batch
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub batch_size: u32,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

#[derive(Args, Clone, Debug)]
pub struct EvalArgs {
    /// The reward model (HF LlamaForSequenceClassification directory)
    #[arg(long)]
    pub model: PathBuf,
    /// Preference pairs (JSON Lines or JSON arrays; the formats of `rm train`)
    #[arg(long, num_args = 1.., required = true)]
    pub data: Vec<PathBuf>,
    /// Tokenizer for text pairs (default: the one beside the model)
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Margin table of the reported mean loss
    #[arg(long, value_enum, default_value = "small")]
    pub margin: MarginArg,
    /// Longest sequence in tokens; longer pairs are dropped and counted (default: the model's positions)
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=1048576))]
    pub max_len: Option<u32>,
    /// Sequences per forward batch
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub batch_size: u32,
    /// Also write OUT/rm_eval.json and OUT/rm_eval.png (accuracy per rating bucket)
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

/// The tokenizer given (which must load), or the first one found in `dirs`
/// (None when there is none: token-id data needs none).
fn tokenizer_for(given: &Option<PathBuf>, dirs: &[&Path]) -> Result<Option<Tokenizer>> {
    if let Some(p) = given {
        return Ok(Some(Tokenizer::load(p).with_context(|| format!("loading the tokenizer {}", p.display()))?));
    }
    for d in dirs {
        for f in ["tokenizer.model", "tokenizer.json", "tokenizer.gguf"] {
            let p = d.join(f);
            if p.is_file() {
                return Ok(Some(Tokenizer::load(&p).with_context(|| format!("loading the tokenizer {}", p.display()))?));
            }
        }
    }
    Ok(None)
}

fn check_vocab(tok: &Option<Tokenizer>, cfg: &Config) -> Result<()> {
    if let Some(t) = tok {
        if t.vocab_size() != cfg.vocab_size {
            bail!("the tokenizer has {} pieces but the model's vocabulary is {}; HINT: pass the model's own tokenizer", t.vocab_size(), cfg.vocab_size);
        }
    }
    Ok(())
}

/// A reward model directory (an error naming it for a causal LM).
fn load_rm<B: Backend>(be: &B, dir: &Path) -> Result<Model<B>> {
    let model = Model::load(be, dir).with_context(|| format!("loading the reward model {}", dir.display()))?;
    if model.cfg.head != Head::Score {
        bail!(
            "{} is a causal LM (LlamaForCausalLM), not a reward model; HINT: make one with `train-tool rm init --init {} --out RM_DIR`",
            dir.display(),
            dir.display()
        );
    }
    Ok(model)
}

/// Tokenizer files copied next to a model made from `src`.
const TOKENIZER_FILES: [&str; 5] = ["tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.gguf"];

fn copy_tokenizer_files(src: &Path, dst: &Path) -> Result<()> {
    for f in TOKENIZER_FILES {
        let p = src.join(f);
        if p.is_file() {
            let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            write_atomic(&dst.join(f), &bytes)?;
        }
    }
    Ok(())
}

/// A tokenizer given by path, copied beside a model under the name the
/// tools look for (`tokenizer.model`, `.json` or `.gguf` by its extension).
fn copy_given_tokenizer(path: &Path, dst: &Path) -> Result<()> {
    let name = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => "tokenizer.json",
        Some("gguf") => "tokenizer.gguf",
        _ => "tokenizer.model",
    };
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    write_atomic(&dst.join(name), &bytes)?;
    Ok(())
}

fn announce_init(dir: &Path, m: &Config) {
    eprintln!(
        "reward model from the causal LM {}: trunk copied, lm_head dropped, {SCORE_STD_NOTE} (std {:.4}), pad_token_id {}",
        dir.display(),
        1.0 / ((m.hidden + 1) as f64).sqrt(),
        m.pad_id.unwrap_or(0)
    );
}

fn init_cmd(a: InitArgs) -> Result<()> {
    let be = CpuBackend::new(1)?;
    let lm = Model::load(&be, &a.init).with_context(|| format!("loading {}", a.init.display()))?;
    if lm.cfg.head != Head::Lm {
        bail!("{} is already a reward model (LlamaForSequenceClassification); HINT: rm init takes a causal LM (LlamaForCausalLM)", a.init.display());
    }
    let rm = init_from_lm(&be, &lm, a.seed)?;
    rm.save(&be, &a.out, SaveDtype::F32).with_context(|| format!("writing {}", a.out.display()))?;
    copy_tokenizer_files(&a.init, &a.out)?;
    announce_init(&a.init, &rm.cfg);
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

/// `[LABEL=]PATH` of `--data`.
fn parse_source(s: &str) -> Result<(Option<Source>, PathBuf)> {
    if let Some((l, p)) = s.split_once('=') {
        if let Some(src) = Source::parse(l) {
            return Ok((Some(src), PathBuf::from(p)));
        }
        if !Path::new(s).exists() {
            bail!("--data {s}: unknown label `{l}`; HINT: label a file helpful=F, safety=F or other=F");
        }
    }
    Ok((None, PathBuf::from(s)))
}

/// The pairs of one `--data` file with its label.
type Labelled = (Option<Source>, Vec<Pair>);

/// Reads every file, logging the pairs dropped for length; returns the
/// pairs of each and the number dropped in all.
fn load_files(files: &[(Option<Source>, PathBuf)], tok: Option<&Tokenizer>, vocab: usize, max_len: usize) -> Result<(Vec<Labelled>, usize)> {
    let mut out = Vec::new();
    let mut dropped = 0;
    for (src, path) in files {
        let set = load_pairs(path, tok, vocab, max_len)?;
        if set.dropped > 0 {
            eprintln!("{}: dropped {} of {} pairs longer than {max_len} tokens (--max-len)", path.display(), set.dropped, set.records);
        }
        dropped += set.dropped;
        out.push((*src, set.pairs));
    }
    Ok((out, dropped))
}

struct TrainJob(TrainArgs);

impl Job for TrainJob {
    type Out = ();
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let a = self.0;
        let out = a.run.out.clone();
        let fresh = || -> Result<Vec<(String, Model<B>)>> {
            let dir = a.init.clone().context("--init DIR is required")?;
            let m = Model::load(be, &dir).with_context(|| format!("loading {}", dir.display()))?;
            let m = if m.cfg.head == Head::Lm {
                let rm = init_from_lm(be, &m, a.run.seed)?;
                announce_init(&dir, &rm.cfg);
                rm
            } else {
                m
            };
            Ok(vec![("model".to_string(), m)])
        };
        let begun = begin(be, a.run.resume.as_deref(), a.run.seed, fresh).with_context(|| format!("starting the run in {}", out.display()))?;
        let from = begun.from.clone();
        let (model, moments, state, resumed) = begun.single()?;
        if model.cfg.head != Head::Score {
            bail!("the checkpoint holds a causal LM, not a reward model; HINT: resume an `rm train` run");
        }
        let dirs: Vec<&Path> = from.as_deref().into_iter().chain(a.init.as_deref()).collect();
        let tok = tokenizer_for(&a.tokenizer, &dirs)?;
        check_vocab(&tok, &model.cfg)?;
        let max_len = match a.max_len {
            Some(l) if l as usize > model.rope_len => {
                bail!("--max-len {l} is longer than the model's {} positions (max_position_embeddings); HINT: use --max-len {}", model.rope_len, model.rope_len)
            }
            Some(l) => l as usize,
            None => model.rope_len.min(1024),
        };
        let files = a.data.iter().map(|s| parse_source(s)).collect::<Result<Vec<_>>>()?;
        let (sets, dropped) = load_files(&files, tok.as_ref(), model.cfg.vocab_size, max_len)?;
        let (pairs, mix_report) = match a.mix {
            MixArg::None => (sets.into_iter().flat_map(|s| s.1).collect::<Vec<_>>(), None),
            kind => {
                let mut labelled = Vec::new();
                for ((src, pairs), (_, path)) in sets.into_iter().zip(&files) {
                    let src =
                        src.with_context(|| format!("--mix needs every --data file labelled; HINT: --data helpful={} (or safety=, other=)", path.display()))?;
                    labelled.push((src, pairs));
                }
                let kind = if kind == MixArg::Helpfulness { Mix::Helpfulness } else { Mix::Safety };
                let (p, rep) = mix(labelled, kind, a.run.seed)?;
                eprintln!(
                    "mixture: {} helpful + {} safety + {} other pairs ({} wanted beside the kept source, from a pool of {})",
                    rep.helpful, rep.safety, rep.other, rep.wanted, rep.pool
                );
                (p, Some(rep))
            }
        };
        let (p, margin, pad) = (a.batch_size as usize, a.margin.margin(), model.cfg.pad_id.unwrap_or(0));
        let n_pairs = pairs.len();
        let mut train = PairData::new(pairs, p, margin, pad, Some(a.run.seed), false)?;
        let mut val = if a.val_data.is_empty() {
            None
        } else {
            let vf: Vec<_> = a.val_data.iter().map(|p| (None, p.clone())).collect();
            let (vs, _) = load_files(&vf, tok.as_ref(), model.cfg.vocab_size, max_len)?;
            Some(PairData::new(vs.into_iter().flat_map(|s| s.1).collect(), p, margin, pad, None, true)?)
        };
        let per_epoch = train.batches_per_epoch() as u64 / a.run.grad_accum as u64;
        let steps = a.run.steps.unwrap_or((per_epoch * a.epochs as u64).max(1));
        let warmup = a.warmup_steps.unwrap_or((((steps as f64) * 0.03).round() as u64).max(5).min(steps));
        let schedule = LrSchedule::Cosine { peak: a.lr, warmup, total: steps, min_ratio: a.min_lr_ratio };
        let data: Vec<PathBuf> = a.data.iter().map(PathBuf::from).collect();
        let mut r = a.run.resolve(be, "rm", &model.cfg, data, (p, max_len), steps, schedule, &a.opt);
        r.job_args = json!({
            "init": a.init, "margin": margin, "mix": format!("{:?}", a.mix).to_lowercase(), "center_coef": a.center_coef,
            "pairs_train": n_pairs, "pairs_dropped_too_long": dropped, "pairs_seen": steps as usize * p * a.run.grad_accum as usize,
            "pairs_val": val.as_ref().map(|v| v.pairs.len()), "mixture": mix_report, "epochs": a.epochs,
            "tokens_per_epoch": train.tokens(), "val_data": a.val_data,
        })
        .as_object()
        .cloned()
        .unwrap_or_default();
        if resumed {
            r.check_resume(&state.config)?;
            for k in ["margin", "mix", "center_coef"] {
                let (s, n) = (&state.config[k], &r.job_args[k]);
                if !s.is_null() && s != n {
                    bail!("--{} is {n} but the checkpoint was made with {s}; HINT: resume with the same value", k.replace('_', "-"));
                }
            }
        }
        let mut tr = RewardTrainer::new(be, model, a.opt.adamw(), a.center_coef)?;
        if let Some(m) = &moments {
            checkpoint::restore_optimizer(be, &mut tr.opt, m)?;
        }
        r.announce(&out)?;
        let rc = a.run.run_config("rm", be, &r);
        let mean_len = train.tokens() as f64 / (2 * n_pairs).max(1) as f64;
        let flops = tr.model.cfg.train_flops_per_token(mean_len.round() as usize);
        let v = val.as_mut().map(|v| v as &mut dyn BatchSource<PairBatch>);
        let summary = run_loop(be, &mut tr, &mut train, v, &rc, &out, state, resumed, flops)?;
        if summary.steps < rc.steps {
            eprintln!("stopped at step {} of {}; continue with --resume {}", summary.steps, rc.steps, out.display());
            return Ok(());
        }
        let final_dir = out.join("final");
        tr.model.save(be, &final_dir, SaveDtype::F32)?;
        for d in &dirs {
            copy_tokenizer_files(d, &final_dir)?;
        }
        if let Some(t) = &a.tokenizer {
            copy_given_tokenizer(t, &final_dir)?;
        }
        finish(&out, &summary, &rc)?;
        curves(&out)?;
        if let Some(v) = &val {
            let e = eval_pairs(be, &tr.model, &v.pairs, margin, 16)?;
            eprint!("held-out pairs, final model:\n{}", e.table());
            write_eval(&out, "val_eval", &e, json!({"data": a.val_data}))?;
        }
        eprintln!("final model: {}", final_dir.display());
        Ok(())
    }
}

/// Scores both sequences of every pair and reports accuracy.
fn eval_pairs<B: Backend>(be: &B, model: &Model<B>, pairs: &[Pair], margin: Margin, rows: usize) -> Result<RmEval> {
    let seqs: Vec<Vec<u32>> = pairs.iter().map(|p| p.chosen.clone()).chain(pairs.iter().map(|p| p.rejected.clone())).collect();
    let s = score_sequences(be, model, &seqs, rows)?;
    let n = pairs.len();
    Ok(evaluate_scores(pairs, &s[..n], &s[n..], margin))
}

/// `OUT/<name>.json` and `OUT/<name>.png` (accuracy per rating bucket).
fn write_eval(out: &Path, name: &str, e: &RmEval, extra: Value) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut j = serde_json::to_value(e)?;
    if let (Value::Object(m), Value::Object(x)) = (&mut j, extra) {
        m.extend(x);
    }
    write_atomic(&out.join(format!("{name}.json")), serde_json::to_string_pretty(&j)?.as_bytes())?;
    accuracy_bars(e, &out.join(format!("{name}.png")))?;
    Ok(())
}

/// Accuracy per rating bucket and per safety category as bars, with each
/// bucket's size in its name.
fn accuracy_bars(e: &RmEval, path: &Path) -> Result<()> {
    let buckets: Vec<_> = e.by_rating.iter().chain(&e.by_safety).filter(|b| b.accuracy.is_some()).collect();
    let chart = BarChart {
        title: format!("reward model accuracy by bucket (all: {:.1}% of {})", 100.0 * e.overall.accuracy.unwrap_or(0.0), e.overall.pairs),
        x_label: "bucket (pairs)".into(),
        y_label: "accuracy (%)".into(),
        categories: buckets.iter().map(|b| format!("{} ({})", b.name, b.pairs)).collect(),
        series: vec![BarSeries { name: "accuracy".into(), values: buckets.iter().map(|b| 100.0 * b.accuracy.unwrap_or(f64::NAN)).collect() }],
    };
    save_png(&chart.into(), path, 900, 560)?;
    Ok(())
}

/// `OUT/rm_loss.png` (over the generic loss plot of `finish`, with the
/// ranking loss's unit) and `OUT/rm_accuracy.png`: training and validation
/// curves per step.
fn curves(out: &Path) -> Result<()> {
    let recs = llama2_train::metrics::MetricsLog::read(&out.join("metrics.jsonl"))?;
    let pts = |k: &str, scale: f64| recs.iter().filter_map(|r| Some((r.get("step")?.as_f64()?, scale * r.get(k)?.as_f64()?))).collect::<Vec<_>>();
    for (file, title, y, key, scale) in [
        ("rm_loss.png", "rm: loss", "ranking loss (nats/pair)", "loss", 1.0),
        ("rm_accuracy.png", "rm: accuracy (chosen scored above rejected)", "accuracy (%)", "accuracy", 100.0),
    ] {
        let chart = LineChart {
            title: title.into(),
            x_label: "step".into(),
            y_label: y.into(),
            series: vec![
                Series { name: "train batch".into(), points: pts(key, scale) },
                Series { name: "validation".into(), points: pts(&format!("val_{key}"), scale) },
            ],
            log_y: false,
        };
        save_png(&chart.into(), &out.join(file), 900, 500)?;
    }
    Ok(())
}

/// The sequences of a `rm score` input file, in order.
fn score_inputs(path: &Path, tok: Option<&Tokenizer>) -> Result<Vec<Vec<u32>>> {
    const HINT: &str = "a line is {\"prompt_ids\", \"response_ids\"} or {\"prompt\" | \"messages\", \"response\"}";
    let recs = read_records(path, HINT)?;
    let bad = |at: &str, m: String| anyhow::anyhow!("{}: {at}: {m}; HINT: {HINT}", path.display());
    let mut out = Vec::with_capacity(recs.len());
    for (at, v) in &recs {
        let o = v.as_object().ok_or_else(|| bad(at, "not a JSON object".into()))?;
        let ids = |k: &str| -> Result<Vec<u32>> {
            let arr = o.get(k).and_then(|x| x.as_array()).ok_or_else(|| bad(at, format!("`{k}` must be a list of token ids")))?;
            arr.iter()
                .map(|x| x.as_u64().filter(|&t| t <= u32::MAX as u64).map(|t| t as u32).ok_or_else(|| bad(at, format!("`{k}` holds {x}, not a token id"))))
                .collect()
        };
        let seq = if o.contains_key("response_ids") || o.contains_key("prompt_ids") {
            let (p, r) = (ids("prompt_ids")?, ids("response_ids")?);
            if r.is_empty() {
                return Err(bad(at, "`response_ids` is an empty response".into()));
            }
            p.into_iter().chain(r).collect()
        } else {
            let resp = o.get("response").and_then(|x| x.as_str()).ok_or_else(|| bad(at, "no `response` (or `response_ids`)".into()))?;
            if resp.trim().is_empty() {
                return Err(bad(at, "`response` is an empty response".into()));
            }
            let mut d: Vec<Message> = match o.get("prompt").or_else(|| o.get("messages")) {
                Some(x) => prompt_of(x).map_err(|m| bad(at, m))?,
                None => return Err(bad(at, "no `prompt` or `messages`".into())),
            };
            d.push(Message::new(Role::Assistant, resp));
            let tok = tok.ok_or_else(|| bad(at, "a text line needs a tokenizer; pass --tokenizer PATH".into()))?;
            encode_dialog(tok, &d).map_err(|e| bad(at, e.to_string()))?.0
        };
        out.push(seq);
    }
    Ok(out)
}

struct ScoreJob(ScoreArgs);

impl Job for ScoreJob {
    type Out = ();
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let a = self.0;
        let model = load_rm(be, &a.model)?;
        let tok = tokenizer_for(&a.tokenizer, &[&a.model])?;
        check_vocab(&tok, &model.cfg)?;
        let seqs = score_inputs(&a.input, tok.as_ref())?;
        if let Some((i, s)) = seqs.iter().enumerate().find(|(_, s)| s.len() > model.rope_len) {
            bail!("{}: input {} has {} tokens, more than the model's {} positions", a.input.display(), i + 1, s.len(), model.rope_len);
        }
        let scores = score_sequences(be, &model, &seqs, a.batch_size as usize).with_context(|| format!("scoring {}", a.input.display()))?;
        let mut text = String::new();
        for s in scores {
            let prob = 1.0 / (1.0 + (-(s as f64)).exp());
            text += &format!("{}\n", json!({"score": s, "prob": prob}));
        }
        print!("{text}");
        Ok(())
    }
}

struct EvalJob(EvalArgs);

impl Job for EvalJob {
    type Out = ();
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let a = self.0;
        let model = load_rm(be, &a.model)?;
        let tok = tokenizer_for(&a.tokenizer, &[&a.model])?;
        check_vocab(&tok, &model.cfg)?;
        let max_len = match a.max_len {
            Some(l) if l as usize > model.rope_len => bail!("--max-len {l} is longer than the model's {} positions", model.rope_len),
            Some(l) => l as usize,
            None => model.rope_len,
        };
        let files: Vec<_> = a.data.iter().map(|p| (None, p.clone())).collect();
        let (sets, dropped) = load_files(&files, tok.as_ref(), model.cfg.vocab_size, max_len)?;
        let pairs: Vec<Pair> = sets.into_iter().flat_map(|s| s.1).collect();
        if pairs.is_empty() {
            bail!("no pair to evaluate in {:?}; HINT: check --data (and --max-len: {dropped} pairs were too long)", a.data);
        }
        let e = eval_pairs(be, &model, &pairs, a.margin.margin(), a.batch_size as usize)?;
        eprint!("{}", e.table());
        let extra = json!({"model": a.model, "data": a.data, "pairs_dropped_too_long": dropped});
        if let Some(out) = &a.out {
            write_eval(out, "rm_eval", &e, extra.clone())?;
            eprintln!("wrote {} and {}", out.join("rm_eval.json").display(), out.join("rm_eval.png").display());
        }
        let mut j = serde_json::to_value(&e)?;
        if let (Value::Object(m), Value::Object(x)) = (&mut j, extra) {
            m.extend(x);
        }
        println!("{j}");
        Ok(())
    }
}

pub fn run(a: RmArgs) -> Result<()> {
    match a.cmd {
        RmCmd::Init(x) => init_cmd(x),
        RmCmd::Train(x) => {
            let dev = x.dev.clone();
            dispatch(&dev, TrainJob(x))
        }
        RmCmd::Score(x) => {
            let dev = x.dev.clone();
            dispatch(&dev, ScoreJob(x))
        }
        RmCmd::Eval(x) => {
            let dev = x.dev.clone();
            dispatch(&dev, EvalJob(x))
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct RmGradsArgs {
    /// The reward model (HF LlamaForSequenceClassification directory)
    #[arg(long)]
    pub model: PathBuf,
    /// Preference pairs (the formats of `rm train`), all in one batch
    #[arg(long)]
    pub pairs: PathBuf,
    /// Tokenizer for text pairs (default: the one beside the model)
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Margin table of the loss
    #[arg(long, value_enum, default_value = "small")]
    pub margin: MarginArg,
    /// C of the centring term C * mean((r_c + r_r)^2)
    #[arg(long, default_value_t = 0.0, value_parser = parse_coef)]
    pub center_coef: f64,
    /// Output safetensors file (f32, HF tensor names)
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

struct RmGradsJob(RmGradsArgs);

impl Job for RmGradsJob {
    type Out = ();
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let a = self.0;
        let model = load_rm(be, &a.model)?;
        let tok = tokenizer_for(&a.tokenizer, &[&a.model])?;
        check_vocab(&tok, &model.cfg)?;
        let set = load_pairs(&a.pairs, tok.as_ref(), model.cfg.vocab_size, model.rope_len)?;
        if set.dropped > 0 {
            bail!("{}: {} pairs are longer than the model's {} positions", a.pairs.display(), set.dropped, model.rope_len);
        }
        if set.pairs.is_empty() {
            bail!("{}: no pairs", a.pairs.display());
        }
        let pad = model.cfg.pad_id.unwrap_or(0);
        let refs: Vec<&Pair> = set.pairs.iter().collect();
        let mb = PairBatch::new(&refs, a.margin.margin(), pad);
        let mut tr = RewardTrainer::new(be, model, AdamWConfig::default(), a.center_coef)?;
        let n = mb.pairs();
        be.zero(vm(&mut tr.grads))?;
        let sums = tr.forward_backward(be, &mb, n)?;
        let mut host = vec![0f32; tr.model.layout.total];
        be.download(v(&tr.grads), &mut host)?;
        let named = tr.model.layout.to_host(&tr.model.cfg, &host);
        save_safetensors(&a.out, &named, SaveDtype::F32, None)?;
        println!("{}", json!({"loss": sums.loss / n as f64, "pairs": n}));
        Ok(())
    }
}

/// `train-tool debug rm-grads`.
pub fn rm_grads(a: RmGradsArgs) -> Result<()> {
    let dev = a.dev.clone();
    dispatch(&dev, RmGradsJob(a))
}

#[derive(Args, Clone, Debug)]
pub struct RmStepArgs {
    #[command(flatten)]
    pub m: ModelChoice,
    /// Pairs per step (2x as many sequences)
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub pairs: u32,
    /// Tokens per sequence (every sequence this long)
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(2..=1048576))]
    pub seq_len: u32,
    /// Timed steps
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub steps: u32,
    /// Untimed steps first
    #[arg(long, default_value_t = 1)]
    pub warmup: u32,
    /// Print one JSON line
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

struct RmStepJob(RmStepArgs);

impl Job for RmStepJob {
    type Out = ();
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let a = self.0;
        let (p, t) = (a.pairs as usize, a.seq_len as usize);
        let lm = a.m.load(be)?;
        let model = if lm.cfg.head == Head::Lm { init_from_lm(be, &lm, a.m.seed)? } else { lm };
        let cfg = model.cfg.clone();
        let mut rng = Rng::derive(a.m.seed, "bench-pairs");
        let v = cfg.vocab_size as u64;
        // real token ids only (3..V: never pad, BOS or EOS), every sequence full length
        let pairs: Vec<Pair> = (0..p)
            .map(|i| Pair {
                chosen: (0..t).map(|_| 3 + rng.below(v - 3) as u32).collect(),
                rejected: (0..t).map(|_| 3 + rng.below(v - 3) as u32).collect(),
                rating: Some(Rating::ALL[i % 4]),
                safety: None,
                unsafe_prompt: None,
            })
            .collect();
        let refs: Vec<&Pair> = pairs.iter().collect();
        let mb = PairBatch::new(&refs, Margin::Small, cfg.pad_id.unwrap_or(0));
        let mut tr = RewardTrainer::new(be, model, AdamWConfig::default(), 0.0)?;
        let mut times = Vec::new();
        let mut cpu = Vec::new();
        let mut losses = Vec::new();
        for i in 0..a.warmup + a.steps {
            let (t0, c0) = (Instant::now(), process_cpu_s());
            let st = train_step(be, &mut tr, std::slice::from_ref(&mb), &[1e-5])?;
            be.synchronize()?;
            losses.push(st.loss);
            if i >= a.warmup {
                times.push(t0.elapsed().as_secs_f64() * 1e3);
                if let (Some(c0), Some(c1)) = (c0, process_cpu_s()) {
                    cpu.push((c1 - c0) * 1e3);
                }
            }
        }
        let ms = median(times.clone());
        let cpu_ms = (!cpu.is_empty()).then(|| median(cpu.clone()));
        let tps = (2 * p * t) as f64 / (ms / 1e3);
        if a.json {
            println!(
                "{}",
                json!({"step_ms_median": ms, "step_ms_all": times, "cpu_ms_median": cpu_ms, "tokens_per_s": tps, "device": be.name(), "params": cfg.n_params(),
                       "pairs": p, "seq_len": t, "loss_first_last": [losses.first(), losses.last()], "peak_rss_mib": peak_rss_mib()})
            );
        } else {
            println!("rm step, {p} pairs x 2 x {t} tokens on {}: median {ms:.2} ms, {tps:.0} tokens/s", be.name());
        }
        Ok(())
    }
}

/// CPU time (user + system, every thread) this process has used, in
/// seconds (Linux: /proc/self/stat; None elsewhere). Unlike wall time it
/// does not grow when other jobs hold the cores.
fn process_cpu_s() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // fields after the command name (which may hold spaces) in parentheses
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here
    let (u, st): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    const TICKS_PER_S: f64 = 100.0; // USER_HZ, 100 on every Linux ABI we run on
    Some((u + st) / TICKS_PER_S)
}

/// `train-tool bench rm-step`.
pub fn rm_step(a: RmStepArgs) -> Result<()> {
    let dev = a.dev.clone();
    dispatch(&dev, RmStepJob(a))
}
