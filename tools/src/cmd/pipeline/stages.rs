//! The stages of `train-tool pipeline` (see the module header of
//! `pipeline`): each calls the job functions of the commands with
//! constructed arguments and returns the results its marker records.

use super::{repo_default, Ctx};
use crate::cmd::evaluate::load_policy;
use crate::cmd::pretrain::PretrainArgs;
use crate::cmd::sft::SftArgs;
use crate::device::{dispatch, Job};
use crate::flags::{LmHeadFlags, OptFlags, RunFlags};
use anyhow::{bail, Context, Result};
use llama2_model::chat::{encode_dialog, Role};
use llama2_model::generate::Sampling;
use llama2_model::shards::ShardWriter;
use llama2_model::tokenizer::train::{TrainConfig, Trainer};
use llama2_model::tokenizer::{EncodeOptions, Tokenizer};
use llama2_model::weights::write_atomic;
use llama2_model::Model;
use llama2_runtime::rng::Rng;
use llama2_runtime::Backend;
use llama2_train::eval::models::{evaluate_answers, generate_answers, self_bleu_curve, GenAnswer, GenSettings};
use llama2_train::eval::preferences::{collect_preferences, write_jsonl, Variant};
use llama2_train::eval::prompts::{read_prompts, safety_demonstrations, safety_prompts, self_bleu_sets, write_dialogs, write_prompts, EvalPrompt};
use llama2_train::metrics::MetricsLog;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Held-out share of every safety category (the `annotate prompts` default).
const SAFETY_HELD_OUT: f64 = 0.25;
/// Top-p of every sampled answer but RS and PPO (`train-tool chat`'s).
const TOP_P: f32 = 0.9;

/// The models the evaluation compares, in order (the first is the baseline of win rates).
pub(crate) const EVAL_MODELS: [&str; 4] = ["sft", "rs", "ppo", "gatt"];

pub(crate) fn run_stage(ctx: &Ctx, stage: &str) -> Result<Value> {
    match stage {
        "tokenizer" => tokenizer(ctx),
        "pretrain" => pretrain(ctx),
        "sft" => sft(ctx),
        "preferences" => dispatch(&ctx.a.dev.clone(), PrefJob(ctx)),
        "rm" => reward_models(ctx),
        "rs" => rejection_sampling(ctx),
        "ppo" => ppo(ctx),
        "gatt" => gatt(ctx),
        "eval" => dispatch(&ctx.a.dev.clone(), EvalJob(ctx)),
        other => bail!("internal: no stage `{other}`"),
    }
}

/// The directory of each evaluated model.
pub(crate) fn model_dir(ctx: &Ctx, name: &str) -> PathBuf {
    match name {
        "sft" => ctx.dir("sft").join("final"),
        "rs" => ctx.dir("rs").join(format!("iter-{}", ctx.a.rs_iterations)).join("sft").join("final"),
        "ppo" => ctx.dir("ppo").join("final").join("policy"),
        "gatt" => ctx.dir("gatt").join("gatt").join("final"),
        _ => ctx.dir(name).join("final"),
    }
}

fn text_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "txt"))
                .collect();
            v.sort();
            out.extend(v);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            bail!("{}: no such file or directory; HINT: --corpus takes text files or directories of .txt files", p.display());
        }
    }
    if out.is_empty() {
        bail!("no .txt files in the corpus");
    }
    Ok(out)
}

/// Paragraphs (blank-line separated), hard line breaks joined by spaces.
fn paragraphs(text: &str) -> Vec<String> {
    text.split("\n\n").map(|p| p.split_whitespace().collect::<Vec<_>>().join(" ")).filter(|p| !p.is_empty()).collect()
}

pub(crate) fn default_opt() -> OptFlags {
    OptFlags { weight_decay: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-5, grad_clip: 1.0 }
}

pub(crate) fn run_flags(out: &Path, steps: u64, val_every: u64, seed: u64) -> RunFlags {
    RunFlags {
        steps: if steps == 0 { None } else { Some(steps) },
        grad_accum: 1,
        zero: 1,
        save_every: 0,
        keep_last: 1,
        resume: None,
        out: out.to_path_buf(),
        seed,
        val_every,
        val_batches: 20,
        stop_after: None,
        quiet: false,
        power_watts: None,
        carbon_intensity: 0.385,
        peak_tflops: None,
    }
}

fn read_json(p: &Path) -> Result<Value> {
    let t = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&t).with_context(|| format!("{} is not valid JSON", p.display()))
}

/// A sub-seed of the run's seed for one purpose.
fn sub_seed(seed: u64, what: &str) -> u64 {
    Rng::derive(seed, &format!("pipeline/{what}")).next_u64()
}

