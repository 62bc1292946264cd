//! Chat templates: the model's `tokenizer.chat_template` (Jinja) rendered with
//! minijinja, configured like the Python reference renderers (trim_blocks,
//! lstrip_blocks, `raise_exception`, Python string methods, `tojson` without
//! HTML escaping).

use minijinja::{Environment, Error, ErrorKind, Value, context};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error(
        "the model has no chat template (tokenizer.chat_template); run without --chat or pass a raw prompt"
    )]
    NoTemplate,
    #[error("chat template does not compile: {0:#}")]
    Compile(Error),
    #[error("chat template failed to render: {0:#}")]
    Render(Error),
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

fn tojson(value: Value, indent: Option<usize>) -> Result<String, Error> {
    let v: serde_json::Value = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let out = match indent {
        None => serde_json::to_string(&v),
        Some(n) => {
            let indent = " ".repeat(n);
            let fmt = serde_json::ser::PrettyFormatter::with_indent(indent.as_bytes());
            let mut buf = Vec::new();
            let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
            serde::Serialize::serialize(&v, &mut ser)
                .map(|_| String::from_utf8(buf).unwrap_or_default())
        }
    };
    // Python's json.dumps separates items with ", " and keys with ": ".
    out.map(|s| {
        if indent.is_none() {
            python_separators(&s)
        } else {
            s
        }
    })
    .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))
}

/// Re-space compact JSON the way Python's `json.dumps` does by default.
fn python_separators(compact: &str) -> String {
    let mut out = String::with_capacity(compact.len() + compact.len() / 8);
    let mut in_string = false;
    let mut escaped = false;
    for c in compact.chars() {
        out.push(c);
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else {
            match c {
                '"' => in_string = true,
                ',' | ':' => out.push(' '),
                _ => {}
            }
        }
    }
    out
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("default delimiters are valid"),
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> String {
            // Templates use this for "today's date"; a fixed clock-free rendering
            // keeps prompts reproducible.
            let _ = fmt;
            String::new()
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_string())
            .map_err(ChatError::Compile)?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// Build the template of a tokenizer's model.
    pub fn for_tokenizer(tok: &super::Tokenizer) -> Result<Self, ChatError> {
        let source = tok.chat_template().ok_or(ChatError::NoTemplate)?;
        let text = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("").to_string();
        Self::new(source, &text(tok.bos), &text(tok.eos))
    }

    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let tmpl = self.env.get_template("chat").map_err(ChatError::Render)?;
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_pairs([("role", m.role.as_str()), ("content", m.content.as_str())])
            })
            .collect();
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(ChatError::Render)
    }
}
