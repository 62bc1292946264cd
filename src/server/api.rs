//! The OpenAI request and response shapes, and their validation. Unknown
//! fields are ignored (clients send many); known fields with values ferry
//! cannot honour are rejected with a 400 that says so, never ignored.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::engine::SamplerConfig;
use crate::tokenizer::ChatMessage;

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn param(mut self, p: &'static str) -> Self {
        self.param = Some(p);
        self
    }

    pub fn code(mut self, c: &'static str) -> Self {
        self.code = Some(c);
        self
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling and length fields both endpoints share.
#[derive(Debug, Deserialize, Default)]
pub struct Common {
    pub model: Option<String>,
    #[serde(default)]
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Extensions (llama.cpp's server accepts them too).
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub n: Option<i64>,
    /// Chat: `true` for the chosen tokens' log-probabilities; completions:
    /// how many alternatives per token (0-5).
    pub logprobs: Option<serde_json::Value>,
    /// Chat: alternatives per token (0-20), with `logprobs: true`.
    pub top_logprobs: Option<i64>,
    /// `text`, `json_object` or `json_schema` (`{"name", "schema", "strict"}`).
    pub response_format: Option<serde_json::Value>,
    /// A grammar the output is held to: Lark (llguidance's dialect) or
    /// llama.cpp's GBNF (an extension, as llama.cpp's server has one).
    pub grammar: Option<String>,
    pub best_of: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct MessageIn {
    pub role: String,
    pub content: Option<Content>,
    /// An assistant turn's calls (fed back with the `tool` turns' results).
    pub tool_calls: Option<Vec<ToolCallIn>>,
    /// A `tool` turn: the call it answers.
    pub tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ToolCallIn {
    pub id: Option<String>,
    pub function: FunctionCallIn,
}

#[derive(Debug, Deserialize)]
pub struct FunctionCallIn {
    pub name: String,
    /// JSON text, as OpenAI sends it (an object is taken too).
    pub arguments: serde_json::Value,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<MessageIn>,
    pub max_completion_tokens: Option<i64>,
    pub tools: Option<serde_json::Value>,
    pub tool_choice: Option<serde_json::Value>,
    pub parallel_tool_calls: Option<bool>,
    /// Variables for the chat template (vLLM's and llama.cpp's extension);
    /// ferry passes `enable_thinking`.
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    #[serde(flatten)]
    pub common: Common,
}

/// Parse a JSON body into `T`, turning serde's message into a 400.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "the request body is not valid JSON"
        } else {
            "the request body does not have the expected fields and types"
        };
        ApiError::invalid(format!("{what}: {e}"))
    })
}

/// Validated generation parameters.
#[derive(Debug)]
pub struct Params {
    pub stream: bool,
    pub include_usage: bool,
    pub max_tokens: Option<usize>,
    pub sampling: SamplerConfig,
    pub stop: Vec<String>,
    /// Log-probabilities of the chosen tokens with this many alternatives
    /// each (`None`: not asked for).
    pub logprobs: Option<usize>,
    /// Chat with a thinking model: splits reasoning from the answer.
    pub reasoning: Option<super::reasoning::ReasoningSplit>,
    /// Choices to generate from the one prompt.
    pub n: usize,
    /// The model was given tools: calls in its answer become `tool_calls`.
    pub tools: bool,
    /// Their names (a call to another name stays content).
    pub tool_names: Vec<String>,
    /// The grammar the output is held to, if any (compiled by the handler).
    pub grammar: Option<GrammarSpec>,
    /// A grammar that holds the output from a token on (`strict` tools with
    /// `tool_choice` `auto`: a call's body after the model opens one).
    pub lazy_grammar: Option<(u32, GrammarSpec)>,
}

/// The tools given to the template, and those the answer must call
/// (`tool_choice` `required` or a named function), if any.
pub type ToolsOffered = (serde_json::Value, Option<Vec<serde_json::Value>>);

/// What a request holds its output to.
#[derive(Debug, Clone)]
pub enum GrammarSpec {
    JsonObject,
    JsonSchema(serde_json::Value),
    Lark(String),
    /// A forced tool call's grammar (Lark, from the tools' schemas).
    Tools(String),
}