/// Stage 1: the vocabulary and the token shards.
fn tokenizer(ctx: &Ctx) -> Result<Value> {
    let files = text_files(&ctx.corpus)?;
    let mut docs: Vec<String> = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {}; HINT: the corpus must be UTF-8 text", f.display()))?;
        docs.extend(paragraphs(&text));
    }
    let cfg = TrainConfig { vocab_size: ctx.a.vocab_size, ..TrainConfig::default() };
    let mut tr = Trainer::new(cfg)?;
    for d in &docs {
        tr.add_sentence(d);
    }
    let tok = tr.train(&mut |_| {})?;
    tok.save_spm_model(ctx.tokenizer())?;
    let tok = Tokenizer::load(ctx.tokenizer())?;
    // token shards: paragraphs as documents, every 20th held out
    let data_dir = ctx.run.join("data");
    std::fs::create_dir_all(&data_dir)?;
    let (bos, eos) = (tok.bos_id().context("tokenizer without BOS")?, tok.eos_id().context("tokenizer without EOS")?);
    let enc = tok.encode_batch(&docs, EncodeOptions { bos: false, eos: false })?;
    let mut train_w = ShardWriter::create(data_dir.join("train_000000.bin"))?;
    let mut val_w = ShardWriter::create(data_dir.join("val_000000.bin"))?;
    for (i, ids) in enc.iter().enumerate() {
        let w = if i % 20 == 19 { &mut val_w } else { &mut train_w };
        w.push(&[bos])?;
        w.push(ids)?;
        w.push(&[eos])?;
    }
    let (n_train, n_val) = (train_w.finish()?, val_w.finish()?);
    let bytes: usize = docs.iter().map(|d| d.len()).sum();
    eprintln!("[pipeline] {} paragraphs, {bytes} bytes -> {n_train} train + {n_val} val tokens", docs.len());
    Ok(json!({"vocab": tok.vocab_size(), "paragraphs": docs.len(), "bytes": bytes, "train_tokens": n_train, "val_tokens": n_val}))
}

/// Stage 2: pretraining.
fn pretrain(ctx: &Ctx) -> Result<Value> {
    let a = &ctx.a;
    let tok = Tokenizer::load(ctx.tokenizer()).with_context(|| format!("loading {}; HINT: run the tokenizer stage", ctx.tokenizer().display()))?;
    let out = ctx.dir("pretrain");
    let steps = a.pretrain_steps;
    crate::cmd::pretrain::run(PretrainArgs {
        init: None,
        preset: Some(a.preset.clone()),
        vocab: Some(tok.vocab_size() as u32),
        data: ctx.data("train_000000.bin"),
        val_data: Some(ctx.data("val_000000.bin")),
        batch_size: a.batch_size,
        seq_len: a.seq_len,
        shuffle: true,
        lr: a.lr,
        warmup_steps: (steps / 20).max(1),
        min_lr_ratio: 0.1,
        opt: default_opt(),
        run: RunFlags { val_batches: (steps / 8).clamp(1, 20) as u32, ..run_flags(&out, steps, (steps / 8).max(1), a.seed) },
        head: LmHeadFlags::default(),
        dev: a.dev.clone(),
    })?;
    tok.save_spm_model(out.join("final").join("tokenizer.model"))?;
    let recs = MetricsLog::read(&out.join("metrics.jsonl"))?;
    let val = recs.iter().filter_map(|r| r.get("val_loss")?.as_f64()).next_back();
    Ok(json!({"final_val_loss": val, "ln_vocab": (tok.vocab_size() as f64).ln()}))
}

fn first_user(d: &[llama2_model::chat::Message]) -> Option<String> {
    d.iter().find(|m| m.role == Role::User).map(|m| m.content.clone())
}

