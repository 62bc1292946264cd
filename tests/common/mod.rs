//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests").join("fixtures").join(rel)
}

pub fn read_fixture(rel: &str) -> Vec<u8> {
    let p = fixture(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The real models, fetched by `scripts/fetch_models.py` (CI runs it first).
/// Tests that need them fail loudly when they are missing rather than skip, so
/// that a CI run can never pass without having checked them.
pub fn model(name: &str) -> PathBuf {
    let file = match name {
        "smollm2" => "smollm2-135m-instruct-q4_1.gguf",
        "qwen05" => "qwen2.5-coder-0.5b-instruct.gguf",
        "gemma3" => "gemma-3-270m-q4_k_m.gguf",
        _ => panic!("unknown model {name}"),
    };
    PathBuf::from(model_file(file))
}

/// A real model's path by its file name (models/ or $FERRY_MODELS), checked.
pub fn model_file(file: &str) -> String {
    let dir = std::env::var_os("FERRY_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models"));
    let p = dir.join(file);
    assert!(
        Path::new(&p).exists(),
        "{} is missing: run `python3 scripts/fetch_models.py` first",
        p.display()
    );
    p.display().to_string()
}

pub const MODELS: [&str; 3] = ["smollm2", "qwen05", "gemma3"];

/// A tiny deterministic PRNG (xorshift64*) so tests need no extra crates.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal (sum of uniforms), mean 0, sd 1.
    pub fn normal(&mut self) -> f32 {
        (0..12).map(|_| self.uniform()).sum::<f32>() - 6.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Run the `ferry` binary; (success, stdout, stderr).
pub fn ferry(args: &[&str]) -> (bool, String, String) {
    ferry_env(args, &[])
}

/// `ferry` with environment variables set for it.
pub fn ferry_env(args: &[&str], env: &[(&str, &std::path::Path)]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}
