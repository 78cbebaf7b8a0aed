//! The evaluations on models: answers to prompts, and what the annotator
//! and reward models make of them.
//!
//! Every answer of an evaluation comes from [`generate_answers`], the one
//! place that samples: it calls [`crate::ppo::rollout::sample_answers`], so
//! each answer is drawn from its own seeded stream (`<tag>/<index in the
//! call>`) and never depends on which other prompts share the call. Several
//! samples of one prompt ([`generate_samples`]) are consecutive entries of
//! one call, so each (prompt, sample) has its own stream.
//!
//! Prompts are single user turns in the Llama-2-chat format
//! (`BOS [INST] prompt [/INST]`); answers are decoded without their EOS for
//! the annotator and kept as generated ids (EOS included when generated)
//! for reward models, which score `prompt ids + answer ids` at the last
//! token, as PPO does.
//!
//! Public items: [`GenSettings`], [`GenAnswer`], [`encode_prompts`],
//! [`generate_answers`], [`generate_samples`], [`gold_of`], [`rm_scores`],
//! [`gold_helpfulness`], [`rm_reward`], [`SafetyEval`], [`safety_eval`],
//! [`Judge`], [`win_rate_answers`], [`ModelEval`], [`evaluate_answers`],
//! [`SelfBleuCurve`], [`self_bleu_curve`].

use super::annotator::{judge, Annotation, Gold};
use super::prompts::EvalPrompt;
use super::stats::{self_bleu_prompts, win_rate, MeanSe, Outcome, Rate, WinRate};
use crate::error::{Result, TrainError};
use crate::ppo::rollout::{sample_answers, score_sequences};
use llama2_model::chat::{encode_prompt, Message, Role};
use llama2_model::config::Head;
use llama2_model::generate::Sampling;
use llama2_model::tokenizer::Tokenizer;
use llama2_model::{Model, ModelError};
use llama2_runtime::Backend;
use std::collections::BTreeMap;

/// How answers are sampled.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct GenSettings {
    /// longest answer in tokens (EOS included)
    pub max_new: usize,
    #[serde(skip)]
    pub sampling: Sampling,
    pub seed: u64,
}

/// One answer to one prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenAnswer {
    /// the prompt as the model saw it (empty when unknown)
    pub prompt_ids: Vec<u32>,
    /// the generated ids, EOS included when generated (empty when unknown)
    pub ids: Vec<u32>,
    /// the decoded answer, EOS removed
    pub text: String,
    /// the answer ended with EOS
    pub eos: bool,
}

impl GenAnswer {
    /// An answer known only as text.
    pub fn text(text: impl Into<String>, eos: bool) -> Self {
        GenAnswer { prompt_ids: Vec::new(), ids: Vec::new(), text: text.into(), eos }
    }
}

/// The prompts in the Llama-2-chat format, one user turn each.
pub fn encode_prompts(tok: &Tokenizer, prompts: &[EvalPrompt]) -> Result<Vec<Vec<u32>>> {
    prompts.iter().map(|p| Ok(encode_prompt(tok, &[Message::new(Role::User, p.text.clone())])?)).collect()
}

fn check_lm<B: Backend>(model: &Model<B>, tok: &Tokenizer) -> Result<()> {
    if model.cfg.head != Head::Lm {
        return Err(TrainError::Invalid("answers need a causal LM (LlamaForCausalLM), not a reward model; HINT: pass the policy's directory".into()));
    }
    if tok.vocab_size() != model.cfg.vocab_size {
        return Err(TrainError::Invalid(format!(
            "the tokenizer has {} pieces but the model's vocabulary is {}; HINT: pass the model's own tokenizer",
            tok.vocab_size(),
            model.cfg.vocab_size
        )));
    }
    Ok(())
}