impl GrammarSpec {
    pub fn spec(&self) -> crate::engine::constrain::Spec<'_> {
        use crate::engine::constrain::Spec;
        match self {
            GrammarSpec::JsonObject => Spec::JsonObject,
            GrammarSpec::JsonSchema(v) => Spec::JsonSchema(v),
            GrammarSpec::Lark(g) | GrammarSpec::Tools(g) => Spec::Lark(g),
        }
    }

    /// The request field it came from (for a 400 naming it).
    pub fn param(&self) -> &'static str {
        match self {
            GrammarSpec::Lark(_) => "grammar",
            GrammarSpec::Tools(_) => "tools",
            _ => "response_format",
        }
    }
}

/// `response_format` as a grammar: `None` for text.
fn response_format(f: &serde_json::Value) -> Result<Option<GrammarSpec>, ApiError> {
    let bad = |why: String| Err(ApiError::invalid(why).param("response_format"));
    match f.get("type").and_then(|t| t.as_str()) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(GrammarSpec::JsonObject)),
        Some("json_schema") => {
            let Some(js) = f.get("json_schema").filter(|v| v.is_object()) else {
                return bad(
                    "response_format json_schema needs a \"json_schema\" object with the \"schema\""
                        .into(),
                );
            };
            match js.get("schema") {
                Some(schema) if schema.is_object() || schema.is_boolean() => {
                    Ok(Some(GrammarSpec::JsonSchema(schema.clone())))
                }
                Some(other) => bad(format!(
                    "response_format json_schema.schema must be a JSON Schema object, got {other}"
                )),
                None => bad("response_format json_schema has no \"schema\"".into()),
            }
        }
        _ => bad(format!(
            "response_format {f}: the type must be \"text\", \"json_object\" or \"json_schema\""
        )),
    }
}

fn in_range(v: Option<f32>, lo: f32, hi: f32, name: &'static str) -> Result<(), ApiError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) || x.is_nan() => Err(ApiError::invalid(format!(
            "{name} must be between {lo} and {hi}, got {x}"
        ))
        .param(name)),
        _ => Ok(()),
    }
}

