//! `train-tool info`: shapes, parameter count and memory estimates.

use anyhow::{bail, Result};
use clap::Args;
use llama2_model::{Acts, Config, LogitRows};
use std::path::PathBuf;

#[derive(Args, Clone, Debug)]
pub struct InfoArgs {
    /// Model directory (HF format); only config.json is read
    #[arg(long, conflicts_with = "preset")]
    pub model: Option<PathBuf>,
    /// A preset instead of a model (tiny, small, ref-tiny, ref-small, 1b, 7b, 13b, 34b, 70b)
    #[arg(long)]
    pub preset: Option<String>,
    /// Vocabulary size for a preset
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub vocab: Option<u32>,
    /// Batch size for the training-memory estimate
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Sequence length for the memory estimates (default: max_position_embeddings)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub seq_len: Option<u32>,
    /// Data-parallel ranks for the per-rank training memory (ZeRO-1: AdamW state sharded)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub world_size: u32,
    /// The LM head and cross-entropy in chunks of this many rows for the
    /// training estimate (as `pretrain`/`sft --logit-chunk`; 0: every row's
    /// logits stored at once)
    #[arg(long, value_name = "ROWS", default_value_t = 0)]
    pub logit_chunk: usize,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

/// Training bytes per rank at `world` ranks with ZeRO-1, `p` parameters,
/// `acts` activation bytes on the CPU and `acts_cuda` (counted in f32) on
/// CUDA: (CPU f32, CUDA as built here, CUDA with the fp32 master sharded
/// too).
/// - CPU: weights 4p, gradients 4p (whole on every rank: ZeRO-1 shards the
///   optimizer state, not the gradients), AdamW m + v 8p / N;
/// - CUDA: bf16 weights 2p + fp32 master 4p (whole in this build), fp32
///   gradients 4p, m + v 8p / N; the target shards the master too
///   (4p / N), not done yet (docs/distributed.md).
pub fn per_rank_training_bytes(p: f64, acts: f64, acts_cuda: f64, world: f64) -> (f64, f64, f64) {
    let cpu = 8.0 * p + 8.0 * p / world + acts;
    let cuda = 10.0 * p + 8.0 * p / world + acts_cuda / 2.0;
    let cuda_master_sharded = 6.0 * p + 12.0 * p / world + acts_cuda / 2.0;
    (cpu, cuda, cuda_master_sharded)
}

pub fn load_config(model: &Option<PathBuf>, preset: &Option<String>, vocab: Option<u32>) -> Result<Config> {
    match (model, preset) {
        (Some(dir), None) => Ok(Config::from_hf_file(&dir.join("config.json"))?),
        (None, Some(p)) => Ok(Config::preset(p, vocab.map(|v| v as usize))?),
        _ => bail!("give exactly one of --model DIR or --preset NAME"),
    }
}

fn gib(bytes: f64) -> f64 {
    bytes / (1u64 << 30) as f64
}

pub fn run(a: InfoArgs) -> Result<()> {
    let c = load_config(&a.model, &a.preset, a.vocab)?;
    let p = c.n_params() as f64;
    let (b, t) = (a.batch_size as usize, a.seq_len.map(|x| x as usize).unwrap_or(c.max_seq_len));
    let kv = (2 * c.n_layers * t * c.kv_dim()) as f64; // one sequence
                                                       // inference: weights + KV cache of one sequence + one position's activations
    let infer_f32 = 4.0 * (p + kv);
    let infer_bf16 = 2.0 * (p + kv);
    if a.logit_chunk > b * t {
        bail!("--logit-chunk {} is more than the {} rows of a batch of {b} x {t}; HINT: use 1..={} rows, or 0 for no chunking", a.logit_chunk, b * t, b * t);
    }
    let rows = if a.logit_chunk == 0 { LogitRows::All } else { LogitRows::Chunked(a.logit_chunk) };
    // training on CPU: f32 params, grads, m, v; activations (forward's and
    // backward's) of b x t, f32
    let acts = Acts::<llama2_runtime::CpuBackend>::bytes_f32(&c, b, t, true, rows, false) as f64;
    let train_cpu = 16.0 * p + acts;
    // training on CUDA: bf16 + f32 master params, f32 grads, m, v; bf16
    // activations, with the fused projections' scratch
    let acts_cuda = Acts::<llama2_runtime::CpuBackend>::bytes_f32(&c, b, t, true, rows, true) as f64;
    let train_cuda = 18.0 * p + acts_cuda / 2.0;
    let flops = c.train_flops_per_token(t);
    let n = a.world_size as f64;
    let (rank_cpu, rank_cuda, rank_cuda_full) = per_rank_training_bytes(p, acts, acts_cuda, n);
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "config": c.to_hf_json(), "n_params": c.n_params(),
                "inference_gib": {"f32": gib(infer_f32), "bf16": gib(infer_bf16)},
                "training_gib": {"cpu_f32": gib(train_cpu), "cuda_mixed": gib(train_cuda)},
                "batch_size": b, "seq_len": t, "logit_chunk": a.logit_chunk, "train_flops_per_token": flops,
                "activations_gib": {"cpu_f32": gib(acts), "cuda_bf16": gib(acts_cuda / 2.0)},
                "world_size": a.world_size,
                "training_per_rank_gib": {"cpu_f32": gib(rank_cpu), "cuda_mixed": gib(rank_cuda), "cuda_master_sharded": gib(rank_cuda_full)},
            })
        );
        return Ok(());
    }
    println!("[Llama]");
    println!("vocab_size          {}", c.vocab_size);
    println!("hidden              {}", c.hidden);
    println!("intermediate        {}", c.intermediate);
    println!("layers              {}", c.n_layers);
    println!("heads / kv heads    {} / {}", c.n_heads, c.n_kv_heads);
    println!("head_dim            {}", c.head_dim);
    println!("max_seq_len         {}", c.max_seq_len);
    println!("rms_eps / rope θ    {} / {}", c.rms_eps, c.rope_theta);
    println!("tied embeddings     {}", c.tie_embeddings);
    println!("parameters          {} ({:.3} B)", c.n_params(), p / 1e9);
    println!("inference memory    {:.3} GiB f32, {:.3} GiB bf16 (weights + KV cache of one {t}-token sequence)", gib(infer_f32), gib(infer_bf16));
    let chunk = if a.logit_chunk == 0 { String::new() } else { format!(", logits in chunks of {} rows", a.logit_chunk) };
    println!("training memory     {:.3} GiB on CPU (f32), {:.3} GiB on CUDA (mixed) at batch {b} x {t}{chunk}", gib(train_cpu), gib(train_cuda));
    println!("  of it activations {:.3} GiB on CPU, {:.3} GiB on CUDA", gib(acts), gib(acts_cuda / 2.0));
    println!("train FLOPs/token   {:.3e}", flops);
    if a.world_size > 1 {
        println!(
            "per rank, {} ranks  {:.3} GiB on CPU, {:.3} GiB on CUDA (ZeRO-1: AdamW state / {}; {:.3} GiB once the fp32 master is sharded too) at batch {b} x {t} per rank; +{:.3} GiB with --grad-accum > 1",
            a.world_size,
            gib(rank_cpu),
            gib(rank_cuda),
            a.world_size,
            gib(rank_cuda_full),
            gib(4.0 * p)
        );
    }
    Ok(())
}
