//! Tool calls in the model's output (issue #25): the formats of the families
//! ferry runs, parsed back into OpenAI's `tool_calls`.
//!
//! - Qwen2.5/Qwen3 and Hermes-style templates: `<tool_call>{"name": …,
//!   "arguments": {…}}</tool_call>`, one block per call.
//! - Llama 3.x: `<|python_tag|>` followed by the call, or a bare JSON object
//!   `{"name": …, "parameters": {…}}`.
//! - Anything else: the whole answer as one JSON object with `name` and
//!   `arguments` (or `parameters`), or an array of them.
//!
//! With `tool_choice` `auto` calls are produced by the model unconstrained,
//! and an answer that does not parse stays content; with `required` or a
//! named function the answer is held to a grammar of the family's format
//! (`forced_grammar`), so that it always parses.

use serde_json::Value;

pub const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";

/// A Lark grammar (llguidance's dialect) for an answer that calls one of
/// `tools` (OpenAI tool objects), in the format the model's family writes:
/// `<tool_call>` blocks where the vocabulary has that token (Qwen, Hermes),
/// else one JSON object, with `parameters` where it has `<|python_tag|>`
/// (Llama 3.x) and `arguments` otherwise. `parallel`: several calls allowed
/// (tagged formats).
pub fn forced_grammar(tools: &[Value], tagged: bool, llama: bool, parallel: bool) -> String {
    let key = if llama && !tagged {
        "parameters"
    } else {
        "arguments"
    };
    let body = format!("body: %json {}", call_schema(tools, key));
    if tagged {
        let start = if parallel {
            "start: call (\"\\n\" call)*"
        } else {
            "start: call"
        };
        format!("{start}\ncall: \"{OPEN}\\n\" body \"\\n{CLOSE}\"\n{body}\n")
    } else {
        format!("start: body\n{body}\n")
    }
}

/// The grammar of a call's rest once the model has written `<tool_call>`
/// by itself (`tool_choice` `auto` with `strict` tools, tagged formats):
/// the call's JSON, valid for one of `tools`, and the closing tag.
pub fn call_body_grammar(tools: &[Value]) -> String {
    format!(
        "start: \"\\n\" body \"\\n{CLOSE}\"\nbody: %json {}\n",
        call_schema(tools, "arguments")
    )
}

/// Whether any tool asks for `strict` arguments.
pub fn any_strict(tools: &[Value]) -> bool {
    tools
        .iter()
        .any(|t| t["function"]["strict"].as_bool() == Some(true))
}

/// JSON Schema of one call `{"name": …, key: {…}}` to any of `tools`.
fn call_schema(tools: &[Value], key: &str) -> Value {
    let calls: Vec<Value> = tools
        .iter()
        .map(|t| {
            let f = &t["function"];
            let params = match f.get("parameters") {
                Some(p) if p.is_object() => p.clone(),
                _ => serde_json::json!({"type": "object"}),
            };
            serde_json::json!({
                "type": "object",
                "properties": {"name": {"const": f["name"]}, key: params},
                "required": ["name", key],
                "additionalProperties": false,
            })
        })
        .collect();
    serde_json::json!({"anyOf": calls})
}

/// One call: the function's name and its arguments as JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: String,
}

/// A call from a JSON object `{"name", "arguments" | "parameters"}`.
fn call_of(v: &Value) -> Option<ToolCall> {
    let name = v.get("name")?.as_str()?.to_string();
    let args = v.get("arguments").or_else(|| v.get("parameters"))?;
    let arguments = match args {
        // Some models write the arguments as a JSON string already.
        Value::String(s) if serde_json::from_str::<Value>(s).is_ok() => s.clone(),
        other => other.to_string(),
    };
    Some(ToolCall { name, arguments })
}

/// `parse`, where calls count only if every one names an offered tool
/// (`offered`; empty: any name): an answer that calls a function the request
/// did not offer stays content, as OpenAI never returns such a call.
pub fn parse_offered(text: &str, offered: &[String]) -> (String, Vec<ToolCall>) {
    let (content, calls) = parse(text);
    if !offered.is_empty() && calls.iter().any(|c| !offered.contains(&c.name)) {
        return (text.to_string(), Vec::new());
    }
    (content, calls)
}

/// The answer's content (what is not a call) and its calls.
pub fn parse(text: &str) -> (String, Vec<ToolCall>) {
    let mut calls = Vec::new();
    let mut content = String::new();
    let mut rest = text;
    // Tagged blocks.
    while let Some(i) = rest.find(OPEN) {
        let after = &rest[i + OPEN.len()..];
        let Some(j) = after.find(CLOSE) else { break };
        let Some(call) = serde_json::from_str::<Value>(after[..j].trim())
            .ok()
            .as_ref()
            .and_then(call_of)
        else {
            break;
        };
        content.push_str(&rest[..i]);
        calls.push(call);
        rest = &after[j + CLOSE.len()..];
    }
    if !calls.is_empty() {
        content.push_str(rest);
        return (content.trim().to_string(), calls);
    }
    // The whole answer as a call (Llama 3.x, generic JSON).
    let body = text.trim();
    let body = body.strip_prefix(PYTHON_TAG).unwrap_or(body).trim();
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        let all: Option<Vec<ToolCall>> = match &v {
            Value::Array(items) if !items.is_empty() => items.iter().map(call_of).collect(),
            other => call_of(other).map(|c| vec![c]),
        };
        if let Some(all) = all {
            return (String::new(), all);
        }
    }
    (text.to_string(), Vec::new())
}

