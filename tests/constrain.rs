//! Constrained decoding on a real vocabulary (Qwen2.5's, 151k tokens): the
//! grammars the server builds allow exactly the outputs they describe, token
//! by token, and say when they are complete — which is what ends a
//! constrained answer, and what hands a `strict` tool call under
//! `tool_choice` `auto` back to free text after `</tool_call>`.

mod common;

use std::sync::Arc;

use ferry::engine::constrain::{Grammars, Spec};
use ferry::gguf::Gguf;
use ferry::server::tools;
use ferry::tokenizer::Tokenizer;

fn qwen() -> Arc<Tokenizer> {
    let g = Gguf::open(common::model("qwen05")).unwrap();
    Arc::new(Tokenizer::from_gguf(&g).unwrap())
}

/// Feed `text`'s tokens one by one: each must be allowed by the mask first.
fn feed(c: &mut ferry::engine::constrain::Constraint, tok: &Tokenizer, ids: &[u32]) {
    for &id in ids {
        let mut logits = vec![0f32; tok.vocab_size()];
        c.mask(&mut logits).unwrap();
        assert!(
            logits[id as usize].is_finite(),
            "token {id} ({:?}) forbidden",
            tok.token_text(id)
        );
        c.accept(id).unwrap();
    }
}

#[test]
fn a_strict_call_body_is_held_to_the_schema_and_ends_at_the_closing_tag() {
    let tok = qwen();
    let grammars = Grammars::new(tok.clone()).unwrap();
    let tool = serde_json::json!({"type": "function", "function": {"name": "get_weather", "strict": true,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"], "additionalProperties": false}}});
    let grammar = tools::call_body_grammar(std::slice::from_ref(&tool));
    let mut c = grammars.constraint(&Spec::Lark(&grammar)).unwrap();
    // After `<tool_call>` only the newline may come: not the JSON at once,
    // not text.
    let mut logits = vec![0f32; tok.vocab_size()];
    c.mask(&mut logits).unwrap();
    let allowed: Vec<u32> = (0..logits.len() as u32)
        .filter(|&i| logits[i as usize].is_finite())
        .collect();
    assert!(!allowed.is_empty());
    for &i in &allowed {
        let text = tok.token_text(i).unwrap_or("");
        assert!(
            text.starts_with('\u{10a}') || text.starts_with('\n'),
            "{text:?} allowed first"
        );
    }
    let body = "\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n";
    feed(&mut c, &tok, &tok.encode(body, false, false));
    assert!(!c.is_stopped());
    // The name must be one of the tools': after `{"name": "` a `say` is out.
    let mut other = grammars.constraint(&Spec::Lark(&grammar)).unwrap();
    feed(
        &mut other,
        &tok,
        &tok.encode("\n{\"name\": \"", false, false),
    );
    let mut logits = vec![0f32; tok.vocab_size()];
    other.mask(&mut logits).unwrap();
    let say = tok.encode("say", false, false)[0];
    assert!(logits[say as usize].is_infinite());
    // The closing tag (Qwen's own token) completes it.
    let close = tok.token_id("</tool_call>").expect("Qwen has the tag");
    feed(&mut c, &tok, &[close]);
    assert!(c.is_stopped(), "the grammar goes on after </tool_call>");
}

#[test]
fn json_schemas_and_lark_grammars_constrain_and_bad_ones_are_named() {
    let tok = qwen();
    let grammars = Grammars::new(tok.clone()).unwrap();
    let schema = serde_json::json!({"type": "object", "properties": {"n": {"type": "integer"}},
                                    "required": ["n"], "additionalProperties": false});
    let mut c = grammars.constraint(&Spec::JsonSchema(&schema)).unwrap();
    feed(&mut c, &tok, &tok.encode("{\"n\": 42}", false, false));
    // Complete: nothing may follow (the server ends the answer here).
    assert!(c.is_stopped());
    let mut lark = grammars
        .constraint(&Spec::Lark("start: \"yes\" | \"no\""))
        .unwrap();
    let mut logits = vec![0f32; tok.vocab_size()];
    lark.mask(&mut logits).unwrap();
    let maybe = tok.encode("maybe", false, false)[0];
    assert!(logits[maybe as usize].is_infinite());
    let err = grammars
        .constraint(&Spec::JsonSchema(&serde_json::json!({"$ref": "#/nowhere"})))
        .err()
        .expect("a dangling $ref is refused");
    assert!(err.contains("nowhere"), "{err}");
    assert!(grammars.constraint(&Spec::Lark("start: ((")).is_err());
}
