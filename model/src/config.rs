//! Model configuration: the shapes of a Llama model, read from and written to
//! Hugging Face `config.json` (transformers' `LlamaConfig` field names), and
//! presets with the paper's shapes (PAPER.md section 1) and small ones.
//!
//! Public items: [`Config`], [`Head`], [`Config::from_hf_json`], [`Config::to_hf_json`],
//! [`Config::preset`], [`PRESETS`].

use crate::error::{ModelError, Result};
use serde_json::{json, Value};
use std::path::Path;

/// What sits on the trunk (embedding, layers, final norm) (HF `architectures`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// `LlamaForCausalLM`: next-token logits through `lm_head` (or the tied
    /// embedding)
    Lm,
    /// `LlamaForSequenceClassification` with one label: a scalar per
    /// position through `score.weight (1, C)`; reward models read it at the
    /// last token of each sequence, PPO's value model at every position
    Score,
}

impl Head {
    /// The transformers architecture name.
    pub fn architecture(self) -> &'static str {
        match self {
            Head::Lm => "LlamaForCausalLM",
            Head::Score => "LlamaForSequenceClassification",
        }
    }
}

/// The shapes and constants of a Llama model (llama2.c `Config`, HF names in
/// brackets).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// vocabulary size (HF `vocab_size`)
    pub vocab_size: usize,
    /// model width C (HF `hidden_size`)
    pub hidden: usize,
    /// SwiGLU inner width (HF `intermediate_size`)
    pub intermediate: usize,
    /// number of transformer blocks (HF `num_hidden_layers`)
    pub n_layers: usize,
    /// number of query heads (HF `num_attention_heads`)
    pub n_heads: usize,
    /// number of key/value heads (< n_heads for GQA) (HF `num_key_value_heads`)
    pub n_kv_heads: usize,
    /// width of one head (HF `head_dim`), hidden / n_heads unless given
    pub head_dim: usize,
    /// longest sequence the model is meant for (HF `max_position_embeddings`)
    pub max_seq_len: usize,
    /// RMSNorm epsilon (HF `rms_norm_eps`)
    pub rms_eps: f64,
    /// RoPE base θ (HF `rope_theta` or `rope_parameters.rope_theta`)
    pub rope_theta: f64,
    /// output head shares the embedding matrix (HF `tie_word_embeddings`)
    pub tie_embeddings: bool,
    /// beginning-of-sequence id (HF `bos_token_id`)
    pub bos_id: u32,
    /// end-of-sequence id (HF `eos_token_id`)
    pub eos_id: u32,
    /// padding id (HF `pad_token_id`); transformers' sequence classifier reads
    /// the score at the last token that is not this id
    pub pad_id: Option<u32>,
    /// the head on the trunk (HF `architectures`)
    pub head: Head,
}

/// Named presets: (name, description).
pub const PRESETS: &[(&str, &str)] = &[
    ("tiny", "C 128, 4 layers, 2 heads, 1 KV head (head dim 64), ffn 352 (the pipeline's default)"),
    ("small", "C 288, 6 layers, 6 heads, 6 KV heads, ffn 768 (llama2.c's 15M)"),
    ("ref-tiny", "vocab 512, C 256, 4 layers, 8 heads, 2 KV heads, ffn 688 (benchmarks)"),
    ("ref-small", "vocab 32000, C 512, 8 layers, 8 heads, 4 KV heads, ffn 1376 (benchmarks)"),
    ("1b", "C 2048, 16 layers, 16 heads, 16 KV heads, ffn 5632 (~1.1B with vocab 32000)"),
    ("7b", "Llama 2 7B: C 4096, 32 layers, 32 heads, ffn 11008"),
    ("13b", "Llama 2 13B: C 5120, 40 layers, 40 heads, ffn 13824"),
    ("34b", "Llama 2 34B: C 8192, 48 layers, 64 heads, 8 KV heads, ffn 22016"),
    ("70b", "Llama 2 70B: C 8192, 80 layers, 64 heads, 8 KV heads, ffn 28672"),
];

impl Config {
    /// A config with Llama 2 defaults for everything but the shapes.
    pub fn new(vocab_size: usize, hidden: usize, intermediate: usize, n_layers: usize, n_heads: usize, n_kv_heads: usize) -> Self {
        Config {
            vocab_size,
            hidden,
            intermediate,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim: hidden.checked_div(n_heads).unwrap_or(0),
            max_seq_len: 4096,
            rms_eps: 1e-5,
            rope_theta: 10000.0,
            tie_embeddings: false,
            bos_id: 1,
            eos_id: 2,
            pad_id: None,
            head: Head::Lm,
        }
    }

