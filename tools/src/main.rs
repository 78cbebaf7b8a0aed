//! train-tool: the command line of llama2. One subcommand per job; each
//! lives in its own module under `cmd/`.

use clap::{Parser, Subcommand};

mod cmd;
mod device;
mod flags;

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
    /// Mean cross-entropy of a model over token shards
    EvalLoss(cmd::eval::EvalLossArgs),
    /// The paper's evaluations of chat models: win rate, safety, helpfulness, Self-BLEU vs temperature
    Evaluate(cmd::evaluate::EvaluateArgs),
    /// The synthetic annotator: safety prompts and demonstrations, judgements, labelled preference pairs
    Annotate(cmd::annotate::AnnotateArgs),
    /// Sample a continuation of a prompt (ids) with the KV cache
    Generate(cmd::generate::GenerateArgs),
    /// Answers to many prompts (K samples each), decoded together in one KV cache; JSON Lines in and out
    GenerateBatch(cmd::generate_batch::GenerateBatchArgs),
    /// Rejection-sampling fine-tuning: K samples per prompt, scored by reward models, best kept over all iterations, fine-tuned
    Rs(cmd::rs::RsArgs),
    /// Debugging tools (gradients)
    Debug(cmd::debug::DebugArgs),
    /// Shapes, parameter count and memory estimates of a model or preset
    Info(cmd::info::InfoArgs),
    /// Whole-step benchmarks: training step, decoding
    Bench(cmd::bench::BenchArgs),
    /// Pretrain a model on token shards (the paper's recipe)
    Pretrain(cmd::pretrain::PretrainArgs),
    /// Supervised fine-tuning on dialogs in the Llama-2-chat format
    Sft(cmd::sft::SftArgs),
    /// PPO (Llama 2's RLHF): policy, value model, frozen reference and reward models
    Ppo(cmd::ppo::PpoArgs),
    /// Reward models: init from a chat model, train on preference pairs, score, evaluate
    Rm(cmd::rm::RmArgs),
    /// Ghost Attention: system-message demonstrations, GAtt data construction, adherence by turn and attention to the system message
    Gatt(cmd::gatt::GattArgs),
    /// Chat with a model in the terminal (Llama-2-chat format)
    Chat(cmd::chat::ChatArgs),
    /// The main job: the whole Llama 2 recipe on the built-in data (pretraining, SFT, reward models, rejection sampling, PPO, GAtt, evaluation), with a report
    Pipeline(cmd::pipeline::PipelineArgs),
    /// Tokenizer tools: train a BPE vocabulary, encode, decode, info
    Tokenizer(cmd::tokenizer::TokenizerArgs),
    /// Tokenize text corpora into llm.c token shards (train and val)
    Tokenize(cmd::tokenizer::TokenizeArgs),
    /// Convert llama2.c .bin checkpoints to and from HF model directories
    Convert(cmd::convert::ConvertArgs),
    /// Write a model with random weights (HF format)
    Init(cmd::init::InitArgs),
    /// Check every CUDA kernel against its CPU counterpart (needs a GPU)
    GpuCheck(cmd::gpu_check::GpuCheckArgs),
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::EvalLoss(a) => cmd::eval::run(a),
        Cmd::Evaluate(a) => cmd::evaluate::run(a),
        Cmd::Annotate(a) => cmd::annotate::run(a),
        Cmd::Generate(a) => cmd::generate::run(a),
        Cmd::GenerateBatch(a) => cmd::generate_batch::run(a),
        Cmd::Rs(a) => cmd::rs::run(a),
        Cmd::Debug(a) => cmd::debug::run(a),
        Cmd::Info(a) => cmd::info::run(a),
        Cmd::Bench(a) => cmd::bench::run(a),
        Cmd::Pretrain(a) => cmd::pretrain::run(a),
        Cmd::Sft(a) => cmd::sft::run(a),
        Cmd::Rm(a) => cmd::rm::run(a),
        Cmd::Chat(a) => cmd::chat::run(a),
        Cmd::Ppo(a) => cmd::ppo::run(a),
        Cmd::Gatt(a) => cmd::gatt::run(a),
        Cmd::Pipeline(a) => cmd::pipeline::run(a),
        Cmd::Tokenizer(a) => cmd::tokenizer::run_tokenizer(a),
        Cmd::Tokenize(a) => cmd::tokenizer::run_tokenize(a),
        Cmd::GpuCheck(a) => cmd::gpu_check::run(a),
        Cmd::Convert(a) => cmd::convert::run(a),
        Cmd::Init(a) => cmd::init::run(a),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
