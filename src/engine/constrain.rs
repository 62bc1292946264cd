//! Constrained decoding: output held to a JSON Schema, to any JSON object, or
//! to a Lark grammar, by the `llguidance` engine. A [`Grammars`] is built
//! once per model (the tokenizer's token bytes in a trie); each constrained
//! sequence holds a [`Constraint`], which before every sampled token masks
//! the logits of the tokens the grammar forbids, and after it advances.
//! Unconstrained sequences hold none and pay nothing.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{self, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use crate::tokenizer::{TokenKind, Tokenizer};

/// The tokenizer as llguidance sees it: every token's bytes (control tokens
/// as the trie's special-token marker and their text), and ferry's encoder.
struct Env {
    trie: TokTrie,
    tok: Arc<Tokenizer>,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<toktrie::TokenId> {
        self.tok.encode(&String::from_utf8_lossy(s), false, false)
    }
}

/// What a request may ask its output to be.
pub enum Spec<'a> {
    /// Any JSON object (`response_format` `json_object`).
    JsonObject,
    /// A JSON Schema (`json_schema`, tools' parameters).
    JsonSchema(&'a serde_json::Value),
    /// A Lark grammar (llguidance's dialect: `start: ...`, `%json { ... }`).
    Lark(&'a str),
}

/// The compiled tokenizer, shared by every constrained sequence of a model.
pub struct Grammars {
    factory: ParserFactory,
}

impl Grammars {
    pub fn new(tok: Arc<Tokenizer>) -> Result<Self, String> {
        let n = tok.vocab_size();
        let eos = (0..n as u32)
            .find(|&id| tok.is_eog(id))
            .ok_or("the model's vocabulary has no end-of-generation token")?;
        let mut words = Vec::with_capacity(n);
        for id in 0..n as u32 {
            let mut bytes = Vec::new();
            match tok.token_kind(id) {
                Some(TokenKind::Control | TokenKind::Unknown | TokenKind::Unused) => {
                    bytes.push(TokTrie::SPECIAL_TOKEN_MARKER);
                    bytes.extend_from_slice(tok.token_text(id).unwrap_or("").as_bytes());
                }
                _ => tok
                    .token_bytes(id, true, &mut bytes)
                    .map_err(|e| e.to_string())?,
            }
            words.push(bytes);
        }
        let mut info = TokRxInfo::new(n as u32, eos);
        info.tok_end_of_turn = (0..n as u32).find(|&id| tok.is_eog(id) && id != eos);
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(Env { trie, tok });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        Ok(Grammars { factory })
    }

    /// A constraint for one sequence, or what is wrong with the spec.
    pub fn constraint(&self, spec: &Spec) -> Result<Constraint, String> {
        let grammar = match spec {
            Spec::JsonObject => {
                TopLevelGrammar::from_json_schema(serde_json::json!({"type": "object"}))
            }
            Spec::JsonSchema(schema) => TopLevelGrammar::from_json_schema((*schema).clone()),
            Spec::Lark(text) => TopLevelGrammar::from_lark(text.to_string()),
        };
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| e.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(e);
        }
        Ok(Constraint {
            matcher,
            ready: None,
        })
    }
}

/// One sequence's grammar state.
pub struct Constraint {
    matcher: Matcher,
    /// The allowed tokens for the next position, computed ahead (`prepare`).
    ready: Option<toktrie::SimpleVob>,
}

impl Constraint {
    /// Forbidden tokens' logits to −∞. Errs where the grammar has failed
    /// (no token can continue it).
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        let allowed = match self.ready.take() {
            Some(v) => v,
            None => self.matcher.compute_mask().map_err(|e| e.to_string())?,
        };
        let known = allowed.len();
        for (id, l) in logits.iter_mut().enumerate() {
            // Rows past the tokenizer's vocabulary (padded outputs) are never allowed.
            if id >= known || !allowed.is_allowed(id as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Compute the next position's mask now (while the model computes the
    /// logits it will apply to: the scheduler runs this beside the decode
    /// step). An error is kept for `mask` to report.
    pub fn prepare(&mut self) {
        if self.ready.is_none() {
            self.ready = self.matcher.compute_mask().ok();
        }
    }

    /// Advance past the sampled token.
    pub fn accept(&mut self, token: u32) -> Result<(), String> {
        self.matcher.consume_token(token).map_err(|e| e.to_string())
    }

    /// The same grammar in the same state, for another sequence.
    pub fn fork(&self) -> Constraint {
        Constraint {
            matcher: self.matcher.deep_clone(),
            ready: self.ready.clone(),
        }
    }

    /// Whether the grammar is complete (nothing more may follow).
    pub fn is_stopped(&self) -> bool {
        self.matcher.is_stopped()
    }
}
