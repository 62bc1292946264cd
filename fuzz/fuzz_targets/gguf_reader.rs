//! Feed arbitrary bytes to the GGUF reader: it must return an error or a header
//! whose tensors all lie inside the input, and never panic.
#![no_main]

use std::path::Path;

use ferry::gguf::{Gguf, GgufFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = GgufFile::from_bytes(Path::new("fuzz.gguf"), data.to_vec()) {
        for t in &f.header.tensors {
            assert!(t.file_offset + t.n_bytes <= data.len() as u64);
            let bytes = f.tensor_bytes(t);
            // Dequantize small tensors to exercise the block code on hostile data.
            if bytes.len() <= 1 << 16 {
                let _ = ferry::quant::dequantize_to_vec(t.ty, bytes);
            }
        }
        if let Ok(g) = Gguf::from_files(vec![f]) {
            let _ = ferry::inspect::summarize(&g);
        }
    }
});
