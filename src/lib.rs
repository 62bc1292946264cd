//! ferry: an inference engine for GGUF language models larger than the GPU's memory.
//!
//! The layers, bottom up: `gguf` reads and writes model files, `quant` knows the
//! block formats, `tokenizer` turns text into token ids and back.

pub mod arch;
pub mod backend;
pub mod bench;
pub mod engine;
pub mod fetch;
pub mod gguf;
pub mod gpu_check;
pub mod inspect;
pub mod model;
pub mod plan;
pub mod quant;
pub mod server;
pub mod settings;
pub mod synth;
pub mod tokenizer;
pub mod trace;
pub mod units;