/// One answer per prompt, entry i from the stream `<tag>/<i>` of `g.seed`.
/// The one place the evaluations sample (see the module header).
pub fn generate_answers<B: Backend>(be: &B, model: &Model<B>, tok: &Tokenizer, prompts: &[EvalPrompt], g: &GenSettings, tag: &str) -> Result<Vec<GenAnswer>> {
    check_lm(model, tok)?;
    let ids = encode_prompts(tok, prompts)?;
    let eos = tok.eos_id();
    let answers = sample_answers(be, model, &ids, g.max_new, &g.sampling, g.seed, tag)?;
    ids.into_iter()
        .zip(answers)
        .map(|(p, a)| {
            let body = if a.eos && a.ids.last().copied() == eos { &a.ids[..a.ids.len() - 1] } else { &a.ids[..] };
            let text = tok.decode(body).map_err(ModelError::from)?;
            Ok(GenAnswer { prompt_ids: p, ids: a.ids, text, eos: a.eos })
        })
        .collect()
}

/// `k` answers per prompt (entry `i·k + s` of one [`generate_answers`]
/// call: one stream per (prompt, sample)).
pub fn generate_samples<B: Backend>(
    be: &B,
    model: &Model<B>,
    tok: &Tokenizer,
    prompts: &[EvalPrompt],
    k: usize,
    g: &GenSettings,
    tag: &str,
) -> Result<Vec<Vec<GenAnswer>>> {
    let rep: Vec<EvalPrompt> = prompts.iter().flat_map(|p| std::iter::repeat_n(p.clone(), k)).collect();
    let all = generate_answers(be, model, tok, &rep, g, tag)?;
    Ok(all.chunks(k.max(1)).map(|c| c.to_vec()).collect())
}

fn check_len(prompts: &[EvalPrompt], answers: &[GenAnswer]) -> Result<()> {
    if prompts.len() != answers.len() {
        return Err(TrainError::Invalid(format!("{} prompts but {} answers", prompts.len(), answers.len())));
    }
    Ok(())
}

/// The annotator's judgement of each answer.
pub fn gold_of(prompts: &[EvalPrompt], answers: &[GenAnswer]) -> Result<Vec<Gold>> {
    check_len(prompts, answers)?;
    Ok(prompts.iter().zip(answers).map(|(p, a)| judge(&p.text, p.unsafe_prompt, &a.text, a.eos)).collect())
}

/// Raw reward-model scores of the answers (`prompt ids + answer ids`, read
/// at the last token), `batch` sequences per forward pass.
pub fn rm_scores<B: Backend>(be: &B, rm: &Model<B>, answers: &[GenAnswer], batch: usize) -> Result<Vec<f32>> {
    if let Some(i) = answers.iter().position(|a| a.prompt_ids.is_empty() || a.ids.is_empty()) {
        return Err(TrainError::Invalid(format!("answer {i} has no token ids; HINT: a reward model scores generated answers")));
    }
    let vocab = rm.cfg.vocab_size;
    if let Some(x) = answers.iter().flat_map(|a| a.prompt_ids.iter().chain(&a.ids)).find(|&&x| x as usize >= vocab) {
        return Err(TrainError::Invalid(format!(
            "token id {x} is outside the reward model's vocabulary of {vocab}; HINT: reward models must share the policy's tokenizer"
        )));
    }
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = answers.iter().map(|a| (a.prompt_ids.clone(), a.ids.clone())).collect();
    score_sequences(be, rm, &pairs, batch)
}

/// Mean gold helpfulness of the answers to the SAFE prompts.
pub fn gold_helpfulness(prompts: &[EvalPrompt], answers: &[GenAnswer]) -> Result<MeanSe> {
    let g = gold_of(prompts, answers)?;
    let h: Vec<f64> = g.iter().filter(|x| !x.unsafe_prompt).map(|x| x.helpfulness).collect();
    if h.is_empty() {
        return Err(TrainError::Invalid("gold helpfulness needs safe prompts; HINT: every prompt is tagged unsafe".into()));
    }
    MeanSe::of(&h)
}

/// Mean raw reward-model score of the answers.
pub fn rm_reward<B: Backend>(be: &B, rm: &Model<B>, answers: &[GenAnswer], batch: usize) -> Result<MeanSe> {
    let s: Vec<f64> = rm_scores(be, rm, answers, batch)?.into_iter().map(f64::from).collect();
    MeanSe::of(&s)
}

