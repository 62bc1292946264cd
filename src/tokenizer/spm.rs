//! SentencePiece-style BPE (`tokenizer.ggml.model = llama`): characters are
//! merged greedily by the score of the merged token, highest first; pieces with
//! no token fall back to `<0xXX>` byte tokens.

use std::collections::BinaryHeap;

use super::Symbol;

#[derive(PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl Eq for Bigram {}
impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Highest score first; on ties the leftmost.
        self.score
            .total_cmp(&other.score)
            .then(other.left.cmp(&self.left))
    }
}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Vocabulary access the SPM algorithm needs.
pub trait SpmVocab {
    fn token_id(&self, text: &str) -> Option<u32>;
    fn score(&self, id: u32) -> f32;
    fn byte_token(&self, byte: u8) -> Option<u32>;
    fn unk(&self) -> Option<u32>;
}

/// Tokenize `text` (spaces already replaced by U+2581), appending ids to `out`.
pub fn tokenize(vocab: &dyn SpmVocab, text: &str, out: &mut Vec<u32>) {
    let mut symbols = super::char_symbols(text);
    let mut heap = BinaryHeap::new();
    let try_add = |heap: &mut BinaryHeap<Bigram>, symbols: &[Symbol], left: isize, right: isize| {
        if left < 0 || right < 0 {
            return;
        }
        let (l, r) = (symbols[left as usize], symbols[right as usize]);
        let piece = &text[l.start..l.start + l.len + r.len];
        if let Some(id) = vocab.token_id(piece) {
            heap.push(Bigram {
                score: vocab.score(id),
                left: left as usize,
                right: right as usize,
                len: piece.len(),
            });
        }
    };
    for i in 1..symbols.len() {
        try_add(&mut heap, &symbols, i as isize - 1, i as isize);
    }
    while let Some(b) = heap.pop() {
        let (l, r) = (symbols[b.left], symbols[b.right]);
        if l.len == 0 || r.len == 0 || l.len + r.len != b.len {
            continue;
        }
        symbols[b.left].len += r.len;
        symbols[b.right].len = 0;
        symbols[b.left].next = r.next;
        if r.next >= 0 {
            symbols[r.next as usize].prev = b.left as isize;
        }
        let (prev, next) = (symbols[b.left].prev, symbols[b.left].next);
        try_add(&mut heap, &symbols, prev, b.left as isize);
        try_add(&mut heap, &symbols, b.left as isize, next);
    }
    // Every merged symbol is a token by construction; single characters without
    // a token fall back to their UTF-8 bytes.
    let mut i = if symbols.is_empty() { -1 } else { 0 };
    while i >= 0 {
        let s = symbols[i as usize];
        let piece = &text[s.start..s.start + s.len];
        match vocab.token_id(piece) {
            Some(id) => out.push(id),
            None => {
                for &b in piece.as_bytes() {
                    if let Some(id) = vocab.byte_token(b).or(vocab.unk()) {
                        out.push(id);
                    }
                }
            }
        }
        i = s.next;
    }
}
