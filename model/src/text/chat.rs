//! The Llama-2-chat dialog format, token for token as Meta's reference
//! implementation builds it (llama `generation.py`, `chat_completion`;
//! PAPER.md section 8):
//!
//! - a system message is merged into the first user message:
//!   `B_SYS + system + E_SYS + user`;
//! - each completed (user, assistant) pair is
//!   `BOS + encode(f"{B_INST} {user.strip()} {E_INST} {answer.strip()} ") + EOS`;
//! - a final user message (a prompt awaiting an answer) is
//!   `BOS + encode(f"{B_INST} {user.strip()} {E_INST}")`.
//!
//! BOS and EOS are ids, never text. For training, every token also gets a
//! loss mask: true on the answer's tokens and its EOS (what the model must
//! learn to say), false on BOS and the `[INST] ... [/INST]` prompt (the paper
//! zeroes the loss on prompt tokens). The boundary is where the encoding of
//! the prompt alone stops being a prefix of the encoding of the whole pair,
//! so the tokens themselves are exactly the reference's.
//!
//! The one chat-format abstraction every command uses is [`ChatFormat`]:
//! this built-in Llama-2-chat format, or the model's own Jinja template
//! ([`crate::template`]), whose rendered text is encoded as transformers'
//! `apply_chat_template(tokenize=True)` does (added tokens in the text
//! become their ids, nothing else added) and whose loss mask covers the
//! tokens of the assistant turns the template renders (answer and end of
//! turn); a token that straddles the start of an answer counts as answer.
//!
//! Public items: [`ChatFormat`], [`Role`], [`Message`], [`encode_dialog`],
//! [`encode_dialog_last`], [`encode_prompt`], [`B_INST`], [`E_INST`],
//! [`B_SYS`], [`E_SYS`].

use crate::error::{ModelError, Result};
use crate::template::ChatTemplate;
use crate::tokenizer::{EncodeOptions, PieceKind, Tokenizer};

pub const B_INST: &str = "[INST]";
pub const E_INST: &str = "[/INST]";
pub const B_SYS: &str = "<<SYS>>\n";
pub const E_SYS: &str = "\n<</SYS>>\n\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// Parses the role names of the common dataset formats.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "system" => Some(Role::System),
            "user" | "human" => Some(Role::User),
            "assistant" | "gpt" | "model" => Some(Role::Assistant),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message { role, content: content.into() }
    }
}

/// Merges a leading system message into the first user message and checks
/// that the rest alternates user, assistant, user, ...
fn merge_system(dialog: &[Message]) -> Result<Vec<Message>> {
    let mut d: Vec<Message> = dialog.to_vec();
    if d.first().map(|m| m.role) == Some(Role::System) {
        if d.len() < 2 {
            return Err(ModelError::Invalid("a dialog with a system message needs a user message after it".into()));
        }
        let sys = d.remove(0);
        d[0].content = format!("{B_SYS}{}{E_SYS}{}", sys.content, d[0].content);
    }
    for (i, m) in d.iter().enumerate() {
        let want = if i % 2 == 0 { Role::User } else { Role::Assistant };
        if m.role != want {
            return Err(ModelError::Invalid(format!("message {i} is {:?}; a dialog alternates user and assistant (after an optional system message)", m.role)));
        }
    }
    if d.is_empty() {
        return Err(ModelError::Invalid("empty dialog".into()));
    }
    Ok(d)
}

fn enc(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tok.encode(text, EncodeOptions { bos: false, eos: false })?)
}

fn bos_eos(tok: &Tokenizer) -> Result<(u32, u32)> {
    match (tok.bos_id(), tok.eos_id()) {
        (Some(b), Some(e)) => Ok((b, e)),
        _ => Err(ModelError::Invalid("the chat format needs a tokenizer with BOS and EOS pieces".into())),
    }
}

/// Tokens and loss mask of a dialog whose completed (user, assistant) pairs
/// are all learned; a trailing user message, if any, is encoded as a prompt
/// with no loss. Returns (ids, mask) of equal length.
pub fn encode_dialog(tok: &Tokenizer, dialog: &[Message]) -> Result<(Vec<u32>, Vec<bool>)> {
    encode_dialog_last(tok, dialog, false)
}

/// As [`encode_dialog`], but with `last_only` the loss is kept on the final
/// answer only (Ghost Attention: earlier turns get no loss).
pub fn encode_dialog_last(tok: &Tokenizer, dialog: &[Message], last_only: bool) -> Result<(Vec<u32>, Vec<bool>)> {
    let d = merge_system(dialog)?;
    let (bos, eos) = bos_eos(tok)?;
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    let pairs = d.len() / 2;
    for p in 0..pairs {
        let (u, a) = (d[2 * p].content.trim(), d[2 * p + 1].content.trim());
        let full = enc(tok, &format!("{B_INST} {u} {E_INST} {a} "))?;
        let prompt = enc(tok, &format!("{B_INST} {u} {E_INST}"))?;
        let split = full.iter().zip(&prompt).take_while(|(x, y)| x == y).count();
        let learn = !last_only || p + 1 == pairs;
        ids.push(bos);
        mask.push(false);
        for (i, &t) in full.iter().enumerate() {
            ids.push(t);
            mask.push(learn && i >= split);
        }
        ids.push(eos);
        mask.push(learn);
    }
    if d.len() % 2 == 1 {
        let u = d[d.len() - 1].content.trim();
        ids.push(bos);
        ids.extend(enc(tok, &format!("{B_INST} {u} {E_INST}"))?);
        mask.resize(ids.len(), false);
    }
    Ok((ids, mask))
}