/// Streams content while holding back what may be calls: text from a
/// `<tool_call>` marker on, and a whole answer that starts like a JSON call
/// (`{`, `[` or the python tag), which only its end can decide.
#[derive(Debug, Clone, Default)]
pub struct ToolStream {
    /// The offered tools' names (`parse_offered`).
    offered: Vec<String>,
    /// Everything generated (parsed at the end).
    all: String,
    /// How much of `all` went out as content.
    sent: usize,
    /// Holding everything from here on (a marker or a JSON start was seen).
    holding: bool,
}

impl ToolStream {
    pub fn new(offered: Vec<String>) -> Self {
        ToolStream {
            offered,
            ..Default::default()
        }
    }

    /// Content that is certain not to be part of a call.
    pub fn push(&mut self, piece: &str) -> String {
        self.all.push_str(piece);
        if self.holding {
            return String::new();
        }
        let head = self.all.trim_start();
        if head.is_empty() {
            return String::new();
        }
        if self.sent == 0
            && (head.starts_with(['{', '['])
                || PYTHON_TAG.starts_with(head)
                || head.starts_with(PYTHON_TAG))
        {
            self.holding = true;
            return String::new();
        }
        if let Some(i) = self.all[self.sent..].find(OPEN) {
            let out = self.all[self.sent..self.sent + i].to_string();
            self.sent += i;
            self.holding = true;
            return out;
        }
        // Hold back a tail that may begin the marker.
        let tail = &self.all[self.sent..];
        let keep = (1..OPEN.len())
            .rev()
            .find(|&k| {
                tail.len() >= k
                    && tail.is_char_boundary(tail.len() - k)
                    && OPEN.starts_with(&tail[tail.len() - k..])
            })
            .unwrap_or(0);
        let end = self.all.len() - keep;
        let out = self.all[self.sent..end].to_string();
        self.sent = end;
        out
    }

    /// At the end: the content not sent yet, and the calls.
    pub fn finish(&mut self) -> (String, Vec<ToolCall>) {
        let (content, calls) = parse_offered(&self.all[self.sent..], &self.offered);
        if calls.is_empty() {
            let rest = self.all[self.sent..].to_string();
            self.sent = self.all.len();
            return (rest, calls);
        }
        self.sent = self.all.len();
        (content, calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_calls_are_parsed_and_the_rest_is_content() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
        let (content, calls) = parse(text);
        assert_eq!(content, "Let me check.");
        assert_eq!(
            calls,
            vec![
                ToolCall {
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into()
                },
                ToolCall {
                    name: "get_time".into(),
                    arguments: "{}".into()
                },
            ]
        );
    }

    #[test]
    fn calls_to_tools_not_offered_stay_content() {
        let text = r#"{"name": "say_hello", "arguments": {"message": "hi"}}"#;
        let offered = vec!["get_weather".to_string()];
        assert_eq!(parse_offered(text, &offered), (text.to_string(), vec![]));
        let ok = r#"{"name": "get_weather", "arguments": {"city": "Paris"}}"#;
        assert_eq!(parse_offered(ok, &offered).1.len(), 1);
        let mut s = ToolStream::new(offered);
        assert_eq!(s.push(text), "");
        assert_eq!(s.finish(), (text.to_string(), vec![]));
    }

    #[test]
    fn llama_and_generic_json_calls() {
        let (c, calls) = parse(r#"<|python_tag|>{"name": "f", "parameters": {"x": 1}}"#);
        assert_eq!(
            (
                c.as_str(),
                calls[0].name.as_str(),
                calls[0].arguments.as_str()
            ),
            ("", "f", r#"{"x":1}"#)
        );
        let (_, calls) =
            parse(r#"[{"name": "a", "arguments": "{\"k\": 2}"}, {"name": "b", "arguments": {}}]"#);
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].arguments, r#"{"k": 2}"#);
        // Not calls: content as it was.
        for text in [
            "Paris is sunny.",
            r#"{"answer": 4}"#,
            "<tool_call>{broken</tool_call>",
            "<tool_call>{\"name\": \"f\", \"arguments\": {}}",
        ] {
            assert_eq!(parse(text), (text.to_string(), vec![]), "{text}");
        }
    }

    /// However the text is cut, the stream gives the same content and calls
    /// as parsing it whole.
    #[test]
    fn streaming_holds_back_calls_only() {
        for text in [
            "Sure. <tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}</tool_call>",
            "No tools needed: the answer is 4 < 5, and <tool is not a marker.",
            "  {\"name\": \"g\", \"arguments\": {}}",
            "{ this is just braces }",
        ] {
            let whole = parse(text);
            for step in 1..=text.len() {
                let mut s = ToolStream::default();
                let mut content = String::new();
                let mut i = 0;
                while i < text.len() {
                    let mut j = (i + step).min(text.len());
                    while !text.is_char_boundary(j) {
                        j += 1;
                    }
                    content.push_str(&s.push(&text[i..j]));
                    i = j;
                }
                let (rest, calls) = s.finish();
                content.push_str(&rest);
                assert_eq!(calls, whole.1, "{text} / {step}");
                if calls.is_empty() {
                    assert_eq!(content, text, "{step}");
                } else {
                    assert_eq!(content.trim(), whole.0, "{text} / {step}");
                }
            }
        }
    }
}
