//! Tokenize arbitrary text with both real models' tokenizers (and decode the
//! result): no panics, and decode(encode(text)) == text for valid UTF-8 whose
//! bytes the vocabulary covers (SmolLM2's lacks a few control bytes, which
//! llama.cpp drops, and so do we).
#![no_main]

use std::sync::OnceLock;

use ferry::gguf::Gguf;
use ferry::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fn tokenizers() -> &'static Vec<Tokenizer> {
    static T: OnceLock<Vec<Tokenizer>> = OnceLock::new();
    T.get_or_init(|| {
        let dir = std::env::var("FERRY_MODELS").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../models").into());
        ["smollm2-135m-instruct-q4_1.gguf", "qwen2.5-coder-0.5b-instruct.gguf"]
            .iter()
            .map(|f| {
                let g = Gguf::open(format!("{dir}/{f}")).expect("run scripts/fetch_models.py first");
                Tokenizer::from_gguf(&g).expect("tokenizer")
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for tok in tokenizers() {
        for special in [false, true] {
            let ids = tok.encode(text, false, special);
            let back = tok.decode(&ids, true).expect("ids from encode are valid");
            if tok.covers_bytes(text) {
                assert_eq!(back, text);
            }
        }
    }
});
