//! A structured fuzzer of GGUF headers, on stable Rust, run for a fixed short
//! time by CI (issue #27): real headers (small models with the real models'
//! vocabularies, several architectures and weight types) whose fields are
//! found by walking the format, then mutated where hostile files differ —
//! counts, string and array lengths, dimensions, tensor types and offsets,
//! metadata types and values (alignment, context length, RoPE base, epsilon,
//! head counts, ...), random bytes, truncation. Each mutant is opened, its
//! model configured, its tokenizer built, loaded on the CPU and run for two
//! tokens: any of these may fail with an error, none may panic or hang.
//!
//! `FERRY_FUZZ_SECS` (default 15) sets the time, `FERRY_FUZZ_SEED` the seed
//! (a failure prints both); the long run is documented in README.md.

mod common;

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use ferry::backend::cpu::CpuBackend;
use ferry::engine::Session;
use ferry::gguf::{Gguf, GgufFile};
use ferry::model::Model;
use ferry::quant::GgmlType;
use ferry::tokenizer::Tokenizer;

/// What a field of the header is, for choosing its mutations.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Count,
    Length,
    ValueType,
    Value(u32),
    Dims,
    Dim,
    TensorType,
    Offset,
}

#[derive(Debug, Clone)]
struct Field {
    at: usize,
    size: usize,
    kind: Kind,
    what: String,
}

struct Walker<'a> {
    b: &'a [u8],
    at: usize,
    fields: Vec<Field>,
}

impl Walker<'_> {
    fn take(&mut self, size: usize, kind: Kind, what: &str) -> u64 {
        let v = match size {
            1 => self.b[self.at] as u64,
            2 => u16::from_le_bytes(self.b[self.at..self.at + 2].try_into().unwrap()) as u64,
            4 => u32::from_le_bytes(self.b[self.at..self.at + 4].try_into().unwrap()) as u64,
            _ => u64::from_le_bytes(self.b[self.at..self.at + 8].try_into().unwrap()),
        };
        self.fields.push(Field {
            at: self.at,
            size,
            kind,
            what: what.to_string(),
        });
        self.at += size;
        v
    }

    fn string(&mut self, what: &str) -> String {
        let n = self.take(8, Kind::Length, what) as usize;
        let s = String::from_utf8_lossy(&self.b[self.at..self.at + n]).into_owned();
        self.at += n;
        s
    }

    fn value(&mut self, ty: u32, key: &str, record: bool) {
        let size = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => {
                self.string(key);
                return;
            }
            9 => {
                let et = self.take(4, Kind::ValueType, key) as u32;
                let n = self.take(8, Kind::Count, key);
                for i in 0..n {
                    // The first elements are fields; the rest are skipped over.
                    self.value(et, key, record && i < 4);
                }
                return;
            }
            _ => panic!("the base file has a value of type {ty}"),
        };
        if record {
            self.take(size, Kind::Value(ty), key);
        } else {
            self.at += size;
        }
    }

    /// The header's fields, up to the end of the tensor infos.
    fn walk(b: &[u8]) -> Vec<Field> {
        let mut w = Walker {
            b,
            at: 4,
            fields: vec![],
        };
        w.take(4, Kind::Count, "version");
        let n_tensors = w.take(8, Kind::Count, "tensor count");
        let n_kv = w.take(8, Kind::Count, "metadata count");
        for _ in 0..n_kv {
            let key = w.string("key");
            let ty = w.take(4, Kind::ValueType, &key) as u32;
            w.value(ty, &key, true);
        }
        for _ in 0..n_tensors {
            let name = w.string("tensor name");
            let n = w.take(4, Kind::Dims, &name);
            for _ in 0..n {
                w.take(8, Kind::Dim, &name);
            }
            w.take(4, Kind::TensorType, &name);
            w.take(8, Kind::Offset, &name);
        }
        w.fields
    }
}

/// xorshift64*: reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn read(b: &[u8], f: &Field) -> u64 {
    let mut v = [0u8; 8];
    v[..f.size].copy_from_slice(&b[f.at..f.at + f.size]);
    u64::from_le_bytes(v)
}