impl Common {
    /// Check the fields; `seed` is used when the request gives none.
    pub fn params(&self, max_tokens_override: Option<i64>, seed: u64) -> Result<Params, ApiError> {
        let mut grammar = match &self.response_format {
            Some(f) if !f.is_null() => response_format(f)?,
            _ => None,
        };
        if let Some(g) = &self.grammar {
            if grammar.is_some() {
                return Err(ApiError::invalid(
                    "grammar and a JSON response_format were both given; send one",
                )
                .param("grammar"));
            }
            // llama.cpp's GBNF is taken too, rewritten as Lark.
            let lark = if crate::engine::gbnf::is_gbnf(g) {
                crate::engine::gbnf::to_lark(g)
                    .map_err(|e| ApiError::invalid(format!("grammar: {e}")).param("grammar"))?
            } else {
                g.clone()
            };
            grammar = Some(GrammarSpec::Lark(lark));
        }
        let n = match self.n {
            None => 1,
            Some(n) if (1..=128).contains(&n) => n as usize,
            Some(n) => {
                return Err(
                    ApiError::invalid(format!("n must be between 1 and 128, got {n}")).param("n"),
                );
            }
        };
        if let Some(b) = self.best_of
            && b != 1
        {
            return Err(ApiError::invalid("best_of is not supported").param("best_of"));
        }
        in_range(self.temperature, 0.0, 2.0, "temperature")?;
        in_range(self.top_p, 0.0, 1.0, "top_p")?;
        in_range(self.min_p, 0.0, 1.0, "min_p")?;
        in_range(self.presence_penalty, -2.0, 2.0, "presence_penalty")?;
        in_range(self.frequency_penalty, -2.0, 2.0, "frequency_penalty")?;
        in_range(self.repeat_penalty, 0.0, 10.0, "repeat_penalty")?;
        if self.repeat_penalty == Some(0.0) {
            // Dividing the logits by 0 makes them infinite.
            return Err(ApiError::invalid(
                "repeat_penalty must be greater than 0 (1 turns it off)",
            )
            .param("repeat_penalty"));
        }
        let max_tokens = match max_tokens_override.or(self.max_tokens) {
            None => None,
            Some(m) if m < 1 => {
                return Err(
                    ApiError::invalid(format!("max_tokens must be at least 1, got {m}"))
                        .param("max_tokens"),
                );
            }
            Some(m) => Some(usize::try_from(m).unwrap_or(usize::MAX)),
        };
        if let Some(k) = self.top_k
            && k < 0
        {
            return Err(ApiError::invalid("top_k must be >= 0").param("top_k"));
        }
        let stop = match &self.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > 4 {
            return Err(ApiError::invalid("at most 4 stop sequences").param("stop"));
        }
        let defaults = SamplerConfig::default();
        let sampling = SamplerConfig {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_k: self.top_k.map_or(defaults.top_k, |k| k as usize),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            min_p: self.min_p.unwrap_or(defaults.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(defaults.repeat_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            seed: self.seed.map_or(seed, |s| s as u64),
            ..defaults
        };
        Ok(Params {
            stream: self.stream.unwrap_or(false),
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
            max_tokens,
            sampling,
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            logprobs: None,
            reasoning: None,
            n,
            tools: false,
            tool_names: Vec::new(),
            grammar,
            lazy_grammar: None,
        })
    }

    /// What the request asks of log-probabilities, as the two endpoints
    /// spell it: chat `logprobs: true` with `top_logprobs` 0-20, completions
    /// `logprobs` 0-5.
    pub fn logprobs(&self, chat: bool) -> Result<Option<usize>, ApiError> {
        use serde_json::Value;
        let top = self.top_logprobs;
        if chat {
            let on = match &self.logprobs {
                None | Some(Value::Null) | Some(Value::Bool(false)) => false,
                Some(Value::Bool(true)) => true,
                Some(v) => {
                    return Err(ApiError::invalid(format!(
                        "logprobs must be true or false in a chat request, got {v} (top_logprobs gives the alternatives)"
                    ))
                    .param("logprobs"));
                }
            };
            return match top {
                Some(k) if !(0..=20).contains(&k) => Err(ApiError::invalid(format!(
                    "top_logprobs must be between 0 and 20, got {k}"
                ))
                .param("top_logprobs")),
                Some(k) if k > 0 && !on => {
                    Err(ApiError::invalid("top_logprobs needs logprobs: true")
                        .param("top_logprobs"))
                }
                _ if on => Ok(Some(top.unwrap_or(0) as usize)),
                _ => Ok(None),
            };
        }
        if top.is_some() {
            return Err(ApiError::invalid(
                "top_logprobs is a chat field; completions take logprobs: N (0-5)",
            )
            .param("top_logprobs"));
        }
        match &self.logprobs {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) if n.as_u64().is_some_and(|k| k <= 5) => {
                Ok(n.as_u64().map(|k| k as usize))
            }
            Some(v) => Err(ApiError::invalid(format!(
                "logprobs must be an integer between 0 and 5 in a completions request, got {v}"
            ))
            .param("logprobs")),
        }
    }
}

impl ChatRequest {
    /// `chat_template_kwargs.enable_thinking`, for templates with a thinking
    /// switch (Qwen3's); other variables are refused by name.
    pub fn enable_thinking(&self) -> Result<Option<bool>, ApiError> {
        let Some(kw) = &self.chat_template_kwargs else {
            return Ok(None);
        };
        let mut on = None;
        for (k, v) in kw {
            match (k.as_str(), v) {
                ("enable_thinking", serde_json::Value::Bool(b)) => on = Some(*b),
                ("enable_thinking", _) => {
                    return Err(ApiError::invalid("enable_thinking must be true or false")
                        .param("chat_template_kwargs"));
                }
                (other, _) => {
                    return Err(ApiError::invalid(format!(
                        "chat_template_kwargs.{other} is not supported (ferry passes enable_thinking)"
                    ))
                    .param("chat_template_kwargs"));
                }
            }
        }
        Ok(on)
    }

