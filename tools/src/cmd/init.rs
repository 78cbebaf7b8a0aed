//! `train-tool init`: a model with random weights, saved in HF format
//! (config.json + model.safetensors, float32), e.g. the benchmark models of
//! tools/bench/decode_vs_llama2c.sh.
//!
//! Two ways to draw the weights:
//! - `hf`: transformers' `_init_weights` for Llama (every matrix
//!   N(0, 0.02), norms 1), as [`llama2_model::Model::init_random`];
//! - `unit`: logits of order 1 and non-uniform attention, so that greedy
//!   decoding has clear winners and two implementations can be compared
//!   token for token (the rule of tools/scripts/make_fixtures.py): Linear
//!   weights N(0, 1/in), the embedding N(0, 1) (N(0, 1/hidden) when tied),
//!   RMSNorm gains 1 + 0.1 N(0, 1).
//!
//! Public items: [`InitArgs`], [`run`].

use anyhow::Result;
use clap::{Args, ValueEnum};
use llama2_model::params::{ParamId, ParamLayout};
use llama2_model::weights::SaveDtype;
use llama2_model::{Config, Model};
use llama2_runtime::rng::Rng;
use llama2_runtime::CpuBackend;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InitKind {
    /// transformers' init: matrices N(0, 0.02), norms 1
    Hf,
    /// logits of order 1: Linear N(0, 1/in), embedding N(0, 1), norms 1 + 0.1 N(0, 1)
    Unit,
}

#[derive(Args, Clone, Debug)]
pub struct InitArgs {
    /// Preset shapes (tiny, small, ref-tiny, ref-small, 1b, 7b, ...)
    #[arg(long)]
    pub preset: String,
    /// Vocabulary size (default: the preset's)
    #[arg(long, value_parser = clap::value_parser!(u32).range(3..))]
    pub vocab: Option<u32>,
    /// Number of KV heads (default: the preset's; must divide the heads)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub kv_heads: Option<u32>,
    /// max_position_embeddings (default: the preset's)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_seq_len: Option<u32>,
    /// Share the embedding with the output head
    #[arg(long)]
    pub tie: bool,
    /// How to draw the weights
    #[arg(long, value_enum, default_value = "hf")]
    pub init: InitKind,
    /// Seed of the weights
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory (created)
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: InitArgs) -> Result<()> {
    let mut c = Config::preset(&a.preset, a.vocab.map(|v| v as usize))?;
    if let Some(k) = a.kv_heads {
        c.n_kv_heads = k as usize;
    }
    if let Some(s) = a.max_seq_len {
        c.max_seq_len = s as usize;
    }
    c.tie_embeddings = a.tie;
    c.validate()?;
    let be = CpuBackend::new(0)?;
    let model = match a.init {
        InitKind::Hf => Model::init_random(&be, c.clone(), a.seed)?,
        InitKind::Unit => {
            let lay = ParamLayout::new(&c);
            let mut host = vec![0f32; lay.total];
            let mut rng = Rng::derive(a.seed, "init-unit");
            for (id, l, _) in lay.hf_tensors(&c) {
                let (o, n) = lay.range(id, l);
                let shape = id.hf_shape(&c);
                let std = match id {
                    ParamId::Embed if c.tie_embeddings => 1.0 / (c.hidden as f32).sqrt(),
                    ParamId::Embed => 1.0,
                    ParamId::Ln1 | ParamId::Ln2 | ParamId::Lnf => 0.1,
                    _ => 1.0 / (shape[1] as f32).sqrt(), // Linear [out, in]
                };
                let mean = if matches!(id, ParamId::Ln1 | ParamId::Ln2 | ParamId::Lnf) { 1.0 } else { 0.0 };
                for x in &mut host[o..o + n] {
                    *x = mean + std * rng.normal();
                }
            }
            Model::from_host(&be, c.clone(), &host)?
        }
    };
    model.save(&be, &a.out, SaveDtype::F32)?;
    println!("wrote {} ({} parameters, {:?} init, seed {})", a.out.display(), c.n_params(), a.init, a.seed);
    Ok(())
}