fn write(b: &mut [u8], f: &Field, v: u64) {
    b[f.at..f.at + f.size].copy_from_slice(&v.to_le_bytes()[..f.size]);
}

/// A hostile value for `f` (whose current value is `old`).
fn mutate_value(r: &mut Rng, f: &Field, old: u64) -> u64 {
    let max = if f.size == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * f.size)) - 1
    };
    if let Kind::Value(6) = f.kind {
        let pick = [
            f32::NAN,
            f32::INFINITY,
            -1.0,
            0.0,
            1e30,
            -0.0,
            f32::MIN_POSITIVE,
        ];
        return pick[r.below(pick.len())].to_bits() as u64;
    }
    if let Kind::Value(12) = f.kind {
        let pick = [f64::NAN, f64::INFINITY, -1.0, 0.0, 1e300];
        return pick[r.below(pick.len())].to_bits();
    }
    match f.kind {
        Kind::ValueType => return r.below(16) as u64,
        Kind::TensorType => return [0, 1, 2, 4, 16, 20, 39, 41, 255, 0xFFFF_FFFF][r.below(10)],
        _ => {}
    }
    let pick = [
        0,
        1,
        2,
        3,
        max,
        max - 1,
        old.wrapping_add(1),
        old.wrapping_sub(1),
        old.wrapping_mul(2),
        old / 2,
        1 << 31,
        (1 << 32) & max,
        r.next() & max,
        old ^ (1 << r.below(8 * f.size)),
    ];
    pick[r.below(pick.len())] & max
}

/// Everything a user's command does with a file, on the CPU, up to two tokens.
fn exercise(bytes: Vec<u8>) -> Result<(), String> {
    let f = GgufFile::from_bytes("fuzz.gguf", bytes.clone()).map_err(|e| e.to_string())?;
    for t in &f.header.tensors {
        assert!(
            t.file_offset + t.n_bytes <= bytes.len() as u64,
            "tensor {} outside the file",
            t.name
        );
    }
    let g = Gguf::from_files(vec![f]).map_err(|e| e.to_string())?;
    let _ = ferry::inspect::summarize(&g);
    let tok = Tokenizer::from_gguf(&g).map_err(|e| e.to_string());
    if let Ok(tok) = &tok {
        let ids = tok.encode("Hello <|im_end|> wörld", true, true);
        let _ = tok.decode(&ids, true);
    }
    let b = CpuBackend::new(1);
    let m = Model::load(&b, &g, |_, _| {}).map_err(|e| e.to_string())?;
    let mut s = Session::new(&b, &m, 16, 1).map_err(|e| e.to_string())?;
    let logits = s.prefill(0, &[1, 2]).map_err(|e| e.to_string())?;
    let _ = logits.iter().sum::<f32>();
    Ok(())
}

fn base_files(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (preset, vocab, ty) in [
        ("llama-1b", "smollm2", GgmlType::Q4_0),
        ("qwen3-0.6b", "qwen05", GgmlType::Q5_K),
        ("gemma3-270m", "gemma3", GgmlType::Q8_0),
    ] {
        let mut spec = ferry::synth::TinySpec::preset(preset, ty).unwrap();
        spec.n_layers = 1;
        spec.d_model = 256;
        spec.d_ff = 512;
        spec.n_heads = 4;
        spec.n_kv_heads = 2;
        spec.head_dim = Some(64);
        let v = Gguf::open(common::model(vocab)).unwrap();
        let p = dir.join(format!("{preset}.gguf"));
        ferry::synth::write_random_model(&p, &spec, Some(&v)).unwrap();
        out.push(std::fs::read(&p).unwrap());
    }
    out
}

