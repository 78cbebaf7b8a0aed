//! The one place where GAtt generates text: a batch of chat prompts
//! answered by a model, in chunks of `batch` sequences decoded together
//! (prompts of different lengths, right padding never attended).
//!
//! Streams: each chunk draws from `Rng::derive(seed, "<tag>/<chunk>")`, so
//! a run is reproducible for a given `batch`, but an answer depends on which
//! prompts share its chunk. When the batched decoder with one seeded stream
//! per (prompt, sample) lands (model/src/graph/generate.rs), only this
//! function changes.
//!
//! Public items: [`generate_answers`].

use crate::error::{Result, TrainError};
use crate::ppo::rollout::Answer;
use llama2_model::generate::{Generator, Sampling};
use llama2_model::Model;
use llama2_runtime::rng::Rng;
use llama2_runtime::Backend;

/// One answer per prompt (ids; EOS included when generated), at most
/// `max_new` tokens each. Every prompt must leave room for `max_new`
/// tokens in the model's context.
#[allow(clippy::too_many_arguments)]
pub fn generate_answers<B: Backend>(
    be: &B,
    model: &Model<B>,
    prompts: &[Vec<u32>],
    max_new: usize,
    s: &Sampling,
    batch: usize,
    seed: u64,
    tag: &str,
) -> Result<Vec<Answer>> {
    if let Some((i, p)) = prompts.iter().enumerate().find(|(_, p)| p.len() + max_new > model.rope_len) {
        return Err(TrainError::Invalid(format!(
            "prompt {i} ({} tokens) + {max_new} new tokens exceed the context of {}; HINT: drop the turn (the callers check this first)",
            p.len(),
            model.rope_len
        )));
    }
    let mut out = Vec::with_capacity(prompts.len());
    for (ci, chunk) in prompts.chunks(batch.max(1)).enumerate() {
        let cap = chunk.iter().map(|p| p.len()).max().unwrap_or(0) + max_new;
        let mut gen = Generator::new(be, model, chunk.len(), cap)?;
        let mut rng = Rng::derive(seed, &format!("{tag}/{ci}"));
        let g = gen.generate(be, model, chunk, max_new, s, &mut rng, true)?;
        out.extend(g.ids.into_iter().zip(g.ended).map(|(ids, eos)| Answer { ids, eos }));
    }
    Ok(out)
}