/// The prompt for generating the next answer: a dialog ending with a user
/// message, encoded as the reference does for inference.
pub fn encode_prompt(tok: &Tokenizer, dialog: &[Message]) -> Result<Vec<u32>> {
    let d = merge_system(dialog)?;
    if d.len() % 2 == 0 {
        return Err(ModelError::Invalid("a prompt must end with a user message".into()));
    }
    Ok(encode_dialog(tok, dialog)?.0)
}

/// How dialogs become tokens: the built-in Llama-2-chat format or a
/// model's own template.
pub enum ChatFormat {
    Llama2,
    Template(Box<ChatTemplate>),
}

const NO_SPECIALS: EncodeOptions = EncodeOptions { bos: false, eos: false };

/// Length of the common prefix of two id sequences.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl ChatFormat {
    /// The tokenizer's own template if its files carry one, else Llama-2-chat.
    pub fn for_tokenizer(tok: &Tokenizer) -> Result<ChatFormat> {
        match tok.chat_template() {
            Some(t) => Self::from_template(tok, t, &tok.path().display().to_string()),
            None => Ok(ChatFormat::Llama2),
        }
    }

    /// A template given as Jinja source (`name` names it in errors), with
    /// the tokenizer's BOS/EOS tokens as `bos_token` / `eos_token`.
    pub fn from_template(tok: &Tokenizer, source: &str, name: &str) -> Result<ChatFormat> {
        let text = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("").to_string();
        let mut t = ChatTemplate::new(source, name, &text(tok.bos_id()), &text(tok.eos_id()))?;
        t.pad_token = tok.pad_id().and_then(|i| tok.token_text(i)).map(String::from);
        t.unk_token = tok.token_text(tok.unk_id()).map(String::from);
        Ok(ChatFormat::Template(Box::new(t)))
    }

    /// "llama2-chat" or "template (<source>)".
    pub fn name(&self) -> String {
        match self {
            ChatFormat::Llama2 => "llama2-chat".into(),
            ChatFormat::Template(t) => format!("template ({})", t.source_name),
        }
    }

    /// Tokens and loss mask of a dialog (see [`encode_dialog`]; for a
    /// template, every assistant turn is learned).
    pub fn encode_dialog(&self, tok: &Tokenizer, dialog: &[Message]) -> Result<(Vec<u32>, Vec<bool>)> {
        self.encode_dialog_last(tok, dialog, false)
    }

    /// As [`ChatFormat::encode_dialog`]; with `last_only` only the final
    /// answer is learned (Ghost Attention).
    pub fn encode_dialog_last(&self, tok: &Tokenizer, dialog: &[Message], last_only: bool) -> Result<(Vec<u32>, Vec<bool>)> {
        let t = match self {
            ChatFormat::Llama2 => return encode_dialog_last(tok, dialog, last_only),
            ChatFormat::Template(t) => t,
        };
        let r = t.render_spans(dialog)?;
        let ids = tok.encode_special(&r.text, NO_SPECIALS)?;
        let mut mask = vec![false; ids.len()];
        let n = r.spans.len();
        for (k, &(a, b)) in r.spans.iter().enumerate() {
            if last_only && k + 1 != n {
                continue;
            }
            let start = common_prefix(&ids, &tok.encode_special(&r.text[..a], NO_SPECIALS)?);
            let end = common_prefix(&ids, &tok.encode_special(&r.text[..b], NO_SPECIALS)?);
            for m in mask.iter_mut().take(end.max(start)).skip(start) {
                *m = true;
            }
        }
        Ok((ids, mask))
    }

    /// The prompt for the next answer of a dialog that ends with a user
    /// message (a template renders it with `add_generation_prompt`).
    pub fn encode_prompt(&self, tok: &Tokenizer, dialog: &[Message]) -> Result<Vec<u32>> {
        match self {
            ChatFormat::Llama2 => encode_prompt(tok, dialog),
            ChatFormat::Template(t) => {
                if dialog.last().map(|m| m.role) != Some(Role::User) {
                    return Err(ModelError::Invalid("a prompt must end with a user message".into()));
                }
                Ok(tok.encode_special(&t.render(dialog, true)?, NO_SPECIALS)?)
            }
        }
    }

    /// The token that ends an answer in this format: EOS for Llama-2-chat;
    /// for a template, the last control token of a rendered answer (for
    /// example `<|im_end|>`, `<|eot_id|>`, `</s>`), else EOS.
    pub fn answer_end(&self, tok: &Tokenizer) -> Option<u32> {
        if let ChatFormat::Template(t) = self {
            let probe = [Message::new(Role::User, "Hi"), Message::new(Role::Assistant, "Hello")];
            if let Ok(r) = t.render_spans(&probe) {
                if let Some(&(a, b)) = r.spans.last() {
                    let ids = tok.encode_special(&r.text[a..b], NO_SPECIALS).unwrap_or_default();
                    if let Some(&last) = ids.iter().rev().find(|&&i| tok.pieces().get(i as usize).is_some_and(|p| p.kind == PieceKind::Control)) {
                        return Some(last);
                    }
                }
            }
        }
        tok.eos_id()
    }

    /// The ids that end an answer: EOS, the tokenizer's end-of-turn, and for
    /// a template the last control token of a rendered answer (for example
    /// `<|im_end|>` or `<|eot_id|>`).
    pub fn stop_ids(&self, tok: &Tokenizer) -> Vec<u32> {
        let mut out: Vec<u32> = tok.eos_id().into_iter().chain(tok.eot_id()).chain(self.answer_end(tok)).collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}
