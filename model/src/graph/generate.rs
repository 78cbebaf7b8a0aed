//! Sampling and generation with the KV cache.
//!
//! Sampling follows transformers' logits processors in their order:
//! temperature, then top-k, then top-p (nucleus: the smallest set of most
//! likely tokens whose probability reaches p, at least one token). Greedy
//! (temperature 0) takes the first index of the maximum, as `torch.argmax`.
//! Every random draw comes from the seeded [`Rng`].
//!
//! Generation: one prefill over the prompt, then one token per step through
//! the cache. Sequences stop at EOS (which is kept in the output, as
//! transformers' `generate` does) unless told not to.
//!
//! Public items: [`Sampling`], [`sample`], [`Generator`], [`GenOutput`].

use crate::acts::{Acts, LogitRows};
use crate::error::{ModelError, Result};
use crate::model::{KvCache, Model};
use llama2_runtime::rng::Rng;
use llama2_runtime::{v, Backend};

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// 0 = greedy
    pub temperature: f32,
    /// keep the k most likely tokens (None = all)
    pub top_k: Option<usize>,
    /// nucleus probability (None or 1.0 = off)
    pub top_p: Option<f32>,
}

impl Sampling {
    pub const GREEDY: Sampling = Sampling { temperature: 0.0, top_k: None, top_p: None };
}

/// Index of the first maximum.
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &xi) in x.iter().enumerate() {
        if xi > x[best] {
            best = i;
        }
    }
    best as u32
}

/// Draws one token from `logits (V)`.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut Rng) -> u32 {
    if s.temperature <= 0.0 || s.top_k == Some(1) {
        return argmax(logits);
    }
    // candidates sorted by logit, descending (stable: ties keep index order)
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    idx.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    if let Some(k) = s.top_k {
        idx.truncate(k.max(1));
    }
    let m = logits[idx[0] as usize] / s.temperature;
    let mut probs: Vec<f64> = idx.iter().map(|&i| ((logits[i as usize] / s.temperature - m) as f64).exp()).collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= z);
    if let Some(p) = s.top_p {
        if p < 1.0 {
            let mut cum = 0.0;
            let mut keep = probs.len();
            for (j, q) in probs.iter().enumerate() {
                cum += q;
                if cum >= p as f64 {
                    keep = j + 1;
                    break;
                }
            }
            probs.truncate(keep.max(1));
            let z: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|q| *q /= z);
        }
    }
    let u = rng.next_f64();
    let mut cum = 0.0;
    for (j, q) in probs.iter().enumerate() {
        cum += q;
        if u < cum {
            return idx[j];
        }
    }
    idx[probs.len() - 1]
}

/// Generated tokens per sequence (prompt excluded).
#[derive(Clone, Debug, PartialEq)]
pub struct GenOutput {
    pub ids: Vec<Vec<u32>>,
    /// whether each sequence ended with EOS
    pub ended: Vec<bool>,
    /// seconds from the call until the first token's logits were on the
    /// host (the prefill); decode speed is measured after it, as llama2.c's
    /// run.c starts its clock after the first forward
    pub prefill_s: f64,
}

/// Reusable buffers for generating `b` sequences at a time.
///
/// ```
/// use llama2_model::generate::{Generator, Sampling};
/// use llama2_model::Model;
/// use llama2_runtime::{rng::Rng, CpuBackend};
///
/// let be = CpuBackend::new(1)?;
/// let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gqa");
/// let model = Model::load(&be, &dir)?;
/// // two prompts of different lengths, 5 new tokens each, greedy
/// let prompts = vec![vec![1, 72, 9], vec![1]];
/// let mut gen = Generator::new(&be, &model, 2, 3 + 5)?;
/// let out = gen.generate(&be, &model, &prompts, 5, &Sampling::GREEDY, &mut Rng::new(0), false)?;
/// assert_eq!(out.ids[0].len(), 5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Generator<B: Backend> {
    pub b: usize,
    cap: usize,
    step: Acts<B>,
    cache: KvCache<B>,
}