/// Stage 3: SFT: short dialogs (minus the held-out evaluation prompts) and the
/// safety demonstrations; also writes the prompt files of the later stages.
fn sft(ctx: &Ctx) -> Result<Value> {
    let a = &ctx.a;
    let tok = Tokenizer::load(ctx.tokenizer())?;
    let mut dialogs = Vec::new();
    for p in &ctx.sft_data {
        dialogs.extend(llama2_train::sft::load_dialogs(p)?);
    }
    let total = dialogs.len();
    let mut short = Vec::new();
    for d in dialogs {
        if first_user(&d).is_some() && encode_dialog(&tok, &d)?.0.len() <= a.sft_max_tokens as usize {
            short.push(d);
        }
    }
    let n_short = short.len();
    if n_short < a.eval_prompts as usize + 2 {
        bail!(
            "only {n_short} dialogs have at most {} tokens, too few to hold out {} evaluation prompts; HINT: lower --eval-prompts or raise --sft-max-tokens",
            a.sft_max_tokens,
            a.eval_prompts
        );
    }
    let (train_d, eval_d) = llama2_train::sft::split_dialogs(short, a.eval_prompts as f64 / n_short as f64, sub_seed(a.seed, "eval-split"));
    // safety prompts and demonstrations (the annotator's data)
    let safety = safety_prompts(a.seed, SAFETY_HELD_OUT)?;
    let demos = safety_demonstrations(&safety.train, a.safety_demos as usize, a.seed)?;
    write_prompts(&ctx.data("safety_train.jsonl"), &safety.train)?;
    write_prompts(&ctx.data("safety_held_out.jsonl"), &safety.held_out)?;
    write_dialogs(&ctx.data("safety_sft.jsonl"), &demos)?;
    // evaluation prompts: held-out instructions (safe) + held-out safety prompts
    let mut eval: Vec<EvalPrompt> = eval_d.iter().filter_map(|d| first_user(d)).map(EvalPrompt::safe).collect();
    eval.extend(safety.held_out.iter().cloned());
    write_prompts(&ctx.data("eval_prompts.jsonl"), &eval)?;
    write_dialogs(&ctx.data("eval_dialogs.jsonl"), &eval_d)?;
    // RLHF prompts: instructions of the SFT set + the safety training prompts
    let mut rlhf: Vec<EvalPrompt> = train_d.iter().take(a.rlhf_prompts as usize).filter_map(|d| first_user(d)).map(EvalPrompt::safe).collect();
    let n_instr = rlhf.len();
    rlhf.extend(safety.train.iter().cloned());
    write_prompts(&ctx.data("rlhf_prompts.jsonl"), &rlhf)?;
    write_dialogs(&ctx.data("instruction_train.jsonl"), &train_d)?;
    let mut sft_set = train_d.clone();
    sft_set.extend(demos.iter().cloned());
    write_dialogs(&ctx.data("sft.jsonl"), &sft_set)?;
    let mut sft_files = vec![ctx.data("sft.jsonl")];
    let gatt_demos = if a.gatt_demos > 0 {
        let n = crate::cmd::gatt::demos(crate::cmd::gatt::GattDemosArgs {
            dialogs: vec![ctx.data("instruction_train.jsonl")],
            inst: crate::cmd::gatt::InstructionFlags { instructions: repo_default("data/gatt/instructions.json"), families: a.gatt_families.clone() },
            count: a.gatt_demos as usize,
            out: ctx.data("gatt_demos.jsonl"),
            seed: sub_seed(a.seed, "gatt-demos"),
        })?;
        sft_files.push(ctx.data("gatt_demos.jsonl"));
        n
    } else {
        0
    };
    eprintln!(
        "[pipeline] SFT: {} of {total} dialogs have at most {} tokens: {} trained (+ {} safety demonstrations), {} held out for the evaluation",
        n_short,
        a.sft_max_tokens,
        train_d.len(),
        demos.len(),
        eval_d.len()
    );
    let out = ctx.dir("sft");
    let val_fraction = (a.samples as f64 / sft_set.len().max(1) as f64).min(0.5);
    crate::cmd::sft::run(SftArgs {
        init: Some(ctx.dir("pretrain").join("final")),
        data: sft_files,
        tokenizer: Some(ctx.tokenizer()),
        val_fraction,
        batch_size: a.batch_size,
        seq_len: a.seq_len,
        epochs: a.sft_epochs,
        lr: a.sft_lr,
        warmup_steps: None,
        min_lr_ratio: 0.1,
        packing: crate::cmd::sft::PackingArg::Concat,
        samples: a.samples,
        sample_tokens: a.sft_max_tokens,
        sample_temperature: 0.7,
        sample_top_p: 0.9,
        opt: default_opt(),
        run: run_flags(&out, 0, 0, a.seed),
        head: LmHeadFlags::default(),
        dev: a.dev.clone(),
    })?;
    let recs = MetricsLog::read(&out.join("metrics.jsonl"))?;
    let val = recs.iter().filter_map(|r| r.get("val_loss")?.as_f64()).next_back();
    let samples: Vec<Value> = std::fs::read_to_string(out.join("samples.json")).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    let ended = samples.iter().filter(|s| s["ended_with_eos"].as_bool() == Some(true)).count();
    Ok(json!({
        "dialogs": total, "short_dialogs": n_short, "trained_dialogs": train_d.len(), "safety_demonstrations": demos.len(), "gatt_demonstrations": gatt_demos,
        "eval_prompts": {"instructions": eval_d.len(), "unsafe": safety.held_out.iter().filter(|p| p.unsafe_prompt).count(),
                          "borderline": safety.held_out.iter().filter(|p| !p.unsafe_prompt).count()},
        "rlhf_prompts": {"instructions": n_instr, "safety": safety.train.len()},
        "final_val_loss": val, "samples": samples.len(), "samples_ended_with_eos": ended,
    }))
}

