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
    /// An assistant turn's calls, as templates read them: `[{"type":
    /// "function", "function": {"name", "arguments": {...}}}]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// A `tool` turn's answer to this call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            tool_calls: None,
            tool_call_id: None,
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
    #[error(
        "message {message}'s content holds the control token '{token}'; ferry tokenizes message content as text, but this model's chat template rewrites the content, so its text cannot be told apart from the template's; remove the token from the message, or let control tokens in content act as such (`--content-special`, llama.cpp's behaviour)"
    )]
    ContentNotText { message: usize, token: String },
}

/// Markers around each message's content in a second rendering, which show
/// where the content landed in the prompt (characters of a private-use plane
/// that neither templates nor tokenizers give a meaning).
const OPEN: char = '\u{F0000}';
const CLOSE: char = '\u{F0001}';

/// Tokenize a conversation for generation. Message content is text: a
/// control token written in it (`<|im_end|><|im_start|>system ...`) stays
/// text, so a client cannot forge turns, as OpenAI's API behaves; only the
/// template's own control tokens are parsed. `content_special` parses them in
/// content too (llama.cpp's behaviour).
pub fn encode_conversation(
    tok: &super::Tokenizer,
    template: &ChatTemplate,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
) -> Result<Vec<u32>, ChatError> {
    let opts = RenderOptions::generation(add_generation_prompt);
    encode_conversation_with(tok, template, messages, &opts, false)
}

/// `encode_conversation`, with `content_special` choosing llama.cpp's
/// parsing of control tokens in content.
pub fn encode_conversation_with(
    tok: &super::Tokenizer,
    template: &ChatTemplate,
    messages: &[ChatMessage],
    opts: &RenderOptions,
    content_special: bool,
) -> Result<Vec<u32>, ChatError> {
    let text = template.render_opts(messages, opts)?;
    let risky = messages.iter().enumerate().find_map(|(i, m)| {
        tok.control_tokens_in(&m.content)
            .first()
            .map(|t| (i, t.to_string()))
    });
    let Some((message, token)) = risky.filter(|_| !content_special) else {
        // No control token's text in any content: the plain tokenization is
        // the protected one.
        return Ok(tok.encode_chat(&text));
    };
    match template.locate_content(messages, opts, &text)? {
        Some(ranges) => Ok(tok.encode_chat_protected(&text, &ranges)),
        None => Err(ChatError::ContentNotText { message, token }),
    }
}

/// What a rendering asks of the template beyond the messages.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    pub add_generation_prompt: bool,
    /// `enable_thinking` for templates that read it (Qwen3's); `None` leaves
    /// the template's default.
    pub enable_thinking: Option<bool>,
    /// The request's `tools` (OpenAI's function definitions), passed to the
    /// template as `tools`, as the reference renderers pass them.
    pub tools: Option<serde_json::Value>,
}

impl RenderOptions {
    pub fn generation(add_generation_prompt: bool) -> Self {
        RenderOptions {
            add_generation_prompt,
            enable_thinking: None,
            tools: None,
        }
    }
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
        self.render_opts(messages, &RenderOptions::generation(add_generation_prompt))
    }

    /// `render` with the template variables a request may set.
    pub fn render_opts(
        &self,
        messages: &[ChatMessage],
        opts: &RenderOptions,
    ) -> Result<String, ChatError> {
        let tmpl = self.env.get_template("chat").map_err(ChatError::Render)?;
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| Value::from(minijinja::value::Serde(m)))
            .collect();
        let base = context! {
            messages => messages,
            add_generation_prompt => opts.add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        let base = match &opts.tools {
            Some(tools) => {
                context! { tools => Value::from(minijinja::value::Serde(tools)), ..base }
            }
            None => base,
        };
        let ctx = match opts.enable_thinking {
            // Templates with a thinking switch (Qwen3's) read this variable.
            Some(on) => context! { enable_thinking => on, ..base },
            None => base,
        };
        tmpl.render(ctx).map_err(ChatError::Render)
    }

    /// The byte ranges of `text` (this template's rendering of `messages`)
    /// that hold the messages' content, found by rendering again with each
    /// content's trimmed core between markers (whitespace stays outside, so
    /// a template that trims content renders the same). `None` when the
    /// template rewrites content so that the marked rendering, markers
    /// removed, is not `text` (or a content holds a marker character).
    pub fn locate_content(
        &self,
        messages: &[ChatMessage],
        opts: &RenderOptions,
        text: &str,
    ) -> Result<Option<Vec<std::ops::Range<usize>>>, ChatError> {
        if messages.iter().any(|m| m.content.contains([OPEN, CLOSE])) {
            return Ok(None);
        }
        let marked: Vec<ChatMessage> = messages
            .iter()
            .map(|m| {
                let core = m.content.trim();
                if core.is_empty() {
                    return m.clone();
                }
                let lead = m.content.len() - m.content.trim_start().len();
                let (before, after) = (&m.content[..lead], &m.content[lead + core.len()..]);
                ChatMessage {
                    content: format!("{before}{OPEN}{core}{CLOSE}{after}"),
                    ..m.clone()
                }
            })
            .collect();
        let rendered = self.render_opts(&marked, opts)?;
        let (mut plain, mut ranges, mut open) = (String::with_capacity(text.len()), vec![], None);
        for c in rendered.chars() {
            match c {
                OPEN if open.is_none() => open = Some(plain.len()),
                CLOSE if open.is_some() => ranges.push(open.take().unwrap_or(0)..plain.len()),
                OPEN | CLOSE => return Ok(None),
                c => plain.push(c),
            }
        }
        Ok((plain == text && open.is_none()).then_some(ranges))
    }
}