impl<B: Backend> Generator<B> {
    /// Buffers for `b` sequences of at most `cap` positions (prompt + new).
    pub fn new(be: &B, model: &Model<B>, b: usize, cap: usize) -> Result<Self> {
        if cap > model.rope_len {
            return Err(ModelError::Invalid(format!("{cap} positions exceed max_position_embeddings {}; HINT: ask for fewer new tokens", model.rope_len)));
        }
        Ok(Generator { b, cap, step: Acts::new(be, &model.cfg, b, 1, false, LogitRows::Last)?, cache: KvCache::new(be, &model.cfg, b, cap)? })
    }

    /// Continues `prompts` (b sequences, of any lengths) by up to `max_new`
    /// tokens each. With `stop_at_eos`, a sequence stops after EOS and the
    /// whole call ends when every sequence has.
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        &mut self,
        be: &B,
        model: &Model<B>,
        prompts: &[Vec<u32>],
        max_new: usize,
        s: &Sampling,
        rng: &mut Rng,
        stop_at_eos: bool,
    ) -> Result<GenOutput> {
        // one trip to the backend's threads for the whole loop, not one per op
        be.run_batched(|| self.generate_here(be, model, prompts, max_new, s, rng, stop_at_eos))
    }

    #[allow(clippy::too_many_arguments)]
    fn generate_here(
        &mut self,
        be: &B,
        model: &Model<B>,
        prompts: &[Vec<u32>],
        max_new: usize,
        s: &Sampling,
        rng: &mut Rng,
        stop_at_eos: bool,
    ) -> Result<GenOutput> {
        let b = self.b;
        if prompts.len() != b {
            return Err(ModelError::Invalid(format!("generate: {} prompts for a generator of {b}", prompts.len())));
        }
        if let Some(i) = prompts.iter().position(|x| x.is_empty()) {
            return Err(ModelError::Invalid(format!("generate: prompt {i} is empty; HINT: start it with BOS")));
        }
        let p = prompts.iter().map(|x| x.len()).max().unwrap_or(0);
        if p + max_new > self.cap {
            return Err(ModelError::Invalid(format!("generate: {p} prompt + {max_new} new tokens exceed the {} positions allocated", self.cap)));
        }
        let vocab = model.cfg.vocab_size;
        let eos = model.cfg.eos_id;
        let t0 = std::time::Instant::now();
        self.cache.reset();
        // prompts of different lengths: right padding, never attended
        let mut prefill = Acts::new(be, &model.cfg, b, p, false, LogitRows::Last)?;
        let mut flat = vec![0u32; b * p];
        for (r, x) in prompts.iter().enumerate() {
            flat[r * p..r * p + x.len()].copy_from_slice(x);
        }
        let lens: Vec<u32> = prompts.iter().map(|x| x.len() as u32).collect();
        model.forward_ragged(be, &mut prefill, &flat, Some(&lens), Some(&mut self.cache))?;
        let mut logits = vec![0f32; b * vocab];
        be.download(v(&prefill.a.logits), &mut logits)?;
        drop(prefill);
        let prefill_s = t0.elapsed().as_secs_f64();
        let mut out = GenOutput { ids: vec![Vec::with_capacity(max_new); b], ended: vec![false; b], prefill_s };
        for step in 0..max_new {
            let mut next = vec![0u32; b];
            for r in 0..b {
                if out.ended[r] {
                    next[r] = eos;
                    continue;
                }
                let tok = sample(&logits[r * vocab..(r + 1) * vocab], s, rng);
                next[r] = tok;
                out.ids[r].push(tok);
                if stop_at_eos && tok == eos {
                    out.ended[r] = true;
                }
            }
            if (stop_at_eos && out.ended.iter().all(|&e| e)) || step + 1 == max_new {
                break;
            }
            model.forward(be, &mut self.step, &next, Some(&mut self.cache))?;
            be.download(v(&self.step.a.logits), &mut logits)?;
        }
        Ok(out)
    }
}