/// Splits records into (train, held out) by prompt, so no held-out pair
/// shares its prompt with a training pair: the distinct prompts in a seeded
/// order, the last `round(fraction · prompts)` held out (at least one when
/// there are two).
fn split_records(v: Vec<Value>, fraction: f64, seed: u64) -> (Vec<Value>, Vec<Value>) {
    let mut prompts: Vec<String> = Vec::new();
    for r in &v {
        let p = r["prompt"].as_str().unwrap_or("").to_string();
        if !prompts.contains(&p) {
            prompts.push(p);
        }
    }
    Rng::derive(seed, "pipeline/pair-split").shuffle(&mut prompts);
    let n = prompts.len();
    let mut k = (fraction * n as f64).round() as usize;
    if fraction > 0.0 && n >= 2 {
        k = k.clamp(1, n - 1);
    }
    let held: std::collections::HashSet<String> = prompts.split_off(n - k.min(n)).into_iter().collect();
    v.into_iter().partition(|r| !held.contains(r["prompt"].as_str().unwrap_or("")))
}

/// Stage 4: preference collection.
struct PrefJob<'a>(&'a Ctx);

impl Job for PrefJob<'_> {
    type Out = Value;
    fn run<B: Backend>(self, be: &B) -> Result<Value> {
        let (ctx, a) = (self.0, &self.0.a);
        let once = read_prompts(&ctx.data("rlhf_prompts.jsonl"))?;
        // every prompt `pairs_per_prompt` times: each copy is answered from its own streams
        let prompts: Vec<EvalPrompt> = (0..a.pref_pairs_per_prompt).flat_map(|_| once.iter().cloned()).collect();
        let sft_dir = model_dir(ctx, "sft");
        let (sft, tok) = load_policy(be, &sft_dir, &Some(ctx.tokenizer()))?;
        let variants: Vec<Variant<B>> = a
            .pref_temperatures
            .iter()
            .map(|&t| Variant { name: format!("SFT T={t}"), model: &sft, sampling: Sampling { temperature: t, top_k: None, top_p: Some(TOP_P) } })
            .collect();
        let set = collect_preferences(be, &tok, &variants, &prompts, a.max_new_tokens as usize, a.seed)?;
        let dir = ctx.dir("preferences");
        std::fs::create_dir_all(&dir)?;
        let mut counts = serde_json::Map::new();
        for (name, recs) in [("helpful", &set.helpful), ("safety", &set.safety)] {
            let (tr, va) = split_records(recs.clone(), a.rm_val_fraction, sub_seed(a.seed, name));
            if tr.is_empty() || va.is_empty() {
                bail!(
                    "the annotator labelled {} {name} pairs: too few to train and hold out some; HINT: raise --rlhf-prompts (identical answers are dropped)",
                    recs.len()
                );
            }
            write_jsonl(&dir.join(format!("{name}.jsonl")), &tr)?;
            write_jsonl(&dir.join(format!("{name}_val.jsonl")), &va)?;
            counts.insert(name.into(), json!({"train": tr.len(), "held_out": va.len()}));
        }
        let variants: Vec<String> = variants.iter().map(|v| v.name.clone()).collect();
        let j = json!({"variants": variants, "prompts": once.len(), "pairs_per_prompt": a.pref_pairs_per_prompt, "report": set.report, "split": counts});
        write_atomic(&dir.join("annotation.json"), serde_json::to_string_pretty(&j)?.as_bytes())?;
        eprintln!(
            "[pipeline] preferences: {} pairs ({} helpfulness, {} safety), {:.1}% of the labels agree with the gold gap",
            set.report.pairs,
            set.report.helpful_pairs,
            set.report.safety_pairs,
            100.0 * set.report.agreement_with_gold
        );
        Ok(j)
    }
}

