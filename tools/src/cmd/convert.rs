//! `train-tool convert`: llama2.c `.bin` checkpoints and GGUF files
//! (llama.cpp) to and from Hugging Face model directories (config.json +
//! model.safetensors, float32).
//!
//! ```text
//! train-tool convert --from llama2c FILE.bin --to hf DIR [--layout auto|legacy|v1|early]
//! train-tool convert --from hf DIR --to llama2c FILE.bin [--layout legacy|v1|early] [--force]
//! train-tool convert --from gguf FILE.gguf --to hf DIR
//! train-tool convert --from hf DIR --to gguf FILE.gguf [--dtype f32|f16|bf16|q8_0]
//! ```
//!
//! GGUF: every quant type llama.cpp writes for Llama (F32, F16, BF16, Q4_0,
//! Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K) is dequantized to f32 on reading; the
//! writer stores the matrices as `--dtype` and the norms as F32, with the
//! tokenizer found in the HF directory (tokenizer.json / tokenizer.model,
//! and tokenizer_config.json's chat template) as `tokenizer.*` metadata, so
//! the file runs in llama.cpp and loads in transformers. Reading a GGUF
//! writes its vocabulary beside the HF model (tokenizer.json for byte-level
//! BPE, tokenizer.model for SentencePiece; tokenizer_config.json with the
//! chat template). The work is done by `llama2_model::gguf`.
//!
//! The formats and the q/k permutation are in `docs/llama2c-formats.md`;
//! the work is done by `llama2_model::llama2c`. The HF config written for a
//! `.bin` carries the constants llama2.c's run.c hard-codes (rms_norm_eps
//! 1e-5, BOS 1, EOS 2), max_position_embeddings = seq_len, tied embeddings
//! = the shared classifier, and rope_theta from the RoPE tables (early
//! layout) or 10000.
//!
//! Public items: [`ConvertArgs`], [`run`].

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use llama2_model::gguf::{self, WriteDtype};
use llama2_model::llama2c::{self, Layout};
use llama2_model::weights::{save_safetensors, write_atomic, Checkpoint, SaveDtype};
use llama2_model::Config;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    /// Reading: detect it from the header and the file size. Writing: legacy
    Auto,
    /// export.py version 0: what karpathy's current run.c reads (RoPE θ fixed at 10000)
    Legacy,
    /// export.py version 1: the 256-byte "ak42" header
    V1,
    /// The early run.c (llamac2py 0.1.4): no GQA, RoPE from the tables in the file
    Early,
}