    /// The conversation as the chat template takes it.
    pub fn conversation(&self) -> Result<Vec<ChatMessage>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages must not be empty").param("messages"));
        }
        self.messages
            .iter()
            .map(|m| {
                let role = match m.role.as_str() {
                    "system" | "developer" => "system",
                    "user" => "user",
                    "assistant" => "assistant",
                    "tool" => "tool",
                    other => {
                        return Err(ApiError::invalid(format!(
                            "unsupported message role '{other}' (system, developer, user, assistant, tool)"
                        ))
                        .param("messages"));
                    }
                };
                let content = match &m.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t.clone(),
                    Some(Content::Parts(parts)) => {
                        let mut text = String::new();
                        for p in parts {
                            match (p.kind.as_str(), &p.text) {
                                ("text", Some(t)) => text.push_str(t),
                                (kind, _) => {
                                    return Err(ApiError::invalid(format!(
                                        "content parts of type '{kind}' are not supported (text only)"
                                    ))
                                    .param("messages"));
                                }
                            }
                        }
                        text
                    }
                };
                let mut msg = ChatMessage::new(role, content);
                msg.tool_call_id = m.tool_call_id.clone();
                if let Some(calls) = &m.tool_calls {
                    // Templates read the arguments as an object.
                    let calls = calls
                        .iter()
                        .map(|c| {
                            let args = match &c.function.arguments {
                                serde_json::Value::String(s) => serde_json::from_str(s).map_err(|e| {
                                    ApiError::invalid(format!(
                                        "the arguments of the call to '{}' are not JSON: {e}",
                                        c.function.name
                                    ))
                                    .param("messages")
                                })?,
                                other => other.clone(),
                            };
                            Ok(serde_json::json!({
                                "id": c.id,
                                "type": "function",
                                "function": {"name": c.function.name, "arguments": args},
                            }))
                        })
                        .collect::<Result<Vec<_>, ApiError>>()?;
                    msg.tool_calls = Some(serde_json::Value::Array(calls));
                }
                Ok(msg)
            })
            .collect()
    }

    /// The tools the model may call (passed to its template), or `None`,
    /// and the ones the answer must call (`tool_choice` `required`: any of
    /// them; a named function: that one), produced under a grammar.
    /// `auto` (the default with tools) lets the model choose; `none` gives
    /// it no tools.
    pub fn tools(&self) -> Result<Option<ToolsOffered>, ApiError> {
        use serde_json::Value;
        let tools = match &self.tools {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(a)) if a.is_empty() => return Ok(None),
            Some(Value::Array(a)) => a,
            Some(_) => {
                return Err(ApiError::invalid("tools must be an array").param("tools"));
            }
        };
        for (i, t) in tools.iter().enumerate() {
            let ok = t.get("type").and_then(Value::as_str) == Some("function")
                && t.get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .is_some_and(|n| !n.is_empty());
            if !ok {
                return Err(ApiError::invalid(format!(
                    "tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": …, \"parameters\": …}}}}"
                ))
                .param("tools"));
            }
        }
        let all = || Value::Array(tools.clone());
        match &self.tool_choice {
            None | Some(Value::Null) => Ok(Some((all(), None))),
            Some(Value::String(c)) if c == "auto" => Ok(Some((all(), None))),
            Some(Value::String(c)) if c == "none" => Ok(None),
            Some(Value::String(c)) if c == "required" => Ok(Some((all(), Some(tools.clone())))),
            Some(named @ Value::Object(_)) => {
                let name = named
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ApiError::invalid(format!(
                            "tool_choice {named}: a named choice is {{\"type\": \"function\", \"function\": {{\"name\": …}}}}"
                        ))
                        .param("tool_choice")
                    })?;
                let tool = tools
                    .iter()
                    .find(|t| t["function"]["name"].as_str() == Some(name))
                    .ok_or_else(|| {
                        ApiError::invalid(format!(
                            "tool_choice names '{name}', which is not among the tools"
                        ))
                        .param("tool_choice")
                    })?;
                Ok(Some((all(), Some(vec![tool.clone()]))))
            }
            Some(other) => Err(ApiError::invalid(format!(
                "tool_choice {other}: use \"auto\", \"none\", \"required\" or a named function"
            ))
            .param("tool_choice")),
        }
    }
}