/// Stage 5: the helpfulness and the safety reward model, each measured on its held-out pairs.
fn reward_models(ctx: &Ctx) -> Result<Value> {
    use crate::cmd::rm::{EvalArgs, MarginArg, MixArg, RmArgs, RmCmd, TrainArgs};
    let a = &ctx.a;
    let pref = ctx.dir("preferences");
    let mut out = serde_json::Map::new();
    for (name, mix) in [("helpful", MixArg::Helpfulness), ("safety", MixArg::Safety)] {
        let dir = ctx.dir("rm").join(name);
        crate::cmd::rm::run(RmArgs {
            cmd: RmCmd::Train(TrainArgs {
                init: Some(model_dir(ctx, "sft")),
                data: vec![format!("helpful={}", pref.join("helpful.jsonl").display()), format!("safety={}", pref.join("safety.jsonl").display())],
                val_data: Vec::new(),
                tokenizer: Some(ctx.tokenizer()),
                mix,
                margin: MarginArg::Small,
                center_coef: a.rm_center_coef,
                max_len: None,
                batch_size: 8,
                epochs: a.rm_epochs,
                lr: a.rm_lr,
                warmup_steps: None,
                min_lr_ratio: 0.1,
                opt: default_opt(),
                run: run_flags(&dir, 0, 0, sub_seed(a.seed, &format!("rm/{name}"))),
                dev: a.dev.clone(),
            }),
        })?;
        let eval_dir = dir.join("eval");
        crate::cmd::rm::run(RmArgs {
            cmd: RmCmd::Eval(EvalArgs {
                model: dir.join("final"),
                data: vec![pref.join(format!("{name}_val.jsonl"))],
                tokenizer: Some(ctx.tokenizer()),
                margin: MarginArg::Small,
                max_len: None,
                batch_size: 16,
                out: Some(eval_dir.clone()),
                dev: a.dev.clone(),
            }),
        })?;
        let e = read_json(&eval_dir.join("rm_eval.json"))?;
        let by: BTreeMap<String, Value> = e["by_rating"]
            .as_array()
            .map(|v| v.iter().filter_map(|b| Some((b["name"].as_str()?.to_string(), b["accuracy"].clone()))).collect())
            .unwrap_or_default();
        let pairs: BTreeMap<String, Value> = e["by_rating"]
            .as_array()
            .map(|v| v.iter().filter_map(|b| Some((b["name"].as_str()?.to_string(), b["pairs"].clone()))).collect())
            .unwrap_or_default();
        out.insert(name.into(), json!({"accuracy": e["overall"]["accuracy"], "pairs": e["overall"]["pairs"], "by_rating": by, "pairs_by_rating": pairs}));
    }
    Ok(Value::Object(out))
}

