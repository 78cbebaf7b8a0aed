//! `train-tool tokenizer ...` and `train-tool tokenize` (tokenizer issue).
use clap::Args;

#[derive(Args)]
pub struct TokenizerArgs {}

#[derive(Args)]
pub struct TokenizeArgs {}

pub fn run_tokenizer(_a: TokenizerArgs) -> anyhow::Result<()> {
    anyhow::bail!("tokenizer: not built yet")
}

pub fn run_tokenize(_a: TokenizeArgs) -> anyhow::Result<()> {
    anyhow::bail!("tokenize: not built yet")
}
