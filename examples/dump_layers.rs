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
        let mut x = b.act(n, cfg.d_model)?;
        b.embed(&m.token_embd, &tokens, &mut x)?;
        let mut h = b.act(n, cfg.d_model)?;
        let (mut q, mut k, mut v) = (
            b.act(n, cfg.q_width())?,
            b.act(n, cfg.kv_width())?,
            b.act(n, cfg.kv_width())?,
        );
        let (mut attn, mut proj) = (b.act(n, cfg.q_width())?, b.act(n, cfg.d_model)?);
        let (mut gate, mut up) = (b.act(n, cfg.d_ff)?, b.act(n, cfg.d_ff)?);
        for (li, layer) in m.layers.iter().enumerate().take(layers) {
            let mut kv = b.kv_cache(&cfg, n.max(1), 1)?;
            b.rms_norm(&x, &layer.attn_norm, cfg.rms_eps, &mut h);
            dump(format!("attn_norm-{li}"), &h)?;
            b.matmul(&h, &layer.wq, &mut q);
            b.matmul(&h, &layer.wk, &mut k);
            b.matmul(&h, &layer.wv, &mut v);
            for (act, bias) in [
                (&mut q, &layer.bq),
                (&mut k, &layer.bk),
                (&mut v, &layer.bv),
            ] {
                if let Some(bias) = bias {
                    b.add_bias(act, bias);
                }
            }
            b.rope(
                &mut q,
                cfg.n_heads,
                cfg.head_dim,
                &cfg.rope,
                &span.positions,
            );
            b.rope(
                &mut k,
                cfg.n_kv_heads,
                cfg.head_dim,
                &cfg.rope,
                &span.positions,
            );
            b.attention(&cfg, &q, &k, &v, &mut kv, &batch, &mut attn)?;
            dump(format!("kqv_out-{li}"), &attn)?;
            b.matmul(&attn, &layer.wo, &mut proj);
            b.add(&mut x, &proj);
            dump(format!("ffn_inp-{li}"), &x)?;
            b.rms_norm(&x, &layer.ffn_norm, cfg.rms_eps, &mut h);
            dump(format!("ffn_norm-{li}"), &h)?;
            b.matmul(&h, &layer.w_gate, &mut gate);
            b.matmul(&h, &layer.w_up, &mut up);
            dump(format!("ffn_gate-{li}"), &gate)?;
            dump(format!("ffn_up-{li}"), &up)?;
            b.swiglu(&mut gate, &up);
            dump(format!("ffn_swiglu-{li}"), &gate)?;
            b.matmul(&gate, &layer.w_down, &mut proj);
            dump(format!("ffn_out-{li}"), &proj)?;
            b.add(&mut x, &proj);
            dump(format!("l_out-{li}"), &x)?;
        }
        Ok(())
    })
}