/// Stage 6: rejection sampling from the SFT model, iterations pooled.
fn rejection_sampling(ctx: &Ctx) -> Result<Value> {
    let a = &ctx.a;
    let out = ctx.dir("rs");
    crate::cmd::rs::run(crate::cmd::rs::RsArgs {
        policy: model_dir(ctx, "sft"),
        rm: ctx.dir("rm").join("helpful").join("final"),
        safety_rm: Some(ctx.dir("rm").join("safety").join("final")),
        safety_threshold: a.safety_threshold,
        prompts: ctx.data("rlhf_prompts.jsonl"),
        eval_prompts: None,
        k: a.rs_k,
        iterations: a.rs_iterations,
        out: out.clone(),
        temperature: a.rs_temperature,
        top_k: None,
        top_p: None,
        max_new_tokens: a.max_new_tokens,
        gen_batch_size: 32,
        pool: crate::cmd::rs::PoolArg::All,
        temperatures: Vec::new(),
        eval_samples: 1,
        tokenizer: Some(ctx.tokenizer()),
        batch_size: a.batch_size,
        seq_len: a.seq_len,
        epochs: a.rs_epochs,
        lr: a.rs_lr,
        warmup_steps: None,
        min_lr_ratio: 0.1,
        save_every: 0,
        seed: sub_seed(a.seed, "rs"),
        quiet: false,
        opt: default_opt(),
        dev: a.dev.clone(),
    })?;
    let s = read_json(&out.join("summary.json"))?;
    let mut fig7 = Vec::new();
    for it in 1..=a.rs_iterations {
        let f = read_json(&out.join(format!("iter-{it}")).join("figure7.json"))?;
        fig7.push(json!({"iteration": it, "n": f["best_of_n"]["n"], "mean_max": f["best_of_n"]["mean_max"], "mean_median": f["best_of_n"]["mean_median"]}));
    }
    let iters: Vec<Value> = s["iterations"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|r| {
                    json!({"iteration": r["iteration"], "mean_sample_reward": r["mean_sample_reward"], "mean_kept_reward": r["mean_kept_reward"],
                           "mean_pool_reward": r["mean_pool_reward"], "pool_from_earlier_iterations": r["pool_from_earlier_iterations"]})
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(json!({"iterations": iters, "figure7": fig7}))
}

/// Stage 7: PPO on top of the RS model.
fn ppo(ctx: &Ctx) -> Result<Value> {
    use crate::cmd::ppo::{PpoArgs, PpoMathFlags, TransformFlag};
    let a = &ctx.a;
    let out = ctx.dir("ppo");
    let (n_safe, n_unsafe) = ppo_prompts(ctx)?;
    crate::cmd::ppo::run(PpoArgs {
        policy: model_dir(ctx, "rs"),
        rm: ctx.dir("rm").join("helpful").join("final"),
        safety_rm: Some(ctx.dir("rm").join("safety").join("final")),
        reference: None,
        value: None,
        prompts: ctx.data("ppo_prompts.jsonl"),
        val_prompts: None,
        tokenizer: Some(ctx.tokenizer()),
        iterations: a.ppo_iterations,
        prompts_per_iter: a.ppo_prompts_per_iter,
        minibatch: a.ppo_minibatch,
        micro_batch: a.ppo_minibatch.min(8),
        ppo_epochs: 1,
        max_new_tokens: a.max_new_tokens,
        temperature: 1.0,
        lr: a.ppo_lr,
        value_lr: 1e-4,
        eval_every: 0,
        patience: 0,
        score_batch: 16,
        zero: 1,
        math: PpoMathFlags {
            beta: a.ppo_beta,
            gamma: 1.0,
            lam: 0.95,
            clip: 0.2,
            value_clip: 0.2,
            score_transform: TransformFlag::LogitWhiten,
            safety_threshold: a.safety_threshold,
            missing_eos_penalty: 0.0,
        },
        opt: default_opt(),
        out: out.clone(),
        resume: None,
        stop_after: None,
        keep_last: 1,
        seed: sub_seed(a.seed, "ppo"),
        quiet: false,
        dev: a.dev.clone(),
    })?;
    let recs = MetricsLog::read(&out.join("metrics.jsonl"))?;
    let pick = |k: &str| -> Vec<Value> { recs.iter().map(|r| r.get(k).cloned().unwrap_or(Value::Null)).collect() };
    Ok(json!({"iterations": recs.len(), "prompts": {"safe": n_safe, "unsafe": n_unsafe}, "score_raw": pick("score_raw"), "kl": pick("kl")}))
}

/// PPO's prompts (`data/ppo_prompts.jsonl`): every safe RLHF prompt (instructions and borderline)
/// and a seeded subset of the unsafe ones, so that they make `--ppo-unsafe-share` of the set.
/// Returns (safe, unsafe) counts.
fn ppo_prompts(ctx: &Ctx) -> Result<(usize, usize)> {
    let all = read_prompts(&ctx.data("rlhf_prompts.jsonl"))?;
    let (mut unsafe_p, safe): (Vec<EvalPrompt>, Vec<EvalPrompt>) = all.into_iter().partition(|p| p.unsafe_prompt);
    let share = ctx.a.ppo_unsafe_share;
    let k = ((share * safe.len() as f64 / (1.0 - share)).round() as usize).min(unsafe_p.len());
    Rng::derive(ctx.a.seed, "pipeline/ppo-prompts").shuffle(&mut unsafe_p);
    unsafe_p.truncate(k);
    let (n_safe, n_unsafe) = (safe.len(), unsafe_p.len());
    let mut set = safe;
    set.extend(unsafe_p);
    Rng::derive(ctx.a.seed, "pipeline/ppo-prompts-order").shuffle(&mut set);
    write_prompts(&ctx.data("ppo_prompts.jsonl"), &set)?;
    eprintln!("[pipeline] PPO prompts: {n_safe} safe + {n_unsafe} unsafe (--ppo-unsafe-share {share})");
    Ok((n_safe, n_unsafe))
}

/// Stage 8: Ghost Attention from the PPO model.
fn gatt(ctx: &Ctx) -> Result<Value> {
    use crate::cmd::gatt::{BestOfFlags, ExamplesArg, GattStageArgs, InstructionFlags};
    let a = &ctx.a;
    let n_mix = rs_pool_dialogs(ctx, &ctx.data("gatt_mix.jsonl"))?;
    let r = crate::cmd::gatt::stage(GattStageArgs {
        policy: model_dir(ctx, "ppo"),
        tokenizer: Some(ctx.tokenizer()),
        dialogs: vec![ctx.data("instruction_train.jsonl")],
        inst: InstructionFlags { instructions: repo_default("data/gatt/instructions.json"), families: a.gatt_families.clone() },
        prompts: vec![ctx.data("eval_dialogs.jsonl")],
        exclude_from: Vec::new(),
        mix: vec![ctx.data("gatt_mix.jsonl")],
        out: ctx.dir("gatt"),
        every_turn: a.gatt_every_turn,
        count: a.gatt_count,
        min_turns: 2,
        max_turns: a.gatt_turns.iter().copied().max().unwrap_or(2).max(2) as u32,
        examples: ExamplesArg::Prefixes,
        best: BestOfFlags {
            rm: (a.gatt_k > 1).then(|| ctx.dir("rm").join("helpful").join("final")),
            k: a.gatt_k,
            by_checks: a.gatt_k > 1,
            comply: a.gatt_comply,
        },
        max_new_tokens: a.gatt_max_new_tokens,
        seq_len: 576,
        batch_size: a.gatt_batch_size,
        steps: a.gatt_steps,
        lr: a.gatt_lr,
        turns: a.gatt_turns.clone(),
        eval_dialogs: a.gatt_eval_dialogs,
        batch: 16,
        seed: sub_seed(a.seed, "gatt"),
        dev: a.dev.clone(),
    })?;
    let by = |label: &str| -> Value {
        r.models
            .iter()
            .find(|m| m.label == label)
            .map(|m| json!(llama2_train::gatt::eval::by_turn(&m.adherence).into_iter().map(|(t, x)| (t.to_string(), x)).collect::<BTreeMap<_, _>>()))
            .unwrap_or(Value::Null)
    };
    // issue 12's test at the last measured turn: adherence per checkable family and the attention
    // mass on the system message (on the GAtt model's dialogs, the same tokens for every model)
    let last = r.turns.last().copied().unwrap_or(0);
    let mut families = serde_json::Map::new();
    let mut attention = serde_json::Map::new();
    for m in r.models.iter().filter(|m| ["gatt", "no-gatt", "every-turn"].contains(&m.label.as_str())) {
        if let Some(t) = m.adherence.iter().find(|t| t.turn == last) {
            for (fam, rate) in &t.families {
                let e = families.entry(fam.clone()).or_insert_with(|| json!({}));
                e[m.label.as_str()] = json!({"pass": rate.pass, "n": rate.n});
            }
        }
        if let Some(x) = m.attention_shared.iter().find(|x| x.turn == last) {
            attention.insert(m.label.clone(), json!({"mean": x.mean, "se": x.mean_se, "dialogs": x.dialogs}));
        }
    }
    // what the build did: answers kept, rewritten (--gatt-comply), obeyed as sampled
    let built: Value = std::fs::read_to_string(ctx.dir("gatt").join("build.json")).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Value::Null);
    Ok(
        json!({"turns": r.turns, "mixed_rs_answers": n_mix, "baseline": by("no-gatt"), "gatt": by("gatt"), "policy": by("policy"), "every_turn": by("every-turn"),
              "families": a.gatt_families, "built": {"answers": built["answers"], "rewritten": built["rewritten"], "sampled_adherence": built["sampled_adherence"]},
              "last_turn": {"turn": last, "families": families, "attention": attention}}),
    )
}

/// The final rejection-sampling pool (the best answer per RLHF prompt over all iterations, the
/// refusals of unsafe prompts included) as single-turn dialogs at `out`; answers cut by the token
/// budget (no EOS) are left out. Returns the dialogs written.
fn rs_pool_dialogs(ctx: &Ctx, out: &Path) -> Result<usize> {
    let pool = ctx.dir("rs").join(format!("iter-{}", ctx.a.rs_iterations)).join("pool.jsonl");
    let prompts = read_prompts(&ctx.data("rlhf_prompts.jsonl"))?;
    let text = std::fs::read_to_string(&pool).with_context(|| format!("reading {}; HINT: run the rs stage first", pool.display()))?;
    let (mut lines, mut n) = (String::new(), 0);
    for (i, l) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(l).with_context(|| format!("{} line {}: not JSON; HINT: rerun with --from rs", pool.display(), i + 1))?;
        let p = v["prompt_index"].as_u64().and_then(|k| prompts.get(k as usize));
        let (Some(p), Some(answer)) = (p, v["text"].as_str()) else {
            bail!("{} line {}: no prompt_index of the RLHF prompts or no text; HINT: rerun with --from rs", pool.display(), i + 1);
        };
        if v["finish"].as_str() != Some("eos") || answer.trim().is_empty() {
            continue;
        }
        lines += &json!({"messages": [{"role": "user", "content": p.text}, {"role": "assistant", "content": answer}]}).to_string();
        lines.push('\n');
        n += 1;
    }
    write_atomic(out, lines.as_bytes())?;
    Ok(n)
}

