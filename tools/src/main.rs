//! train-tool: the command line of llama2. One subcommand per job; each
//! lives in its own module under `cmd/`.

use clap::{Parser, Subcommand};

mod cmd;

/// The Llama 2 system in Rust: pretraining, SFT, reward models, rejection
/// sampling, PPO and Ghost Attention, on CPU or CUDA.
#[derive(Parser)]
#[command(name = "train-tool", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Tokenizer tools: train a BPE vocabulary, encode, decode, info
    Tokenizer(cmd::tokenizer::TokenizerArgs),
    /// Tokenize text corpora into llm.c token shards (train and val)
    Tokenize(cmd::tokenizer::TokenizeArgs),
    /// Check every CUDA kernel against its CPU counterpart (needs a GPU)
    GpuCheck(cmd::gpu_check::GpuCheckArgs),
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Tokenizer(a) => cmd::tokenizer::run_tokenizer(a),
        Cmd::Tokenize(a) => cmd::tokenizer::run_tokenize(a),
        Cmd::GpuCheck(a) => cmd::gpu_check::run(a),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
