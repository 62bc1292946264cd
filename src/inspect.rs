//! `ferry inspect`: what is in a model file, for humans and for scripts.

use std::collections::BTreeMap;

use serde_json::json;

use crate::gguf::{Gguf, TensorInfo};
use crate::quant::GgmlType;
use crate::tokenizer::Tokenizer;

/// Hyperparameter keys shown by `inspect`, without the `<arch>.` prefix.
const HPARAMS: [&str; 15] = [
    "context_length",
    "embedding_length",
    "block_count",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "attention.layer_norm_rms_epsilon",
    "rope.dimension_count",
    "rope.freq_base",
    "vocab_size",
    "expert_count",
    "expert_used_count",
    "expert_feed_forward_length",
];

/// The layer index of a tensor named `blk.N.…`.
pub fn layer_of(t: &TensorInfo) -> Option<usize> {
    let rest = t.name.strip_prefix("blk.")?;
    rest.split('.').next()?.parse().ok()
}

pub struct Summary {
    pub json: serde_json::Value,
    pub text: String,
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

pub fn summarize(g: &Gguf) -> Summary {
    let arch = g.architecture().unwrap_or("(none)").to_string();
    let mut hparams = serde_json::Map::new();
    for k in HPARAMS {
        if let Some(v) = g.get(&format!("{arch}.{k}")) {
            hparams.insert(k.to_string(), v.to_json(Some(16)));
        }
    }
    let mut by_type: BTreeMap<GgmlType, (usize, u64, u64)> = BTreeMap::new();
    let mut per_layer: BTreeMap<usize, u64> = BTreeMap::new();
    let mut non_layer = 0u64;
    let mut n_params = 0u64;
    for t in g.tensors() {
        let e = by_type.entry(t.ty).or_default();
        e.0 += 1;
        e.1 += t.n_bytes;
        e.2 += t.n_elements();
        n_params += t.n_elements();
        match layer_of(t) {
            Some(l) => *per_layer.entry(l).or_default() += t.n_bytes,
            None => non_layer += t.n_bytes,
        }
    }
    let total = g.total_tensor_bytes();
    let tokenizer = match Tokenizer::from_gguf(g) {
        Ok(t) => {
            let name = |id: Option<u32>| id.and_then(|i| t.token_text(i)).map(str::to_string);
            json!({
                "model": t.model(),
                "pre": t.pre(),
                "vocab_size": t.vocab_size(),
                "bos": name(t.bos),
                "eos": name(t.eos),
                "add_bos": t.add_bos,
                "add_eos": t.add_eos,
                "special_tokens": t.special_tokens().count(),
                "chat_template": t.chat_template().is_some(),
            })
        }
        Err(e) => json!({ "error": e.to_string() }),
    };
    let json = json!({
        "path": g.path().display().to_string(),
        "files": g.files.len(),
        "gguf_version": g.version(),
        "architecture": arch,
        "name": g.get("general.name").and_then(|v| v.as_str()),
        "hyperparameters": hparams,
        "parameters": n_params,
        "tensor_count": g.tensors().len(),
        "tensor_bytes": total,
        "by_type": by_type.iter().map(|(ty, (n, bytes, elems))| json!({
            "type": ty.name(), "tensors": n, "bytes": bytes, "elements": elems,
        })).collect::<Vec<_>>(),
        "layers": per_layer.len(),
        "bytes_per_layer": per_layer.values().collect::<Vec<_>>(),
        "non_layer_bytes": non_layer,
        "tokenizer": tokenizer,
        "metadata": g.metadata().iter()
            .map(|(k, v)| (k.clone(), v.to_json(Some(16))))
            .collect::<serde_json::Map<_, _>>(),
    });

    let mut s = String::new();
    use std::fmt::Write;
    let _ = writeln!(s, "file          {}", g.path().display());
    if g.files.len() > 1 {
        let _ = writeln!(s, "parts         {}", g.files.len());
    }
    let _ = writeln!(s, "gguf version  {}", g.version());
    let _ = writeln!(s, "architecture  {arch}");
    if let Some(n) = json["name"].as_str() {
        let _ = writeln!(s, "name          {n}");
    }
    let _ = writeln!(
        s,
        "parameters    {:.2} M in {} tensors, {}",
        n_params as f64 / 1e6,
        g.tensors().len(),
        human_bytes(total)
    );
    let _ = writeln!(s, "\nhyperparameters");
    for (k, v) in &hparams {
        let _ = writeln!(s, "  {k:<34} {v}");
    }
    let _ = writeln!(s, "\ntensors by type");
    let _ = writeln!(
        s,
        "  {:<6} {:>7} {:>12} {:>8}",
        "type", "tensors", "bytes", "bpw"
    );
    for (ty, (n, bytes, _)) in &by_type {
        let _ = writeln!(
            s,
            "  {:<6} {:>7} {:>12} {:>8.3}",
            ty.name(),
            n,
            human_bytes(*bytes),
            ty.bits_per_weight()
        );
    }
    if !per_layer.is_empty() {
        let min = per_layer.values().min().copied().unwrap_or(0);
        let max = per_layer.values().max().copied().unwrap_or(0);
        let _ = writeln!(
            s,
            "\nlayers        {} (per layer {}{}), outside layers {}",
            per_layer.len(),
            human_bytes(min),
            if max != min {
                format!(" .. {}", human_bytes(max))
            } else {
                String::new()
            },
            human_bytes(non_layer)
        );
    }
    match crate::arch::Config::from_gguf(g) {
        Ok(cfg) => {
            let _ = writeln!(s, "\nhow ferry runs it");
            for line in describe_layers(&cfg) {
                let _ = writeln!(s, "  {line}");
            }
        }
        Err(e) => {
            let _ = writeln!(s, "\nhow ferry runs it\n  not at all: {e}");
        }
    }
    let _ = writeln!(s, "\ntokenizer");
    match tokenizer.get("error") {
        Some(e) => {
            let _ = writeln!(s, "  error: {}", e.as_str().unwrap_or_default());
        }
        None => {
            let _ = writeln!(
                s,
                "  {} / pre {}, {} tokens ({} special), bos {}, eos {}, add_bos {}, chat template {}",
                tokenizer["model"].as_str().unwrap_or_default(),
                tokenizer["pre"].as_str().unwrap_or_default(),
                tokenizer["vocab_size"],
                tokenizer["special_tokens"],
                tokenizer["bos"],
                tokenizer["eos"],
                tokenizer["add_bos"],
                if tokenizer["chat_template"] == true {
                    "yes"
                } else {
                    "no"
                },
            );
        }
    }
    Summary { json, text: s }
}

/// The layers as ferry's description of them has them: kinds of attention
/// (window, RoPE base), the departures from llama's layer.
pub fn describe_layers(cfg: &crate::arch::Config) -> Vec<String> {
    use std::collections::BTreeMap;
    let mut kinds: BTreeMap<(Option<usize>, u32), Vec<usize>> = BTreeMap::new();
    for (i, l) in cfg.layers.iter().enumerate() {
        kinds
            .entry((l.attn.window, l.attn.rope.freq_base.to_bits()))
            .or_default()
            .push(i);
    }
    let mut out: Vec<String> = kinds
        .iter()
        .map(|((window, base), layers)| {
            let base = f32::from_bits(*base);
            format!(
                "{} layer{} {}, RoPE base {base}{}",
                layers.len(),
                if layers.len() == 1 { "" } else { "s" },
                match window {
                    Some(w) => format!("attend over a {w}-token window"),
                    None => "attend over the whole context".into(),
                },
                if cfg.layers[layers[0]].attn.rope.freq_factors.is_some() {
                    " with frequency factors"
                } else {
                    ""
                }
            )
        })
        .collect();
    let l = &cfg.layers[0];
    let mut traits = vec![format!(
        "{} heads ({} KV) of {}, {:?} activation",
        cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, l.activation
    )];
    if l.qk_norm {
        traits.push("q/k norms".into());
    }
    if l.post_norms {
        traits.push("post-attention and post-feed-forward norms".into());
    }
    if let Some(f) = l.query_scale {
        traits.push(format!("queries scaled by {f}"));
    }
    if let Some(e) = cfg.embed_scale {
        traits.push(format!("embeddings scaled by {e}"));
    }
    if let Some(c) = cfg.final_softcap {
        traits.push(format!("logits soft-capped at {c}"));
    }
    out.push(traits.join(", "));
    if let Some(m) = cfg.moe {
        out.push(format!(
            "a mixture of {} experts in every layer, {} per token (softmax router{}), each {} wide",
            m.n_expert,
            m.n_used,
            if m.norm_weights {
                ", weights renormalised over the chosen"
            } else {
                ""
            },
            m.d_ff_expert
        ));
    }
    out
}