/// The numbers of one model (the `S` of `results.json`) and the details.
fn stage_numbers(e: &llama2_train::eval::models::ModelEval, bleu: &llama2_train::eval::models::SelfBleuCurve) -> Value {
    let mut sb = BTreeMap::new();
    for (i, t) in bleu.temperatures.iter().enumerate() {
        let ys: Vec<f64> = bleu.sets.values().map(|v| v[i]).collect();
        sb.insert(format!("{t}"), ys.iter().sum::<f64>() / ys.len().max(1) as f64);
    }
    json!({
        "gold_helpfulness": e.gold_helpfulness.as_ref().map(|m| m.mean),
        "rm_reward": e.rm_reward.as_ref().map(|m| m.mean),
        "violation_rate": e.safety.violation.as_ref().map(|r| r.rate),
        "false_refusal_rate": e.safety.false_refusal.as_ref().map(|r| r.rate),
        "win_rate_vs_sft_gold": e.win_rate_vs_baseline.as_ref().map(|w| w.win_rate),
        "self_bleu": sb,
    })
}

/// Stage 9: every model on the held-out prompts, judged by the annotator.
struct EvalJob<'a>(&'a Ctx);

impl Job for EvalJob<'_> {
    type Out = Value;
    fn run<B: Backend>(self, be: &B) -> Result<Value> {
        let (ctx, a) = (self.0, &self.0.a);
        let once = read_prompts(&ctx.data("eval_prompts.jsonl"))?;
        // every prompt `eval_samples` times: entry i is answered from the stream `pipeline/eval/<i>`
        let prompts: Vec<EvalPrompt> = (0..a.eval_samples).flat_map(|_| once.iter().cloned()).collect();
        let tok = Tokenizer::load(ctx.tokenizer())?;
        let rm = crate::cmd::evaluate::load_rm(be, &ctx.dir("rm").join("helpful").join("final"), tok.vocab_size())?;
        let g = GenSettings {
            max_new: a.max_new_tokens as usize,
            sampling: Sampling { temperature: a.eval_temperature, top_k: None, top_p: Some(TOP_P) },
            seed: a.seed,
        };
        let (bf, bc) = self_bleu_sets()?;
        let sets = vec![("factual".to_string(), bf), ("creative".to_string(), bc)];
        let dir = ctx.dir("eval");
        std::fs::create_dir_all(&dir)?;
        let mut base: Option<Vec<GenAnswer>> = None;
        let (mut stages, mut details, mut curves) = (serde_json::Map::new(), serde_json::Map::new(), Vec::new());
        for name in EVAL_MODELS {
            let mdir = model_dir(ctx, name);
            let model: Model<B> = load_policy(be, &mdir, &Some(ctx.tokenizer()))?.0;
            // the same streams for every model (common random numbers)
            let ans = generate_answers(be, &model, &tok, &prompts, &g, "pipeline/eval")?;
            let bleu = self_bleu_curve(
                be,
                &model,
                &tok,
                &sets,
                &a.self_bleu_temperatures,
                a.self_bleu_samples as usize,
                a.max_new_tokens.min(64) as usize,
                None,
                a.seed,
            )?;
            drop(model);
            let e = evaluate_answers(be, &prompts, &ans, Some((&rm, 16)), Some(base.as_deref().unwrap_or(&ans)))?;
            let mut lines = String::new();
            for (p, x) in prompts.iter().zip(&ans) {
                let gold = llama2_train::eval::annotator::judge(&p.text, p.unsafe_prompt, &x.text, x.eos);
                lines +=
                    &json!({"prompt": p.text, "unsafe": p.unsafe_prompt, "category": p.category, "answer": x.text, "eos": x.eos, "gold": gold}).to_string();
                lines.push('\n');
            }
            write_atomic(&dir.join(format!("{name}_answers.jsonl")), lines.as_bytes())?;
            let s = stage_numbers(&e, &bleu);
            eprintln!("[pipeline] eval {name}: {s}");
            stages.insert(name.into(), s);
            details.insert(name.into(), json!({"eval": e, "self_bleu": bleu, "ended_with_eos": ans.iter().filter(|x| x.eos).count(), "answers": ans.len()}));
            curves.push((name, bleu));
            if base.is_none() {
                base = Some(ans);
            }
        }
        super::report::self_bleu_png(&curves, &dir.join("self_bleu.png"))?;
        Ok(
            json!({"prompts": once.len(), "samples_per_prompt": a.eval_samples, "answers": prompts.len(), "generation": g, "temperature": a.eval_temperature, "top_p": TOP_P, "stages": stages, "details": details}),
        )
    }
}
