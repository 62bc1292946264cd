//! Dumps the CPU backend's intermediate tensors of a prompt, layer by layer,
//! under llama.cpp's graph names, for `scripts/compare_layers.py` to set
//! against the same tensors captured from llama.cpp
//! (`scripts/llama_tensors.py`). Finds the first operation where the two
//! engines' arithmetic parts ways.
//!
//! cargo run --release --example dump_layers -- MODEL 1,2,3,4 OUT.bin [LAYERS]
use std::io::Write;

use ferry::backend::cpu::CpuBackend;
use ferry::backend::{Backend, SequenceSpan};
use ferry::gguf::Gguf;
use ferry::model::Model;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 4,
        "usage: dump_layers MODEL TOKENS OUT.bin [LAYERS]"
    );
    let g = Gguf::open(&args[1])?;
    let tokens: Vec<u32> = args[2]
        .split(',')
        .map(|t| t.trim().parse())
        .collect::<Result<_, _>>()?;
    let mut file = std::fs::File::create(&args[3])?;
    let b = CpuBackend::new(2);
    let m = Model::load(&b, &g, |_, _| {})?;
    let layers = args
        .get(4)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(m.config.n_layers);
    let cfg = m.config.clone();
    let n = tokens.len();
    let span = SequenceSpan::new(0, 0, n);
    let batch = span.batch(&tokens);
    let mut dump = |name: String, x: &ferry::backend::cpu::CpuAct| -> anyhow::Result<()> {
        writeln!(file, "{name} {}", x.data.len())?;
        let bytes: Vec<u8> = x.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        file.write_all(&bytes)?;
        Ok(())
    };
    b.run(|| -> anyhow::Result<()> {
        // The model's own forward pass, layer by layer, with a tap.
        let mut x = b.act(n, cfg.d_model)?;
        m.embed(&b, &tokens, &mut x)?;
        dump("inp_scaled".into(), &x)?;
        let mut s = ferry::model::Scratch::new(&b, &cfg, n)?;
        for (li, layer) in m.layers.iter().enumerate().take(layers) {
            let mut kv = b.kv_cache(&cfg, n.max(1), 1)?;
            let mut failed = None;
            layer.forward_tapped(&b, &cfg, &mut x, &mut s, &mut kv, &batch, &mut |name, t| {
                if failed.is_none() {
                    failed = dump(format!("{name}-{li}"), t).err();
                }
            })?;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        Ok(())
    })
}