impl CompletionRequest {
    /// The prompt: text to tokenize, or token ids.
    pub fn prompt(&self) -> Result<Result<&str, &[u32]>, ApiError> {
        if self.echo == Some(true) {
            return Err(ApiError::invalid("echo is not supported").param("echo"));
        }
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid("suffix is not supported").param("suffix"));
        }
        let one = || ApiError::invalid("one prompt per request").param("prompt");
        Ok(match &self.prompt {
            Prompt::Text(t) => Ok(t.as_str()),
            Prompt::Texts(v) if v.len() == 1 => Ok(v[0].as_str()),
            Prompt::Tokens(t) => Err(t.as_slice()),
            Prompt::TokenLists(v) if v.len() == 1 => Err(v[0].as_slice()),
            _ => return Err(one()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openai_chat_requests() {
        let r: ChatRequest = parse(
            br#"{"model":"m","messages":[{"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"hi"}]}],
            "max_tokens":5,"temperature":0,"stop":"\n","stream":true,
            "stream_options":{"include_usage":true},"user":"x"}"#,
        )
        .unwrap();
        let conv = r.conversation().unwrap();
        assert_eq!(conv[1].content, "hi");
        let p = r.common.params(r.max_completion_tokens, 7).unwrap();
        assert!(p.stream && p.include_usage);
        assert_eq!(p.max_tokens, Some(5));
        assert_eq!(p.sampling.temperature, 0.0);
        assert_eq!(p.sampling.seed, 7);
        assert_eq!(p.stop, vec!["\n".to_string()]);
    }

    #[test]
    fn rejects_bad_requests_with_messages() {
        let e = parse::<ChatRequest>(b"{not json").unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        let e = parse::<ChatRequest>(br#"{"messages":"hi"}"#).unwrap_err();
        assert!(e.message.contains("expected"), "{}", e.message);
        let r: ChatRequest =
            parse(br#"{"messages":[{"role":"user","content":"x"}],"repeat_penalty":0}"#).unwrap();
        assert_eq!(
            r.common.params(None, 0).unwrap_err().param,
            Some("repeat_penalty")
        );
        let e = parse::<ChatRequest>(br#"{"messages":[],"temperature":"hot"}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let r: ChatRequest =
            parse(br#"{"messages":[{"role":"user","content":"x"}],"temperature":3}"#).unwrap();
        assert_eq!(
            r.common.params(None, 0).unwrap_err().param,
            Some("temperature")
        );
        let r: ChatRequest =
            parse(br#"{"messages":[{"role":"user","content":"x"}],"n":0}"#).unwrap();
        assert_eq!(r.common.params(None, 0).unwrap_err().param, Some("n"));
        let r: ChatRequest =
            parse(br#"{"messages":[{"role":"user","content":"x"}],"n":3}"#).unwrap();
        assert_eq!(r.common.params(None, 0).unwrap().n, 3);
        let r: ChatRequest = parse(br#"{"messages":[{"role":"wizard","content":"x"}]}"#).unwrap();
        assert!(r.conversation().is_err());
        let r: ChatRequest =
            parse(br#"{"messages":[{"role":"user","content":"x"}],"max_tokens":0}"#).unwrap();
        assert_eq!(
            r.common.params(None, 0).unwrap_err().param,
            Some("max_tokens")
        );
    }

    #[test]
    fn completion_prompts() {
        let r: CompletionRequest = parse(br#"{"prompt":"abc"}"#).unwrap();
        assert_eq!(r.prompt().unwrap(), Ok("abc"));
        let r: CompletionRequest = parse(br#"{"prompt":[1,2,3]}"#).unwrap();
        assert_eq!(r.prompt().unwrap(), Err(&[1u32, 2, 3][..]));
        let r: CompletionRequest = parse(br#"{"prompt":["a","b"]}"#).unwrap();
        assert!(r.prompt().is_err());
    }
}
