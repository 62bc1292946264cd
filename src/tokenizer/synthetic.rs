//! A generated tokenizer for synthetic models (`ferry synth` without
//! `--vocab-from`): byte-level BPE as GPT-2 defines it — the 256 byte tokens,
//! merges of pairs of lowercase letters (all 676 where the vocabulary has
//! room), ChatML's special tokens and a ChatML template — padded with unused
//! tokens to the model's vocabulary size.
//! Enough for `ferry run`, `--chat` and `serve` to work on a model of any
//! shape; the text it produces is meaningless, as the weights are random.

use crate::gguf::{Value, ValueType};

/// ChatML, as Qwen2 models use it.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Token types as GGUF stores them.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const UNUSED: i32 = 5;

/// The `tokenizer.*` metadata of a generated vocabulary of `n_vocab` tokens.
/// Errors when `n_vocab` cannot hold the bytes and the specials.
pub fn metadata(n_vocab: usize) -> Result<Vec<(String, Value)>, String> {
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let mut tokens: Vec<String> = (0u8..=255)
        .map(|b| super::bpe::bytes_to_token_text(&[b]))
        .collect();
    let mut types = vec![NORMAL; 256];
    let room = n_vocab.saturating_sub(256 + specials.len());
    let mut merges = Vec::new();
    for (a, b) in (b'a'..=b'z')
        .flat_map(|a| (b'a'..=b'z').map(move |b| (a, b)))
        .take(room)
    {
        merges.push(format!("{} {}", a as char, b as char));
        tokens.push(format!("{}{}", a as char, b as char));
        types.push(NORMAL);
    }
    let first_special = tokens.len();
    for s in specials {
        tokens.push(s.to_string());
        types.push(CONTROL);
    }
    if tokens.len() > n_vocab {
        return Err(format!(
            "a generated tokenizer needs at least {} tokens; the model has {n_vocab}",
            tokens.len()
        ));
    }
    while tokens.len() < n_vocab {
        tokens.push(format!("<|unused_{}|>", tokens.len()));
        types.push(UNUSED);
    }
    let strings = |v: Vec<String>| {
        Value::Array(
            ValueType::String,
            v.into_iter().map(Value::String).collect(),
        )
    };
    let eot = first_special as u32;
    let im_end = (first_special + 2) as u32;
    Ok(vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("default".into())),
        ("tokenizer.ggml.tokens".into(), strings(tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(ValueType::I32, types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), strings(merges)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(eot)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(im_end)),
        ("tokenizer.ggml.padding_token_id".into(), Value::U32(eot)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        (
            "tokenizer.chat_template".into(),
            Value::String(CHATML_TEMPLATE.into()),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{Gguf, GgufWriter};

    fn tokenizer(n_vocab: usize) -> crate::tokenizer::Tokenizer {
        let mut w = GgufWriter::new();
        w.set_str("general.architecture", "llama");
        for (k, v) in metadata(n_vocab).unwrap() {
            w.set(k, v);
        }
        let path = std::env::temp_dir().join(format!(
            "ferry-synthetic-tok-{}-{n_vocab}.gguf",
            std::process::id()
        ));
        let file = std::fs::File::create(&path).unwrap();
        w.write_header(std::io::BufWriter::new(file))
            .unwrap()
            .finish()
            .unwrap();
        let g = Gguf::open(&path).unwrap();
        let tok = crate::tokenizer::Tokenizer::from_gguf(&g).unwrap();
        drop(g);
        let _ = std::fs::remove_file(&path);
        tok
    }

    #[test]
    fn generated_vocabularies_round_trip_text_and_know_their_specials() {
        for n_vocab in [512, 152064] {
            let tok = tokenizer(n_vocab);
            assert_eq!(tok.vocab_size(), n_vocab);
            for text in ["hello world", "Grüße, 世界! 123 <tag>", "\t\n  spaces"] {
                let ids = tok.encode(text, false, false);
                assert_eq!(tok.decode(&ids, false).unwrap(), text, "{n_vocab}");
            }
            // Merged letter pairs make "ab" one token where the vocabulary has them.
            assert_eq!(tok.encode("ab", false, false).len(), 1);
            let im_end = tok.token_id("<|im_end|>").unwrap();
            assert!(tok.is_eog(im_end));
            let chat = tok.encode("<|im_start|>user\nhi<|im_end|>", false, true);
            assert_eq!(chat[0], tok.token_id("<|im_start|>").unwrap());
            assert_eq!(*chat.last().unwrap(), im_end);
        }
        assert!(metadata(100).is_err());
    }
}
