//! Tokenizer behaviour that the two real models do not cover: SentencePiece
//! vocabularies, and hostile or inconsistent tokenizer metadata.

mod common;

use ferry::gguf::{Gguf, Value, ValueType, string_array, write_gguf};
use ferry::tokenizer::Tokenizer;

fn build(name: &str, meta: Vec<(String, Value)>) -> Result<Tokenizer, String> {
    let dir = std::env::temp_dir().join(format!("ferry-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.gguf"));
    write_gguf(&path, &meta, &[]).unwrap();
    let g = Gguf::open(&path).unwrap();
    Tokenizer::from_gguf(&g).map_err(|e| e.to_string())
}

fn spm_meta() -> Vec<(String, Value)> {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0f32, 0.0, 0.0];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    for (t, s) in [
        ("▁", -1.0),
        ("h", -1.0),
        ("e", -1.0),
        ("l", -1.0),
        ("o", -1.0),
        ("▁h", -5.0),
        ("he", -1.5),
        ("ll", -2.0),
        ("llo", -3.0),
        ("▁he", -4.0),
        ("hello", -0.5),
        ("▁w", -6.0),
    ] {
        tokens.push(t.into());
        types.push(1);
        scores.push(s);
    }
    vec![
        ("tokenizer.ggml.model".into(), Value::String("llama".into())),
        ("tokenizer.ggml.tokens".into(), string_array(tokens)),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array(ValueType::F32, scores.into_iter().map(Value::F32).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(ValueType::I32, types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id".into(), Value::U32(0)),
    ]
}

#[test]
fn sentencepiece_merges_by_score_with_byte_fallback() {
    let tok = build("spm", spm_meta()).unwrap();
    assert_eq!(tok.model(), "llama");
    assert!(tok.add_bos && tok.add_space_prefix, "SPM defaults");
    let id = |t: &str| tok.token_id(t).unwrap();
    // "▁hello": he (-1.5) merges first, then ll, then llo, then he+llo = hello
    // (-0.5); "▁he" was queued but is stale by then.
    assert_eq!(
        tok.encode("hello", true, true),
        vec![1, id("▁"), id("hello")]
    );
    // 'é' has no token: its two UTF-8 bytes become byte tokens.
    assert_eq!(
        tok.encode("hé", false, true),
        vec![id("▁h"), id("<0xC3>"), id("<0xA9>")]
    );
    // Control tokens in the text are recognised, and the text after them gets
    // the space prefix again.
    assert_eq!(
        tok.encode("hello</s>hello", false, true),
        vec![id("▁"), id("hello"), 2, id("▁"), id("hello")]
    );
    assert_eq!(
        tok.decode(&tok.encode("hello hé", false, true), false)
            .unwrap(),
        " hello hé"
    );
}

#[test]
fn inconsistent_tokenizer_metadata_is_an_error() {
    let mut m = spm_meta();
    m.retain(|(k, _)| k != "tokenizer.ggml.scores");
    assert!(
        build("noscores", m)
            .unwrap_err()
            .contains("tokenizer.ggml.scores")
    );

    let mut m = spm_meta();
    m.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(999_999)));
    m.dedup_by(|a, b| a.0 == b.0);
    let m: Vec<_> = m
        .into_iter()
        .map(|(k, v)| {
            if k == "tokenizer.ggml.bos_token_id" {
                (k, Value::U32(999_999))
            } else {
                (k, v)
            }
        })
        .collect();
    assert!(build("badbos", m).unwrap_err().contains("999999"));

    let m: Vec<_> = spm_meta()
        .into_iter()
        .map(|(k, v)| {
            if k == "tokenizer.ggml.token_type" {
                (k, Value::Array(ValueType::I32, vec![Value::I32(1)]))
            } else {
                (k, v)
            }
        })
        .collect();
    assert!(build("badtypes", m).unwrap_err().contains("1 entries"));

    let m: Vec<_> = spm_meta()
        .into_iter()
        .map(|(k, v)| {
            if k == "tokenizer.ggml.model" {
                (k, Value::String("rwkv".into()))
            } else {
                (k, v)
            }
        })
        .collect();
    assert!(build("rwkv", m).unwrap_err().contains("rwkv"));

    let bpe = |pre: &str, merges: Vec<&str>| {
        vec![
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
            (
                "tokenizer.ggml.tokens".into(),
                string_array(["a", "b", "ab"]),
            ),
            ("tokenizer.ggml.merges".into(), string_array(merges)),
        ]
    };
    assert!(build("bpe-ok", bpe("default", vec!["a b"])).is_ok());
    assert!(
        build("bpe-pre", bpe("no-such-pre", vec!["a b"]))
            .unwrap_err()
            .contains("no-such-pre")
    );
    assert!(
        build("bpe-merge", bpe("default", vec!["ab"]))
            .unwrap_err()
            .contains("merge 0")
    );
    assert!(
        build("none", vec![])
            .unwrap_err()
            .contains("tokenizer.ggml.model")
    );
}

#[test]
fn bpe_tokenizes_with_a_tiny_vocabulary() {
    let meta = vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("default".into())),
        (
            "tokenizer.ggml.tokens".into(),
            string_array(["a", "b", "c", "ab", "abc", "Ġ", "Ġa"]),
        ),
        (
            "tokenizer.ggml.merges".into(),
            string_array(["a b", "ab c", "Ġ a"]),
        ),
    ];
    let tok = build("tiny", meta).unwrap();
    // "abc ab": pre-tokens "abc" and " ab". In "Ġab" the merge "a b" (rank 0)
    // wins over "Ġ a" (rank 2), so it ends as Ġ | ab.
    assert_eq!(tok.encode("abc ab", true, true), vec![4, 5, 3]);
    assert_eq!(tok.decode(&[4, 5, 3], false).unwrap(), "abc ab");
    // "Ġa" alone merges: " a" → Ġa.
    assert_eq!(tok.encode(" a", true, true), vec![6]);
}