#[test]
fn mutated_headers_give_errors_never_panics() {
    let secs: u64 = std::env::var("FERRY_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let seed: u64 = std::env::var("FERRY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    let dir = std::env::temp_dir().join(format!("ferry-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bases = base_files(&dir);
    let walked: Vec<Vec<Field>> = bases.iter().map(|b| Walker::walk(b)).collect();
    // The unmutated files run.
    for b in &bases {
        exercise(b.clone()).unwrap();
    }
    let mut r = Rng(seed);
    let t0 = Instant::now();
    let (mut runs, mut errors) = (0, 0);
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failure = None;
    while t0.elapsed() < Duration::from_secs(secs) {
        let i = r.below(bases.len());
        let mut b = bases[i].clone();
        let fields = &walked[i];
        let mut done = Vec::new();
        for _ in 0..1 + r.below(3) {
            match r.below(10) {
                0 => {
                    let at = r.below(fields.last().map_or(64, |f| f.at + f.size));
                    b[at] ^= 1 << r.below(8);
                    done.push(format!("bit flip at {at}"));
                }
                1 => {
                    let len = r.below(b.len());
                    b.truncate(len);
                    done.push(format!("truncated to {len}"));
                    break;
                }
                _ => {
                    let f = &fields[r.below(fields.len())];
                    let old = read(&b, f);
                    let v = mutate_value(&mut r, f, old);
                    write(&mut b, f, v);
                    done.push(format!(
                        "{:?} of {} at {}: {old} -> {v}",
                        f.kind, f.what, f.at
                    ));
                }
            }
        }
        let start = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| exercise(b)));
        runs += 1;
        let took = start.elapsed();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(_)) => errors += 1,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failure = Some(format!("panic: {msg}\nbase {i}, mutations {done:?}"));
                break;
            }
        }
        if took > Duration::from_secs(10) {
            failure = Some(format!("took {took:?}\nbase {i}, mutations {done:?}"));
            break;
        }
    }
    std::panic::set_hook(quiet);
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(f) = failure {
        panic!("FERRY_FUZZ_SEED={seed}: {f}");
    }
    eprintln!("{runs} mutants in {secs} s ({errors} refused with an error), seed {seed}");
    assert!(runs > 20, "only {runs} mutants ran");
}

/// The tokenizer target of `fuzz/` on stable Rust, for a fixed time: random
/// text (ASCII, accents, CJK, emoji, control bytes, the models' own special
/// tokens' text, spaces and newlines in runs; not U+2581, which
/// SentencePiece vocabularies read as a space, as llama.cpp does) through each real model's
/// tokenizer, with and without special-token parsing: no panic, and the
/// decoded ids give back the text wherever the vocabulary covers its bytes.
#[test]
fn random_text_round_trips_through_every_tokenizer() {
    let secs: u64 = std::env::var("FERRY_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(5, |s: u64| s / 3 + 1);
    let seed: u64 = std::env::var("FERRY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let toks: Vec<Tokenizer> = common::MODELS
        .iter()
        .map(|m| Tokenizer::from_gguf(&Gguf::open(common::model(m)).unwrap()).unwrap())
        .collect();
    let pieces: Vec<String> = toks
        .iter()
        .flat_map(|t| {
            t.special_tokens()
                .map(|(_, s)| s.to_string())
                .take(8)
                .collect::<Vec<_>>()
        })
        .chain(
            [
                " ",
                "  ",
                "\n",
                "\n\n",
                "\t",
                "é",
                "ü",
                "中文",
                "日本語",
                "🦀",
                "👍🏽",
                "\u{0}",
                "\u{7f}",
                "\r\n",
                "'s",
                "123",
                "x",
                "Hello",
                "<",
                "|",
                ">",
                "\u{200b}",
            ]
            .iter()
            .map(|s| s.to_string()),
        )
        .collect();
    let mut r = Rng(seed | 1);
    let t0 = Instant::now();
    let mut runs = 0;
    while t0.elapsed() < Duration::from_secs(secs) {
        let text: String = (0..1 + r.below(24))
            .map(|_| {
                if r.below(3) == 0 {
                    char::from_u32(32 + r.below(0x2FF) as u32)
                        .unwrap_or(' ')
                        .to_string()
                } else {
                    pieces[r.below(pieces.len())].clone()
                }
            })
            .collect();
        for tok in &toks {
            for special in [false, true] {
                let ids = tok.encode(&text, false, special);
                let back = tok.decode(&ids, true).unwrap();
                if tok.covers_bytes(&text) {
                    assert_eq!(back, text, "seed {seed}, special {special}");
                }
            }
        }
        runs += 1;
    }
    assert!(runs > 50, "{runs} texts");
}
