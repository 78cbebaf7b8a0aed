//! A model's own chat template: the Jinja string of its
//! `tokenizer_config.json` (`chat_template`) or GGUF
//! (`tokenizer.chat_template`), rendered with `minijinja` the way
//! transformers' `apply_chat_template` renders it with jinja2, and the loss
//! mask of a rendered dialog taken from the assistant turns.
//!
//! Reference: transformers `utils/chat_template_utils.py`
//! (`_compile_jinja_template`, `render_jinja_template`): an environment with
//! `trim_blocks` and `lstrip_blocks`, loop controls, a `tojson` filter that
//! is Python's `json.dumps(ensure_ascii=False)`, the global
//! `raise_exception(message)`, and the variables `messages` (role/content
//! maps), `add_generation_prompt`, and the special tokens (`bos_token`,
//! `eos_token`, `unk_token`, `pad_token`) as strings. Python string and
//! dict methods (`.strip()`, `.startswith()`, `.items()`, ...) come from
//! `minijinja-contrib`'s pycompat layer. transformers' `{% generation %}`
//! markers are accepted and ignored. Not provided: `strftime_now` (templates
//! that test `is defined` fall back to their own date) and tools/documents.
//!
//! The assistant spans (for the loss mask): for each assistant message i,
//! the render of the messages before it with the generation prompt must be
//! a prefix of the render through message i, which must be a prefix of the
//! render of the whole dialog; the text between the two (less trailing
//! whitespace) is the answer with its end-of-turn marker. A template for
//! which these renders are not prefixes of each other cannot give a mask
//! and is refused with an error naming the turn.
//!
//! Public items: [`ChatTemplate`], [`TemplateError`], [`Rendered`].

use crate::chat::{Message, Role};
use minijinja::{Environment, ErrorKind, Value};

/// Errors of chat templates; each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "chat template of {source_name}: {msg}; HINT: the template uses Jinja that minijinja does not accept; fix the template or pass --chat-format llama2"
    )]
    Syntax { source_name: String, msg: String },
    #[error("chat template of {source_name}: rendering failed: {msg}; HINT: check the dialog's roles and order against what the template expects")]
    Render { source_name: String, msg: String },
    #[error("chat template of {source_name}: {msg}; HINT: this template cannot give a loss mask (its renders are not prefixes of each other); use --chat-format llama2 or a template that renders turns incrementally")]
    Spans { source_name: String, msg: String },
}

type Result<T> = std::result::Result<T, TemplateError>;

/// A rendered dialog with the byte ranges of its assistant turns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    /// `[start, end)` byte ranges of `text` that hold an answer and its end
    /// of turn, in order
    pub spans: Vec<(usize, usize)>,
}

/// A compiled chat template with the special tokens it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// where the template came from (for messages)
    pub source_name: String,
    pub bos_token: String,
    pub eos_token: String,
    pub unk_token: Option<String>,
    pub pad_token: Option<String>,
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// Python's `json.dumps(v, ensure_ascii=False)` (separators ", " and ": ",
/// keys in insertion order).
fn py_json(v: &Value, out: &mut String) -> std::result::Result<(), minijinja::Error> {
    use minijinja::value::ValueKind;
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = v.as_i64() {
                out.push_str(&i.to_string());
            } else {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                out.push_str(&if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 { format!("{f:.1}") } else { f.to_string() });
            }
        }
        ValueKind::String => out.push_str(&serde_json::Value::String(v.as_str().unwrap_or_default().to_string()).to_string()),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, x) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_json(&x, out)?;
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, k) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&serde_json::Value::String(k.to_string()).to_string());
                out.push_str(": ");
                py_json(&v.get_item(&k)?, out)?;
            }
            out.push('}');
        }
        _ => return Err(minijinja::Error::new(ErrorKind::BadSerialization, format!("cannot write {v:?} as JSON"))),
    }
    Ok(())
}