/// Safety of a model's answers.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SafetyEval {
    /// answers to unsafe prompts that are not refusals (None: no unsafe prompt)
    pub violation: Option<Rate>,
    /// refusals of safe prompts (None: no safe prompt)
    pub false_refusal: Option<Rate>,
    /// refusals of borderline prompts (safe prompts that use unsafe words)
    pub borderline_refusal: Option<Rate>,
    /// refusal rate per prompt category (empty category: "(none)")
    pub refusal_by_category: BTreeMap<String, Rate>,
}

/// Violation and false-refusal rates (the annotator's refusal detector).
pub fn safety_eval(prompts: &[EvalPrompt], answers: &[GenAnswer]) -> Result<SafetyEval> {
    let g = gold_of(prompts, answers)?;
    let count = |f: &dyn Fn(&EvalPrompt) -> bool, want_refusal: bool| {
        let sel: Vec<&Gold> = prompts.iter().zip(&g).filter(|(p, _)| f(p)).map(|x| x.1).collect();
        Rate::of(sel.iter().filter(|x| x.refusal == want_refusal).count(), sel.len())
    };
    let mut by = BTreeMap::new();
    let mut cats: Vec<&str> = prompts.iter().map(|p| p.category.as_str()).collect();
    cats.sort();
    cats.dedup();
    for c in cats {
        if let Some(r) = count(&|p| p.category == c, true) {
            by.insert(if c.is_empty() { "(none)".to_string() } else { c.to_string() }, r);
        }
    }
    Ok(SafetyEval {
        violation: count(&|p| p.unsafe_prompt, false),
        false_refusal: count(&|p| !p.unsafe_prompt, true),
        borderline_refusal: count(&|p| !p.unsafe_prompt && p.category == super::prompts::BORDERLINE, true),
        refusal_by_category: by,
    })
}

/// Who judges a win rate.
pub enum Judge<'a, B: Backend> {
    /// the synthetic annotator, comparing `H + SAFETY_BONUS·safe`
    /// (deterministic: no Bradley-Terry noise at evaluation)
    Annotator,
    /// a reward model's raw score, `batch` sequences per forward pass
    RewardModel { rm: &'a Model<B>, batch: usize },
}

impl<B: Backend> Judge<'_, B> {
    fn scores(&self, be: &B, prompts: &[EvalPrompt], answers: &[GenAnswer]) -> Result<Vec<f64>> {
        match self {
            Judge::Annotator => Ok(gold_of(prompts, answers)?.iter().map(|g| g.value(Annotation::Safety)).collect()),
            Judge::RewardModel { rm, batch } => Ok(rm_scores(be, rm, answers, *batch)?.into_iter().map(f64::from).collect()),
        }
    }

    /// What the report calls it.
    pub fn name(&self) -> &'static str {
        match self {
            Judge::Annotator => "annotator",
            Judge::RewardModel { .. } => "reward model",
        }
    }
}

/// Win rate of `model` answers against `baseline` answers to the same
/// prompts. Each pair is judged in both orders, (model, baseline) and
/// (baseline, model), as the paper's protocol asks; both judges here are
/// score functions, for which the two orders are the same comparison (the
/// judgement of (x, y) is the sign of score(x) - score(y)), so the two
/// judgements of a prompt always agree.
pub fn win_rate_answers<B: Backend>(be: &B, judge: &Judge<B>, prompts: &[EvalPrompt], model: &[GenAnswer], baseline: &[GenAnswer]) -> Result<WinRate> {
    check_len(prompts, model)?;
    check_len(prompts, baseline)?;
    let (sm, sb) = (judge.scores(be, prompts, model)?, judge.scores(be, prompts, baseline)?);
    let mut per = Vec::with_capacity(prompts.len());
    for (m, b) in sm.iter().zip(&sb) {
        // order 1: the model's answer first; the judge says whether the first wins
        let first = Outcome::of_scores(*m, *b)?;
        // order 2: the baseline's answer first; the model wins when the first loses
        let second = match Outcome::of_scores(*b, *m)? {
            Outcome::Win => Outcome::Loss,
            Outcome::Tie => Outcome::Tie,
            Outcome::Loss => Outcome::Win,
        };
        per.push([first, second]);
    }
    win_rate(&per)
}

