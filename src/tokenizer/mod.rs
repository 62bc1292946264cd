//! Tokenizers built from GGUF metadata, matching llama.cpp token for token.
//!
//! Text is first partitioned around special tokens written literally in it
//! (longest special token first, as llama.cpp does), then each plain fragment
//! goes through the vocabulary's algorithm: byte-level BPE for `gpt2` vocabularies,
//! score-ordered merges for SentencePiece (`llama`) ones.

pub mod bpe;
pub mod chat;
pub mod spm;
pub mod synthetic;

/// One piece of a word being merged (BPE and SPM): a byte range of the word and
/// its neighbours in a doubly linked list (-1 at the ends).
#[derive(Clone, Copy)]
pub(crate) struct Symbol {
    pub start: usize,
    pub len: usize,
    pub prev: isize,
    pub next: isize,
}

/// The word's characters as a linked list of symbols.
pub(crate) fn char_symbols(word: &str) -> Vec<Symbol> {
    let mut symbols = Vec::with_capacity(word.len());
    for (i, (start, c)) in word.char_indices().enumerate() {
        let end = start + c.len_utf8();
        symbols.push(Symbol {
            start,
            len: c.len_utf8(),
            prev: i as isize - 1,
            next: if end == word.len() {
                -1
            } else {
                i as isize + 1
            },
        });
    }
    symbols
}

use std::collections::HashMap;
use std::ops::Range;

use crate::gguf::{Gguf, Value};

pub use chat::{
    ChatMessage, ChatTemplate, RenderOptions, encode_conversation, encode_conversation_with,
};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("model has no tokenizer: metadata key '{0}' is missing")]
    Missing(&'static str),
    #[error("tokenizer metadata '{key}': {what}")]
    Bad { key: &'static str, what: String },
    #[error(
        "tokenizer model '{0}' is not supported (ferry supports 'gpt2' byte-level BPE and 'llama' SentencePiece)"
    )]
    UnsupportedModel(String),
    #[error(
        "pre-tokenizer '{0}' is not supported; supported: llama-bpe, qwen2, smollm, default and their aliases (see src/tokenizer/bpe.rs)"
    )]
    UnsupportedPre(String),
    #[error("token id {0} is outside the vocabulary")]
    BadId(u32),
}

/// The kind of a vocabulary entry (`tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenKind {
    fn from_i64(v: i64) -> Self {
        match v {
            2 => TokenKind::Unknown,
            3 => TokenKind::Control,
            4 => TokenKind::UserDefined,
            5 => TokenKind::Unused,
            6 => TokenKind::Byte,
            _ => TokenKind::Normal,
        }
    }
}

enum Algorithm {
    Bpe(bpe::Bpe),
    Spm {
        scores: Vec<f32>,
        byte_tokens: Box<[Option<u32>; 256]>,
    },
}

pub struct Tokenizer {
    model: String,
    pre: String,
    tokens: Vec<String>,
    kinds: Vec<TokenKind>,
    ids: HashMap<String, u32>,
    algorithm: Algorithm,
    /// Tokens matched literally in text, longest first.
    specials: Vec<u32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
    chat_template: Option<String>,
}