impl ChatTemplate {
    /// Compiles `source` (a Jinja chat template); `source_name` names its
    /// file in errors.
    pub fn new(source: &str, source_name: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_filter("tojson", |v: Value| -> std::result::Result<Value, minijinja::Error> {
            let mut s = String::new();
            py_json(&v, &mut s)?;
            Ok(Value::from_safe_string(s))
        });
        // transformers' AssistantTracker markers carry no text
        let re = fancy_regex::Regex::new(r"\{%-?\s*(end)?generation\s*-?%\}")
            .map_err(|e| TemplateError::Syntax { source_name: source_name.into(), msg: e.to_string() })?;
        let src = re.replace_all(source, "").into_owned();
        env.add_template_owned("chat", src).map_err(|e| TemplateError::Syntax { source_name: source_name.into(), msg: format!("{e:#}") })?;
        Ok(ChatTemplate { env, source_name: source_name.into(), bos_token: bos_token.into(), eos_token: eos_token.into(), unk_token: None, pad_token: None })
    }

    /// Renders `messages` as transformers' `apply_chat_template(...,
    /// tokenize=False, add_generation_prompt=...)`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let msgs: Vec<Value> = messages.iter().map(|m| Value::from_serialize(serde_json::json!({"role": role_name(m.role), "content": m.content}))).collect();
        let t = self.env.get_template("chat").map_err(|e| TemplateError::Syntax { source_name: self.source_name.clone(), msg: e.to_string() })?;
        let ctx = minijinja::context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone(),
            eos_token => self.eos_token.clone(),
            unk_token => self.unk_token.clone(),
            pad_token => self.pad_token.clone(),
        };
        t.render(ctx).map_err(|e| {
            let msg = if e.kind() == ErrorKind::InvalidOperation { format!("the template raised: {}", e.detail().unwrap_or("")) } else { format!("{e:#}") };
            TemplateError::Render { source_name: self.source_name.clone(), msg }
        })
    }

    /// Renders a dialog and finds its assistant turns (see the module
    /// header).
    pub fn render_spans(&self, messages: &[Message]) -> Result<Rendered> {
        let text = self.render(messages, false)?;
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != Role::Assistant {
                continue;
            }
            let before = self.render(&messages[..i], true)?;
            let through = self.render(&messages[..=i], false)?;
            let err = |msg: String| TemplateError::Spans { source_name: self.source_name.clone(), msg };
            if !through.starts_with(&before) {
                return Err(err(format!("the render before assistant message {i} (with the generation prompt) is not a prefix of the render through it")));
            }
            if !text.starts_with(&through) {
                return Err(err(format!("the render through message {i} is not a prefix of the whole dialog's render")));
            }
            let end = before.len() + through[before.len()..].trim_end().len();
            if end > before.len() {
                spans.push((before.len(), end));
            }
        }
        Ok(Rendered { text, spans })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_spans_cover_answers_and_end_of_turn() {
        let t = ChatTemplate::new(CHATML, "test", "", "<|im_end|>").unwrap();
        let d = [Message::new(Role::User, "Hi"), Message::new(Role::Assistant, "Hello!"), Message::new(Role::User, "Bye")];
        let r = t.render_spans(&d).unwrap();
        assert_eq!(r.text, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n");
        assert_eq!(r.spans.len(), 1);
        let (a, b) = r.spans[0];
        assert_eq!(&r.text[a..b], "Hello!<|im_end|>");
    }

    #[test]
    fn raise_exception_and_syntax_errors_are_clear() {
        let t = ChatTemplate::new("{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}ok", "t", "", "")
            .unwrap();
        let e = t.render(&[Message::new(Role::Assistant, "x")], false).unwrap_err().to_string();
        assert!(e.contains("Conversation must start with user"), "{e}");
        let e = ChatTemplate::new("{% for %}", "bad.json", "", "").err().unwrap().to_string();
        assert!(e.contains("bad.json") && e.contains("HINT"), "{e}");
    }

    #[test]
    fn tojson_is_pythons() {
        let t = ChatTemplate::new("{{ {'a': [1, 'é<'], 'b': none} | tojson }}", "t", "", "").unwrap();
        assert_eq!(t.render(&[], false).unwrap(), r#"{"a": [1, "é<"], "b": null}"#);
    }
}