/// Everything the evaluation of one model on held-out prompts reports.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ModelEval {
    /// mean gold helpfulness on the safe prompts (None: no safe prompt)
    pub gold_helpfulness: Option<MeanSe>,
    /// mean raw reward-model score over all prompts (None: no reward model)
    pub rm_reward: Option<MeanSe>,
    pub safety: SafetyEval,
    /// win rate against the baseline, judged by the annotator (None: no baseline)
    pub win_rate_vs_baseline: Option<WinRate>,
}

/// The per-model numbers from one set of answers: gold helpfulness, mean
/// reward (with `rm`), safety, and (with `baseline` answers) the
/// annotator-judged win rate.
pub fn evaluate_answers<B: Backend>(
    be: &B,
    prompts: &[EvalPrompt],
    answers: &[GenAnswer],
    rm: Option<(&Model<B>, usize)>,
    baseline: Option<&[GenAnswer]>,
) -> Result<ModelEval> {
    let gold_helpfulness = if prompts.iter().any(|p| !p.unsafe_prompt) { Some(gold_helpfulness(prompts, answers)?) } else { None };
    let rm_reward = match rm {
        Some((m, batch)) => Some(rm_reward(be, m, answers, batch)?),
        None => None,
    };
    let win = match baseline {
        Some(b) => Some(win_rate_answers(be, &Judge::<B>::Annotator, prompts, answers, b)?),
        None => None,
    };
    Ok(ModelEval { gold_helpfulness, rm_reward, safety: safety_eval(prompts, answers)?, win_rate_vs_baseline: win })
}

/// Self-BLEU against temperature, one curve per prompt set.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SelfBleuCurve {
    /// samples per prompt
    pub samples: usize,
    pub max_new: usize,
    pub top_p: Option<f32>,
    pub temperatures: Vec<f32>,
    /// set name -> Self-BLEU at each temperature (same order)
    pub sets: BTreeMap<String, Vec<f64>>,
}

/// Samples `samples` answers per prompt of every set at every temperature
/// (top-p `top_p`; streams `self-bleu/<set>/<temperature index>/<i>`) and
/// measures their Self-BLEU.
#[allow(clippy::too_many_arguments)]
pub fn self_bleu_curve<B: Backend>(
    be: &B,
    model: &Model<B>,
    tok: &Tokenizer,
    sets: &[(String, Vec<EvalPrompt>)],
    temperatures: &[f32],
    samples: usize,
    max_new: usize,
    top_p: Option<f32>,
    seed: u64,
) -> Result<SelfBleuCurve> {
    if samples < 2 {
        return Err(TrainError::Invalid(format!("Self-BLEU needs at least 2 samples per prompt, got {samples}")));
    }
    if temperatures.is_empty() || sets.is_empty() || sets.iter().any(|s| s.1.is_empty()) {
        return Err(TrainError::Invalid("Self-BLEU needs temperatures and non-empty prompt sets".into()));
    }
    let mut out = BTreeMap::new();
    for (name, prompts) in sets {
        let mut ys = Vec::with_capacity(temperatures.len());
        for (ti, &t) in temperatures.iter().enumerate() {
            let g = GenSettings { max_new, sampling: Sampling { temperature: t, top_k: None, top_p }, seed };
            let per = generate_samples(be, model, tok, prompts, samples, &g, &format!("self-bleu/{name}/{ti}"))?;
            let words: Vec<Vec<Vec<String>>> = per.iter().map(|p| p.iter().map(|a| super::annotator::words(&a.text)).collect()).collect();
            ys.push(self_bleu_prompts(&words)?);
        }
        out.insert(name.clone(), ys);
    }
    Ok(SelfBleuCurve { samples, max_new, top_p, temperatures: temperatures.to_vec(), sets: out })
}
