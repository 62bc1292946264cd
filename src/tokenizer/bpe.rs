//! Byte-level BPE (`tokenizer.ggml.model = gpt2`): regex pre-tokenization, the
//! GPT-2 byte-to-unicode mapping, and rank-ordered merges.

use std::collections::{BinaryHeap, HashMap};

use super::Symbol;
use std::sync::OnceLock;

use fancy_regex::Regex;

/// The pre-tokenizer regexes of each `tokenizer.ggml.pre` value, applied in
/// sequence: every regex splits the pieces the previous one produced, keeping the
/// text between matches as pieces of its own (as llama.cpp does).
pub fn pre_tokenizer_regexes(pre: &str) -> Option<&'static [&'static str]> {
    const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
    const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "dbrx" | "smaug-bpe"
        | "chatglm-bpe" => &[LLAMA3],
        "qwen2" | "stablelm2" | "deepseek-r1-qwen" | "hunyuan" => &[QWEN2],
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            &[r"\p{N}", GPT2]
        }
        "gpt-2" | "gpt2" | "phi-2" | "jina-es" | "jina-de" | "mpt" | "olmo" | "jais"
        | "trillion" => &[GPT2],
        "falcon" => &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"],
        "default" => &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
        _ => return None,
    })
}

/// GPT-2's reversible byte → printable character mapping.
fn byte_to_char_table() -> &'static [char; 256] {
    static TABLE: OnceLock<[char; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = ['\0'; 256];
        let mut extra = 0u32;
        for b in 0..256u32 {
            let printable = (0x21..=0x7e).contains(&b)
                || (0xa1..=0xac).contains(&b)
                || (0xae..=0xff).contains(&b);
            t[b as usize] = if printable {
                char::from_u32(b).unwrap()
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap()
            };
        }
        t
    })
}

fn char_to_byte_table() -> &'static HashMap<char, u8> {
    static TABLE: OnceLock<HashMap<char, u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        byte_to_char_table()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect()
    })
}

/// Encode raw bytes into their byte-level token text.
pub fn bytes_to_token_text(bytes: &[u8]) -> String {
    let t = byte_to_char_table();
    bytes.iter().map(|&b| t[b as usize]).collect()
}

/// Decode byte-level token text back to bytes. Characters outside the mapping
/// (which real vocabularies do not contain) are passed through as UTF-8.
pub fn token_text_to_bytes(text: &str, out: &mut Vec<u8>) {
    let t = char_to_byte_table();
    for c in text.chars() {
        match t.get(&c) {
            Some(&b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

pub struct Bpe {
    regexes: Vec<Regex>,
    /// "left right" → merge rank (lower merges first).
    ranks: HashMap<String, u32>,
    /// Use a whole pre-token directly when it is in the vocabulary (llama3).
    ignore_merges: bool,
}

/// A candidate merge of symbol `left` with the one after it; the heap pops the
/// lowest rank first, and on ties the leftmost.
#[derive(PartialEq, Eq)]
struct Bigram {
    rank: u32,
    left: usize,
    /// Byte length of the merged text when the bigram was queued, to detect stale entries.
    len: usize,
}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.rank.cmp(&self.rank).then(other.left.cmp(&self.left))
    }
}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Bpe {
    pub fn new(
        pre_regexes: &[&str],
        merges: &[String],
        ignore_merges: bool,
    ) -> Result<Self, String> {
        let regexes = pre_regexes
            .iter()
            .map(|r| Regex::new(r).map_err(|e| format!("pre-tokenizer regex {r:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ranks = HashMap::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            if m.split_once(' ').is_none() {
                return Err(format!(
                    "merge {i} ({m:?}) is not two tokens separated by a space"
                ));
            }
            ranks.entry(m.clone()).or_insert(i as u32);
        }
        Ok(Bpe {
            regexes,
            ranks,
            ignore_merges,
        })
    }

    /// Split text into pre-tokens (byte offsets into `text`).
    pub fn pre_tokenize<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut pieces = vec![text];
        for re in &self.regexes {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for piece in pieces {
                let mut last = 0;
                let mut pos = 0;
                while pos <= piece.len() {
                    let m = match re.find_from_pos(piece, pos) {
                        Ok(Some(m)) => m,
                        // A backtracking limit hit on hostile input: keep the rest whole.
                        Ok(None) | Err(_) => break,
                    };
                    if m.start() == m.end() {
                        // Empty matches split nothing; step over one character.
                        pos = m.end() + piece[m.end()..].chars().next().map_or(1, char::len_utf8);
                        continue;
                    }
                    if m.start() > last {
                        next.push(&piece[last..m.start()]);
                    }
                    next.push(m.as_str());
                    last = m.end();
                    pos = m.end();
                }
                if last < piece.len() {
                    next.push(&piece[last..]);
                }
            }
            pieces = next;
        }
        pieces
    }

    /// Tokenize one pre-token, already in byte-level form, calling `emit` with
    /// the text of each resulting symbol.
    pub fn merge_word(
        &self,
        word: &str,
        token_exists: &dyn Fn(&str) -> bool,
        emit: &mut dyn FnMut(&str),
    ) {
        if self.ignore_merges && token_exists(word) {
            emit(word);
            return;
        }
        let mut symbols = super::char_symbols(word);
        let mut heap = BinaryHeap::new();
        let mut key = String::new();
        let mut push = |heap: &mut BinaryHeap<Bigram>, symbols: &[Symbol], left: isize| {
            if left < 0 {
                return;
            }
            let l = symbols[left as usize];
            if l.next < 0 {
                return;
            }
            let r = symbols[l.next as usize];
            key.clear();
            key.push_str(&word[l.start..l.start + l.len]);
            key.push(' ');
            key.push_str(&word[r.start..r.start + r.len]);
            if let Some(&rank) = self.ranks.get(key.as_str()) {
                heap.push(Bigram {
                    rank,
                    left: left as usize,
                    len: l.len + r.len,
                });
            }
        };
        for i in 0..symbols.len().saturating_sub(1) {
            push(&mut heap, &symbols, i as isize);
        }
        while let Some(b) = heap.pop() {
            let l = symbols[b.left];
            if l.len == 0 || l.next < 0 {
                continue;
            }
            let r = symbols[l.next as usize];
            if l.len + r.len != b.len {
                continue; // one side changed since this bigram was queued
            }
            let right_index = l.next as usize;
            symbols[b.left].len += r.len;
            symbols[b.left].next = r.next;
            symbols[right_index].len = 0;
            if r.next >= 0 {
                symbols[r.next as usize].prev = b.left as isize;
            }
            push(&mut heap, &symbols, symbols[b.left].prev);
            push(&mut heap, &symbols, b.left as isize);
        }
        let mut i = if symbols.is_empty() { -1 } else { 0 };
        while i >= 0 {
            let s = symbols[i as usize];
            emit(&word[s.start..s.start + s.len]);
            i = s.next;
        }
    }
}
