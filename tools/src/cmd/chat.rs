//! `train-tool chat`: multi-turn chat in the terminal, in the model's chat
//! format (the same one SFT trains on): its own Jinja template when its
//! tokenizer files carry one (tokenizer_config.json, GGUF
//! `tokenizer.chat_template`), else Llama-2-chat. Answers end at the
//! template's end-of-turn token. Reads one user message per line from
//! stdin; an empty line or EOF ends the session. `--model` may be a GGUF
//! file (its vocabulary and template come from the file).

use crate::cmd::sft::find_tokenizer;
use crate::device::{dispatch, DeviceOpts, Job};
use crate::flags::{parse_temperature, parse_top_p};
use anyhow::{Context, Result};
use clap::Args;
use clap::ValueEnum;
use llama2_model::chat::{ChatFormat, Message, Role};
use llama2_model::generate::{Generator, Sampling};
use llama2_model::Model;
use llama2_runtime::rng::Rng;
use llama2_runtime::Backend;
use std::io::{BufRead, Write};
use std::path::PathBuf;

#[derive(Args, Clone, Debug)]
pub struct ChatArgs {
    /// Model: an HF directory (with its tokenizer) or a GGUF file
    #[arg(long)]
    pub model: PathBuf,
    /// Chat format: auto (the model's template if it has one, else llama2), llama2 (built in), template (required)
    #[arg(long, value_enum, default_value = "auto")]
    pub chat_format: ChatFormatArg,
    /// A Jinja chat template file to use instead of the model's own
    #[arg(long)]
    pub chat_template: Option<PathBuf>,
    /// Tokenizer file (.model, .gguf, tokenizer.json)
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// System message, merged into the first user turn
    #[arg(long)]
    pub system: Option<String>,
    /// Sampling temperature; 0 = greedy
    #[arg(long, default_value_t = 0.7, value_parser = parse_temperature)]
    pub temperature: f32,
    /// Nucleus sampling probability
    #[arg(long, default_value_t = 0.9, value_parser = parse_top_p)]
    pub top_p: f32,
    /// Token budget per answer
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_new_tokens: u32,
    /// Random seed
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print each answer as one JSON line {"answer": ..., "ended_with_eos": ...}
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ChatFormatArg {
    /// The model's own template if its tokenizer files carry one, else Llama-2-chat
    Auto,
    /// The built-in Llama-2-chat format
    Llama2,
    /// The model's template (an error if it has none)
    Template,
}

/// The chat format the flags ask for.
pub fn chat_format(tok: &llama2_model::tokenizer::Tokenizer, f: ChatFormatArg, file: &Option<PathBuf>) -> Result<ChatFormat> {
    if let Some(p) = file {
        let src = std::fs::read_to_string(p).with_context(|| format!("reading the chat template {}", p.display()))?;
        return Ok(ChatFormat::from_template(tok, &src, &p.display().to_string())?);
    }
    Ok(match f {
        ChatFormatArg::Llama2 => ChatFormat::Llama2,
        ChatFormatArg::Auto => ChatFormat::for_tokenizer(tok)?,
        ChatFormatArg::Template => match ChatFormat::for_tokenizer(tok)? {
            ChatFormat::Llama2 => anyhow::bail!("{} has no chat template; HINT: pass --chat-template FILE or --chat-format llama2", tok.path().display()),
            t => t,
        },
    })
}

struct ChatJob(ChatArgs);

impl Job for ChatJob {
    type Out = ();
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let a = self.0;
        let mut model = Model::load_path(be, &a.model).with_context(|| format!("loading {}", a.model.display()))?;
        let tok = find_tokenizer(&a.tokenizer, &a.model)?;
        let fmt = chat_format(&tok, a.chat_format, &a.chat_template)?;
        // generation stops at the model's EOS id: make it the format's end of turn
        if let Some(end) = fmt.answer_end(&tok) {
            model.cfg.eos_id = end;
        }
        eprintln!("chat format: {}; answers end at token {}", fmt.name(), model.cfg.eos_id);
        let s = Sampling { temperature: a.temperature, top_k: None, top_p: Some(a.top_p) };
        let mut rng = Rng::derive(a.seed, "chat");
        let mut dialog: Vec<Message> = a.system.iter().map(|s| Message::new(Role::System, s.clone())).collect();
        let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        loop {
            if interactive {
                eprint!("user> ");
                std::io::stderr().flush()?;
            }
            let Some(line) = lines.next() else { break };
            let line = line?;
            if line.trim().is_empty() {
                break;
            }
            dialog.push(Message::new(Role::User, line));
            let ids = fmt.encode_prompt(&tok, &dialog)?;
            let cap = (ids.len() + a.max_new_tokens as usize).min(model.rope_len);
            if ids.len() >= cap {
                anyhow::bail!("the conversation ({} tokens) fills the model's context of {}; HINT: start a new chat", ids.len(), model.rope_len);
            }
            let mut gen = Generator::new(be, &model, 1, cap)?;
            let out = gen.generate(be, &model, std::slice::from_ref(&ids), cap - ids.len(), &s, &mut rng, true)?;
            let mut ans = out.ids[0].clone();
            if out.ended[0] {
                ans.pop();
            }
            let text = tok.decode(&ans)?;
            if a.json {
                println!("{}", serde_json::json!({"answer": text.trim(), "ended_with_eos": out.ended[0]}));
            } else {
                println!("{}", text.trim());
            }
            dialog.push(Message::new(Role::Assistant, text.trim().to_string()));
        }
        Ok(())
    }
}

pub fn run(a: ChatArgs) -> Result<()> {
    let dev = a.dev.clone();
    dispatch(&dev, ChatJob(a))
}