fn strings(g: &Gguf, key: &'static str) -> Result<Option<Vec<String>>, TokenizerError> {
    let Some(v) = g.get(key) else { return Ok(None) };
    let arr = v.as_array().ok_or_else(|| TokenizerError::Bad {
        key,
        what: "expected an array of strings".into(),
    })?;
    arr.iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| TokenizerError::Bad {
                    key,
                    what: format!("expected strings, found {v}"),
                })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn numbers(g: &Gguf, key: &'static str) -> Result<Option<Vec<f64>>, TokenizerError> {
    let Some(v) = g.get(key) else { return Ok(None) };
    let arr = v.as_array().ok_or_else(|| TokenizerError::Bad {
        key,
        what: "expected an array of numbers".into(),
    })?;
    arr.iter()
        .map(|v| {
            v.as_f64().ok_or_else(|| TokenizerError::Bad {
                key,
                what: format!("expected numbers, found {v}"),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

impl Tokenizer {
    pub fn from_gguf(g: &Gguf) -> Result<Self, TokenizerError> {
        let model = match g.get("tokenizer.ggml.model") {
            None => return Err(TokenizerError::Missing("tokenizer.ggml.model")),
            Some(v) => v.as_str().map(str::to_string).ok_or(TokenizerError::Bad {
                key: "tokenizer.ggml.model",
                what: "expected a string".into(),
            })?,
        };
        let tokens = strings(g, "tokenizer.ggml.tokens")?
            .ok_or(TokenizerError::Missing("tokenizer.ggml.tokens"))?;
        if tokens.is_empty() || tokens.len() > u32::MAX as usize / 2 {
            return Err(TokenizerError::Bad {
                key: "tokenizer.ggml.tokens",
                what: format!("{} tokens", tokens.len()),
            });
        }
        let n = tokens.len();
        // The model can produce any row of its embeddings as a token: each
        // must have text (llama.cpp requires the two to agree).
        if let Some(rows) = g
            .tensor("token_embd.weight")
            .and_then(|t| t.shape.get(1).copied())
            && (n as u64) < rows
        {
            return Err(TokenizerError::Bad {
                key: "tokenizer.ggml.tokens",
                what: format!(
                    "{n} tokens, fewer than the {rows} rows of token_embd.weight: the model could produce ids with no text; the file is inconsistent (re-convert it)"
                ),
            });
        }
        let kinds: Vec<TokenKind> = match numbers(g, "tokenizer.ggml.token_type")? {
            None => vec![TokenKind::Normal; n],
            Some(t) if t.len() == n => t.iter().map(|&v| TokenKind::from_i64(v as i64)).collect(),
            Some(t) => {
                return Err(TokenizerError::Bad {
                    key: "tokenizer.ggml.token_type",
                    what: format!("{} entries for {n} tokens", t.len()),
                });
            }
        };
        let mut ids = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            // On duplicates the first id wins.
            ids.entry(t.clone()).or_insert(i as u32);
        }
        let id_key = |key: &'static str| -> Result<Option<u32>, TokenizerError> {
            match g.get(key) {
                None => Ok(None),
                Some(v) => match v.as_i64() {
                    Some(-1) => Ok(None),
                    Some(id) if id >= 0 && (id as usize) < n => Ok(Some(id as u32)),
                    _ => Err(TokenizerError::Bad {
                        key,
                        what: format!("{v} is not a token id (vocabulary has {n} tokens)"),
                    }),
                },
            }
        };
        let flag = |key: &'static str| -> Result<Option<bool>, TokenizerError> {
            match g.get(key) {
                None => Ok(None),
                Some(Value::Bool(b)) => Ok(Some(*b)),
                Some(v) => Err(TokenizerError::Bad {
                    key,
                    what: format!("expected a bool, found {v}"),
                }),
            }
        };
        let pre = match g.get("tokenizer.ggml.pre") {
            Some(v) => v.as_str().unwrap_or("default").to_string(),
            None => "default".to_string(),
        };

        let (algorithm, default_add_bos, default_space_prefix) = match model.as_str() {
            "gpt2" => {
                let merges = strings(g, "tokenizer.ggml.merges")?
                    .ok_or(TokenizerError::Missing("tokenizer.ggml.merges"))?;
                let regexes = bpe::pre_tokenizer_regexes(&pre)
                    .ok_or_else(|| TokenizerError::UnsupportedPre(pre.clone()))?;
                let llama3 = matches!(
                    pre.as_str(),
                    "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral"
                );
                let b = bpe::Bpe::new(regexes, &merges, llama3).map_err(|what| {
                    TokenizerError::Bad {
                        key: "tokenizer.ggml.merges",
                        what,
                    }
                })?;
                (Algorithm::Bpe(b), llama3, false)
            }
            "llama" => {
                let scores = match numbers(g, "tokenizer.ggml.scores")? {
                    Some(s) if s.len() == n => s.iter().map(|&v| v as f32).collect(),
                    Some(s) => {
                        return Err(TokenizerError::Bad {
                            key: "tokenizer.ggml.scores",
                            what: format!("{} scores for {n} tokens", s.len()),
                        });
                    }
                    None => return Err(TokenizerError::Missing("tokenizer.ggml.scores")),
                };
                let mut byte_tokens = Box::new([None; 256]);
                for (b, slot) in byte_tokens.iter_mut().enumerate() {
                    *slot = ids.get(&format!("<0x{b:02X}>")).copied();
                }
                (
                    Algorithm::Spm {
                        scores,
                        byte_tokens,
                    },
                    true,
                    true,
                )
            }
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        };

        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                matches!(
                    kinds[i as usize],
                    TokenKind::Control | TokenKind::UserDefined | TokenKind::Unknown
                ) && !tokens[i as usize].is_empty()
            })
            .collect();
        specials.sort_by(|&a, &b| {
            tokens[b as usize]
                .len()
                .cmp(&tokens[a as usize].len())
                .then(a.cmp(&b))
        });

        let eos = id_key("tokenizer.ggml.eos_token_id")?;
        let eot = id_key("tokenizer.ggml.eot_token_id")?.or_else(|| {
            [
                "<|eot_id|>",
                "<|im_end|>",
                "<|end|>",
                "<end_of_turn>",
                "<|endoftext|>",
            ]
            .iter()
            .find_map(|t| ids.get(*t).copied())
        });
        Ok(Tokenizer {
            bos: id_key("tokenizer.ggml.bos_token_id")?,
            eos,
            eot,
            unk: id_key("tokenizer.ggml.unknown_token_id")?,
            pad: id_key("tokenizer.ggml.padding_token_id")?,
            add_bos: flag("tokenizer.ggml.add_bos_token")?.unwrap_or(default_add_bos),
            add_eos: flag("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix")?
                .unwrap_or(default_space_prefix),
            chat_template: g
                .get("tokenizer.chat_template")
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .or_else(|| builtin_template(g.architecture().ok()?).map(str::to_string)),
            model,
            pre,
            tokens,
            kinds,
            ids,
            algorithm,
            specials,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// `gpt2` or `llama`.
    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn pre(&self) -> &str {
        &self.pre
    }

    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    pub fn token_kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// Can every byte of `text` be represented by this vocabulary? (Byte-level
    /// vocabularies normally cover all 256 bytes; a few omit some control bytes.)
    pub fn covers_bytes(&self, text: &str) -> bool {
        match self.algorithm {
            Algorithm::Bpe(_) => text
                .bytes()
                .all(|b| self.ids.contains_key(&bpe::bytes_to_token_text(&[b]))),
            Algorithm::Spm {
                ref byte_tokens, ..
            } => text.bytes().all(|b| byte_tokens[b as usize].is_some()),
        }
    }

    pub fn special_tokens(&self) -> impl Iterator<Item = (u32, &str)> {
        self.specials
            .iter()
            .map(|&i| (i, self.tokens[i as usize].as_str()))
    }

    /// The file's chat template, or for an architecture with one known
    /// format (gemma3: its official template) that one where the file has none.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Is this an end-of-generation token (EOS, EOT)?
    pub fn is_eog(&self, id: u32) -> bool {
        Some(id) == self.eos || Some(id) == self.eot
    }

    /// Tokenize a prompt rendered by the chat template: control tokens in
    /// it are parsed, and BOS is added as the model asks unless the template
    /// wrote it already (gemma's does), as the reference renderers tokenize
    /// a rendered conversation (no second BOS).
    pub fn encode_chat(&self, rendered: &str) -> Vec<u32> {
        self.encode_chat_protected(rendered, &[])
    }

    /// `encode_chat`, with the byte ranges `text_only` of `rendered` (the
    /// messages' content) tokenized as text: a control token's text inside
    /// them stays text, as OpenAI's API treats message content.
    pub fn encode_chat_protected(&self, rendered: &str, text_only: &[Range<usize>]) -> Vec<u32> {
        let mut ids = self.encode_protected(rendered, true, true, text_only);
        if let Some(bos) = self.bos
            && ids.len() >= 2
            && ids[0] == bos
            && ids[1] == bos
            && self.add_bos
        {
            ids.remove(0);
        }
        ids
    }

    /// Tokenize `text`. `add_special` adds BOS/EOS as the model asks;
    /// `parse_special` recognises control tokens written in the text (user-defined
    /// tokens are always recognised, as in llama.cpp).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        self.encode_protected(text, add_special, parse_special, &[])
    }

    /// Control tokens found in `text` (byte ranges of control tokens' text).
    pub fn control_tokens_in(&self, text: &str) -> Vec<&str> {
        self.specials
            .iter()
            .filter(|&&id| {
                matches!(
                    self.kinds[id as usize],
                    TokenKind::Control | TokenKind::Unknown
                )
            })
            .map(|&id| self.tokens[id as usize].as_str())
            .filter(|pat| !pat.is_empty() && text.contains(pat))
            .collect()
    }

    /// `encode`, where control tokens are not parsed inside `text_only` (byte
    /// ranges of `text`, sorted); everything else is tokenized exactly as
    /// `encode` would.
    fn encode_protected(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
        text_only: &[Range<usize>],
    ) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special
            && self.add_bos
            && let Some(bos) = self.bos
        {
            out.push(bos);
        }
        let fragments = self.partition(text, parse_special, text_only);
        match &self.algorithm {
            Algorithm::Bpe(b) => {
                for f in fragments {
                    match f {
                        Fragment::Token(id) => out.push(id),
                        Fragment::Text(t) => self.encode_bpe(b, t, &mut out),
                    }
                }
            }
            Algorithm::Spm { .. } => {
                // A space is prefixed to the first text and to text after a special token.
                let mut after_special = true;
                for f in fragments {
                    match f {
                        Fragment::Token(id) => {
                            out.push(id);
                            after_special = true;
                        }
                        Fragment::Text(t) => {
                            let mut s = String::with_capacity(t.len() + 3);
                            if self.add_space_prefix && after_special {
                                s.push(' ');
                            }
                            s.push_str(t);
                            let s = s.replace(' ', "\u{2581}");
                            spm::tokenize(self, &s, &mut out);
                            after_special = false;
                        }
                    }
                }
            }
        }
        if add_special
            && self.add_eos
            && let Some(eos) = self.eos
        {
            out.push(eos);
        }
        out
    }

    fn encode_bpe(&self, b: &bpe::Bpe, text: &str, out: &mut Vec<u32>) {
        let exists = |t: &str| self.ids.contains_key(t);
        for word in b.pre_tokenize(text) {
            let encoded = bpe::bytes_to_token_text(word.as_bytes());
            b.merge_word(&encoded, &exists, &mut |piece| match self.ids.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    // Not in the vocabulary (some vocabularies lack tokens for a few
                    // control bytes). llama.cpp then looks up each byte of the piece's
                    // text as a token and drops what it cannot find; do the same.
                    for &byte in piece.as_bytes() {
                        let one = [byte];
                        if let Some(&id) =
                            std::str::from_utf8(&one).ok().and_then(|s| self.ids.get(s))
                        {
                            out.push(id);
                        }
                    }
                }
            });
        }
    }

    /// Split text around special tokens: each special token (longest first)
    /// splits every text fragment at each of its occurrences.
    /// Control tokens are not split out where they overlap `text_only` (byte
    /// ranges of `text`).
    fn partition<'t>(
        &self,
        text: &'t str,
        parse_special: bool,
        text_only: &[Range<usize>],
    ) -> Vec<Fragment<'t>> {
        let mut frags = vec![Fragment::Text(text)];
        if text.is_empty() {
            return Vec::new();
        }
        for &id in &self.specials {
            let kind = self.kinds[id as usize];
            if !parse_special && matches!(kind, TokenKind::Control | TokenKind::Unknown) {
                continue;
            }
            let pat = self.tokens[id as usize].as_str();
            if !frags
                .iter()
                .any(|f| matches!(f, Fragment::Text(t) if t.contains(pat)))
            {
                continue;
            }
            let control = matches!(kind, TokenKind::Control | TokenKind::Unknown);
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                match f {
                    Fragment::Text(t) => {
                        // Where `t` starts in `text` (fragments are slices of it).
                        let base = t.as_ptr() as usize - text.as_ptr() as usize;
                        let mut rest = 0; // start of what is not pushed yet
                        for (pos, _) in t.match_indices(pat) {
                            let at = base + pos..base + pos + pat.len();
                            if pos < rest
                                || (control
                                    && text_only
                                        .iter()
                                        .any(|r| r.start < at.end && at.start < r.end))
                            {
                                continue;
                            }
                            if pos > rest {
                                next.push(Fragment::Text(&t[rest..pos]));
                            }
                            next.push(Fragment::Token(id));
                            rest = pos + pat.len();
                        }
                        if rest < t.len() {
                            next.push(Fragment::Text(&t[rest..]));
                        }
                    }
                    tok => next.push(tok),
                }
            }
            frags = next;
        }
        frags
    }

    /// The bytes a token stands for. Control tokens render as their text only
    /// when `special` is set.
    pub fn token_bytes(
        &self,
        id: u32,
        special: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), TokenizerError> {
        let text = self
            .tokens
            .get(id as usize)
            .ok_or(TokenizerError::BadId(id))?;
        match self.kinds[id as usize] {
            TokenKind::Control | TokenKind::Unknown | TokenKind::Unused => {
                if special {
                    out.extend_from_slice(text.as_bytes());
                }
            }
            TokenKind::UserDefined => out.extend_from_slice(text.as_bytes()),
            TokenKind::Byte => match parse_byte_token(text) {
                Some(b) => out.push(b),
                None => out.extend_from_slice(text.as_bytes()),
            },
            TokenKind::Normal => match self.algorithm {
                Algorithm::Bpe(_) => bpe::token_text_to_bytes(text, out),
                Algorithm::Spm { .. } => {
                    out.extend_from_slice(text.replace('\u{2581}', " ").as_bytes())
                }
            },
        }
        Ok(())
    }

    /// Decode ids to text (invalid UTF-8 is replaced).
    pub fn decode(&self, ids: &[u32], special: bool) -> Result<String, TokenizerError> {
        let mut bytes = Vec::new();
        for &id in ids {
            self.token_bytes(id, special, &mut bytes)?;
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A decoder for generated tokens that never emits half a UTF-8 character.
    pub fn stream_decoder(&self, special: bool) -> StreamDecoder<'_> {
        StreamDecoder {
            tokenizer: self,
            pending: Vec::new(),
            special,
        }
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("model", &self.model)
            .field("pre", &self.pre)
            .field("vocab_size", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

impl spm::SpmVocab for Tokenizer {
    fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }
    fn score(&self, id: u32) -> f32 {
        match &self.algorithm {
            Algorithm::Spm { scores, .. } => scores[id as usize],
            Algorithm::Bpe(_) => 0.0,
        }
    }
    fn byte_token(&self, byte: u8) -> Option<u32> {
        match &self.algorithm {
            Algorithm::Spm { byte_tokens, .. } => byte_tokens[byte as usize],
            Algorithm::Bpe(_) => None,
        }
    }
    fn unk(&self) -> Option<u32> {
        self.unk
    }
}

enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

/// Turns a stream of token ids into text, holding back the bytes of an
/// incomplete UTF-8 character until the token that completes it arrives.
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    pending: Vec<u8>,
    special: bool,
}

impl StreamDecoder<'_> {
    /// Add a token; returns the text that is now complete (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        self.tokenizer
            .token_bytes(id, self.special, &mut self.pending)?;
        Ok(self.take_complete())
    }

    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).expect("checked"));
                    match e.error_len() {
                        // An incomplete character at the end: keep it for later.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // Bytes that can never become valid: replace them.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Flush what is left at the end of generation.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

/// The chat template of an architecture whose files may ship without one.
fn builtin_template(arch: &str) -> Option<&'static str> {
    match arch {
        "gemma3" => Some(include_str!("templates/gemma3.jinja")),
        _ => None,
    }
}