    /// A preset by name (see [`PRESETS`]); `vocab` overrides the preset's
    /// vocabulary size (the paper's shapes use 32000).
    pub fn preset(name: &str, vocab: Option<usize>) -> Result<Self> {
        let v = |d: usize| vocab.unwrap_or(d);
        let mut c = match name {
            "tiny" => Config::new(v(32000), 128, 352, 4, 2, 1),
            "small" => Config::new(v(32000), 288, 768, 6, 6, 6),
            "ref-tiny" => Config::new(v(512), 256, 688, 4, 8, 2),
            "ref-small" => Config::new(v(32000), 512, 1376, 8, 8, 4),
            "1b" => Config::new(v(32000), 2048, 5632, 16, 16, 16),
            "7b" => Config::new(v(32000), 4096, 11008, 32, 32, 32),
            "13b" => Config::new(v(32000), 5120, 13824, 40, 40, 40),
            "34b" => Config::new(v(32000), 8192, 22016, 48, 64, 8),
            "70b" => Config::new(v(32000), 8192, 28672, 80, 64, 8),
            _ => {
                let names: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
                return Err(ModelError::Config(format!("unknown preset `{name}`; HINT: one of {}", names.join(", "))));
            }
        };
        if name == "tiny" || name == "small" || name.starts_with("ref-") {
            c.max_seq_len = 2048;
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks the shapes are consistent.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.vocab_size == 0 || self.hidden == 0 || self.intermediate == 0 || self.n_layers == 0 || self.n_heads == 0 {
            return bad(format!("sizes must be positive: {self:?}"));
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!("num_attention_heads {} must be a multiple of num_key_value_heads {}", self.n_heads, self.n_kv_heads));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} must be positive and even (RoPE pairs)", self.head_dim));
        }
        if self.vocab_size > u32::MAX as usize || self.bos_id as usize >= self.vocab_size || self.eos_id as usize >= self.vocab_size {
            return bad(format!("bos {} / eos {} outside vocabulary {}", self.bos_id, self.eos_id, self.vocab_size));
        }
        if let Some(p) = self.pad_id {
            if p as usize >= self.vocab_size {
                return bad(format!("pad_token_id {p} outside vocabulary {}", self.vocab_size));
            }
        }
        // written as !(x > 0) so that NaN is rejected too
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        if !(self.rms_eps > 0.0) || !(self.rope_theta > 0.0) {
            return bad(format!("rms_norm_eps {} and rope_theta {} must be positive", self.rms_eps, self.rope_theta));
        }
        Ok(())
    }

    /// Query width `n_heads * head_dim`.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Key/value width `n_kv_heads * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Number of parameters.
    pub fn n_params(&self) -> usize {
        let (c, v, i) = (self.hidden, self.vocab_size, self.intermediate);
        let per_layer = c * self.q_dim() * 2 + c * self.kv_dim() * 2 + 3 * c * i + 2 * c;
        let head = match self.head {
            Head::Lm if self.tie_embeddings => 0,
            Head::Lm => v * c,
            Head::Score => c,
        };
        v * c + head + self.n_layers * per_layer + c
    }

    /// Matmul FLOPs of forward + backward per token at sequence length `t`
    /// (6 per weight of the matrix products plus attention's
    /// `6 * 2 * L * t * q_dim` for the causal score and value products,
    /// counted as in PaLM appendix B / llm.c).
    pub fn train_flops_per_token(&self, t: usize) -> f64 {
        let (c, v, i) = (self.hidden as f64, self.vocab_size as f64, self.intermediate as f64);
        let l = self.n_layers as f64;
        let head = match self.head {
            Head::Lm => v * c,
            Head::Score => c,
        };
        let mats = l * (c * self.q_dim() as f64 * 2.0 + c * self.kv_dim() as f64 * 2.0 + 3.0 * c * i) + head;
        6.0 * mats + 6.0 * l * t as f64 * self.q_dim() as f64
    }

    /// Reads `config.json` of a Hugging Face Llama model.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| ModelError::BadFile {
            path: path.to_path_buf(),
            msg: format!("not valid JSON: {e}"),
            hint: "a transformers config.json is expected",
        })?;
        Self::from_hf_json(&v).map_err(|e| match e {
            ModelError::Config(m) => ModelError::BadFile { path: path.to_path_buf(), msg: m, hint: "fix the field in config.json" },
            other => other,
        })
    }

    /// Parses the fields of transformers' `LlamaConfig`. `rope_theta` may be
    /// top-level or inside `rope_parameters`; `head_dim` and
    /// `num_key_value_heads` are optional; `eos_token_id` may be a list (its
    /// first entry is used).
    pub fn from_hf_json(v: &Value) -> Result<Self> {
        let get = |k: &str| v.get(k).filter(|x| !x.is_null());
        let req = |k: &str| -> Result<usize> {
            get(k).and_then(|x| x.as_u64()).map(|x| x as usize).ok_or_else(|| ModelError::Config(format!("missing or non-integer field `{k}`")))
        };
        let opt_usize = |k: &str| -> Result<Option<usize>> {
            match get(k) {
                None => Ok(None),
                Some(x) => x.as_u64().map(|x| Some(x as usize)).ok_or_else(|| ModelError::Config(format!("field `{k}` must be an integer"))),
            }
        };
        let opt_f = |x: Option<&Value>, k: &str| -> Result<Option<f64>> {
            match x {
                None => Ok(None),
                Some(x) => x.as_f64().map(Some).ok_or_else(|| ModelError::Config(format!("field `{k}` must be a number"))),
            }
        };
        let id = |k: &str, d: u32| -> Result<u32> {
            match get(k) {
                None => Ok(d),
                Some(Value::Array(a)) => {
                    a.first().and_then(|x| x.as_u64()).map(|x| x as u32).ok_or_else(|| ModelError::Config(format!("field `{k}` must hold integers")))
                }
                Some(x) => x.as_u64().map(|x| x as u32).ok_or_else(|| ModelError::Config(format!("field `{k}` must be an integer"))),
            }
        };
        let head = match get("architectures").and_then(|a| a.as_array()).and_then(|a| a.first()).and_then(|x| x.as_str()) {
            None | Some("LlamaForCausalLM") => Head::Lm,
            Some("LlamaForSequenceClassification") => {
                // transformers stores the label count as id2label (num_labels on input)
                let labels = get("id2label").and_then(|m| m.as_object()).map(|m| m.len()).or(opt_usize("num_labels")?).unwrap_or(2);
                if labels != 1 {
                    return Err(ModelError::Config(format!(
                        "LlamaForSequenceClassification with {labels} labels; only num_labels = 1 (a reward or value model) is supported"
                    )));
                }
                Head::Score
            }
            Some(other) => {
                return Err(ModelError::Config(format!("architecture `{other}` is not supported (LlamaForCausalLM or LlamaForSequenceClassification)")))
            }
        };
        if let Some(act) = get("hidden_act").and_then(|x| x.as_str()) {
            if act != "silu" {
                return Err(ModelError::Config(format!("hidden_act `{act}` is not supported (Llama uses silu)")));
            }
        }
        for k in ["attention_bias", "mlp_bias"] {
            if get(k).and_then(|x| x.as_bool()) == Some(true) {
                return Err(ModelError::Config(format!("`{k}: true` is not supported (Llama has no biases)")));
            }
        }
        let rope_params = get("rope_parameters");
        let rope_type = rope_params
            .and_then(|p| p.get("rope_type"))
            .or_else(|| get("rope_scaling").and_then(|s| s.get("rope_type").or_else(|| s.get("type"))))
            .and_then(|x| x.as_str());
        if let Some(t) = rope_type {
            if t != "default" {
                return Err(ModelError::Config(format!("rope type `{t}` is not supported (only the default RoPE)")));
            }
        }
        let theta = match opt_f(get("rope_theta"), "rope_theta")? {
            Some(t) => t,
            None => opt_f(rope_params.and_then(|p| p.get("rope_theta")), "rope_parameters.rope_theta")?.unwrap_or(10000.0),
        };
        let hidden = req("hidden_size")?;
        let n_heads = req("num_attention_heads")?;
        let c = Config {
            vocab_size: req("vocab_size")?,
            hidden,
            intermediate: req("intermediate_size")?,
            n_layers: req("num_hidden_layers")?,
            n_heads,
            n_kv_heads: opt_usize("num_key_value_heads")?.unwrap_or(n_heads),
            head_dim: opt_usize("head_dim")?.unwrap_or(hidden.checked_div(n_heads).unwrap_or(0)),
            max_seq_len: opt_usize("max_position_embeddings")?.unwrap_or(4096),
            rms_eps: opt_f(get("rms_norm_eps"), "rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: theta,
            tie_embeddings: get("tie_word_embeddings").and_then(|x| x.as_bool()).unwrap_or(false),
            bos_id: id("bos_token_id", 1)?,
            eos_id: id("eos_token_id", 2)?,
            pad_id: match get("pad_token_id") {
                None => None,
                Some(_) => Some(id("pad_token_id", 0)?),
            },
            head,
        };
        c.validate()?;
        Ok(c)
    }

    /// The config as transformers writes it for `LlamaForCausalLM` or
    /// `LlamaForSequenceClassification` (one label).
    pub fn to_hf_json(&self) -> Value {
        let mut v = json!({
            "architectures": [self.head.architecture()],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_seq_len,
            "rms_norm_eps": self.rms_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_embeddings,
            "bos_token_id": self.bos_id,
            "eos_token_id": self.eos_id,
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "initializer_range": 0.02,
            "torch_dtype": "float32",
        });
        if let Some(p) = self.pad_id {
            v["pad_token_id"] = json!(p);
        }
        if self.head == Head::Score {
            v["id2label"] = json!({"0": "LABEL_0"});
            v["label2id"] = json!({"LABEL_0": 0});
        }
        v
    }
}