impl LayoutArg {
    fn layout(self) -> Option<Layout> {
        match self {
            LayoutArg::Auto => None,
            LayoutArg::Legacy => Some(Layout::Legacy),
            LayoutArg::V1 => Some(Layout::V1),
            LayoutArg::Early => Some(Layout::Early),
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct ConvertArgs {
    /// Source: FORMAT PATH, FORMAT `llama2c` (a .bin file) or `hf` (a model directory)
    #[arg(long, num_args = 2, value_names = ["FORMAT", "PATH"], required = true)]
    pub from: Vec<String>,
    /// Destination: FORMAT PATH, FORMAT `llama2c` (a .bin file) or `hf` (a model directory)
    #[arg(long, num_args = 2, value_names = ["FORMAT", "PATH"], required = true)]
    pub to: Vec<String>,
    /// llama2.c layout of the .bin side (reading: auto detects it; writing: auto means legacy)
    #[arg(long, value_enum, default_value = "auto")]
    pub layout: LayoutArg,
    /// Write a .bin even if rope_theta, rms_norm_eps or the BOS id differ from the constants run.c uses
    #[arg(long)]
    pub force: bool,
    /// Precision of the matrices of a written GGUF: f32, f16, bf16 or q8_0 (norms stay f32)
    #[arg(long, default_value = "f32")]
    pub dtype: WriteDtype,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Llama2c,
    Hf,
    Gguf,
}

fn parse_side(flag: &str, v: &[String]) -> Result<(Format, PathBuf)> {
    let [fmt, path] = v else { bail!("--{flag} takes two values, FORMAT PATH (e.g. --{flag} llama2c model.bin)") };
    let f = match fmt.as_str() {
        "llama2c" => Format::Llama2c,
        "hf" => Format::Hf,
        "gguf" => Format::Gguf,
        other => bail!("--{flag} {other}: unknown format; HINT: llama2c (a .bin file), gguf (a llama.cpp file) or hf (a model directory)"),
    };
    Ok((f, PathBuf::from(path)))
}

fn print_config(c: &Config) {
    println!("[Llama]");
    println!("vocab_size          {}", c.vocab_size);
    println!("hidden / ffn        {} / {}", c.hidden, c.intermediate);
    println!("layers              {}", c.n_layers);
    println!("heads / kv heads    {} / {} (head_dim {})", c.n_heads, c.n_kv_heads, c.head_dim);
    println!("max_seq_len         {}", c.max_seq_len);
    println!("rms_eps / rope θ    {} / {}", c.rms_eps, c.rope_theta);
    println!("tied embeddings     {}", c.tie_embeddings);
    println!("bos / eos           {} / {}", c.bos_id, c.eos_id);
}

fn to_llama2c(src: &Path, dst: &Path, layout: Layout, force: bool) -> Result<()> {
    let cfg = Config::from_hf_file(&src.join("config.json"))?;
    // refuse early, before reading the weights
    llama2c::check_writable(dst, &cfg, layout, force)?;
    let ck = Checkpoint::open(src)?;
    let w = ck.read_all().with_context(|| format!("reading the weights of {}", src.display()))?;
    print_config(&cfg);
    let bytes = llama2c::write_bin(dst, &cfg, &w, layout, force)?;
    println!("wrote {} ({layout} layout, {bytes} bytes) from {}", dst.display(), src.display());
    Ok(())
}

fn to_hf(src: &Path, dst: &Path, layout: Option<Layout>) -> Result<()> {
    let imp = llama2c::read_bin(src, layout)?;
    print_config(&imp.cfg);
    if let (Layout::Legacy, Some(t)) = (imp.layout, imp.table_theta) {
        if t != llama2c::RUNC_THETA {
            eprintln!(
                "note: the file's RoPE tables encode θ = {t}; read as legacy, θ = {} (what karpathy's run.c computes); --layout early would use the tables",
                llama2c::RUNC_THETA
            );
        }
    }
    std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
    let json = serde_json::to_string_pretty(&imp.cfg.to_hf_json())?;
    write_atomic(&dst.join("config.json"), json.as_bytes())?;
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    save_safetensors(&dst.join("model.safetensors"), &imp.weights, SaveDtype::F32, Some(meta))?;
    println!("read {} as {} layout; wrote {}", src.display(), imp.layout, dst.display());
    Ok(())
}

fn hf_to_gguf(src: &Path, dst: &Path, dtype: WriteDtype) -> Result<()> {
    if gguf::dir_tokenizer(src)?.is_none() {
        eprintln!("note: no tokenizer.json / tokenizer.model in {}; the GGUF gets no vocabulary (llama.cpp needs one to run it)", src.display());
    }
    let w = gguf::hf_dir_to_gguf(src, dst, dtype).with_context(|| format!("converting {} to GGUF", src.display()))?;
    print_config(&w.cfg);
    println!(
        "wrote {} ({dtype:?} matrices, {} bytes{}) from {}",
        dst.display(),
        w.bytes,
        if w.with_tokenizer { ", with its tokenizer" } else { "" },
        src.display()
    );
    Ok(())
}

fn gguf_to_hf(src: &Path, dst: &Path) -> Result<()> {
    let (cfg, tok) = gguf::gguf_to_hf_dir(src, dst).with_context(|| format!("converting {}", src.display()))?;
    print_config(&cfg);
    if let Some(p) = tok {
        println!("wrote {} from the GGUF vocabulary", p.display());
    }
    println!("read {}; wrote {}", src.display(), dst.display());
    Ok(())
}

pub fn run(a: ConvertArgs) -> Result<()> {
    let (from, src) = parse_side("from", &a.from)?;
    let (to, dst) = parse_side("to", &a.to)?;
    match (from, to) {
        (Format::Hf, Format::Llama2c) => to_llama2c(&src, &dst, a.layout.layout().unwrap_or(Layout::Legacy), a.force),
        (Format::Llama2c, Format::Hf) => {
            if a.force {
                bail!("--force only applies when writing a llama2.c file");
            }
            to_hf(&src, &dst, a.layout.layout())
        }
        (Format::Hf, Format::Gguf) => hf_to_gguf(&src, &dst, a.dtype),
        (Format::Gguf, Format::Hf) => gguf_to_hf(&src, &dst),
        _ => bail!("convert goes between hf and llama2c or gguf; HINT: --from llama2c FILE --to hf DIR, --from gguf FILE --to hf DIR, or --from hf DIR --to llama2c|gguf FILE"),
    }
}
