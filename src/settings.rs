//! Every setting ferry reads from the environment, in one table, read once.
//!
//! Two kinds: the few a user turns (`User`), and the switches that compare
//! a CUDA kernel with its alternative for measurements on the device
//! (`Experiment`; each row says what the default is and why, the history in
//! `docs/benchmarks-history.md`). Code asks `settings::get(NAME)`, which
//! reads the process environment the first time any setting is asked for
//! and never again; a name outside the table is a programming error (a
//! panic in tests, caught by `every_setting_read_is_in_the_table`).
//! `warn_unknown` (called once by the command line) names `FERRY_*`
//! variables the table does not have: a typo is said, not ignored.

use std::collections::HashMap;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    User,
    Experiment,
}

#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub name: &'static str,
    pub kind: Kind,
    /// The values it takes (the default first).
    pub values: &'static str,
    pub what: &'static str,
}

const fn user(name: &'static str, values: &'static str, what: &'static str) -> Setting {
    Setting {
        name,
        kind: Kind::User,
        values,
        what,
    }
}

const fn exp(name: &'static str, values: &'static str, what: &'static str) -> Setting {
    Setting {
        name,
        kind: Kind::Experiment,
        values,
        what,
    }
}

pub const SETTINGS: &[Setting] = &[
    user(
        "FERRY_MODELS",
        "a folder",
        "where fetched models are cached (default ~/.cache/ferry/models)",
    ),
    user(
        "FERRY_API_KEY",
        "a key",
        "`ferry serve --api-key`: every route but /health needs it",
    ),
    exp(
        "FERRY_ATTENTION",
        "(tensor cores) | naive",
        "prompt attention with the one-block-per-query kernel instead of the tensor-core one",
    ),
    exp(
        "FERRY_FLASH",
        "(wgmma) | mma",
        "prompt attention with the mma.sync kernel instead of warpgroup MMAs (H100/H200, 128-dim heads)",
    ),
    exp(
        "FERRY_FFN_F16",
        "(1) | 0",
        "a batch's gate and up products (and SwiGLU's result) in f32 instead of f16",
    ),
    exp(
        "FERRY_GEMV",
        "(int) | float | warp | noqkv",
        "decode GEMVs on float activations; warp-per-row kernels with separate epilogue launches; q, k, v as three launches",
    ),
    exp(
        "FERRY_GEMV_WPR",
        "(auto) | 1 | 2 | 4 | 8 | cover | fill",
        "the warps that share a row in the shared-memory GEMVs",
    ),
    exp(
        "FERRY_GEMV_BOUND",
        "(3) | 0 | 4",
        "the shared-memory GEMVs' registers held to 3 or 4 resident blocks per SM, or no bound (3: +3.5 % decode)",
    ),
    exp(
        "FERRY_ATTN_Q8",
        "(1) | 0",
        "decode attention's output quantized in its own launch instead of inside the kernel",
    ),
    exp(
        "FERRY_NORM_SPLIT",
        "(1) | 0",
        "a decode RMSNorm on one block per row instead of one per 1024 elements",
    ),
    exp(
        "FERRY_PDL",
        "(1) | 0",
        "decode kernels launched the ordinary way instead of as programmatic dependent launches (sm_90+)",
    ),
    exp(
        "FERRY_GEMV_PREFETCH",
        "(auto) | 0..8",
        "row groups a GEMV block asks L2 for before it waits (default 1 in launches of at most three rounds, else 0)",
    ),
    exp(
        "FERRY_ATTN_KV",
        "(1) | 0",
        "a decode step's keys and values stored in their own launch instead of inside attention",
    ),
    exp(
        "FERRY_ATTN_SPLIT",
        "(1024) | N | 0",
        "decode attention's keys split over blocks from N keys on (0: never)",
    ),
    exp(
        "FERRY_GEMV_PRELOAD",
        "(1) | 0",
        "a decode GEMV block loads its first round after waiting on the previous kernel instead of before",
    ),
    exp(
        "FERRY_GEMV_BAR",
        "(row) | block",
        "the warps sharing a row meet at the block's barrier instead of their own",
    ),
    exp(
        "FERRY_ROPE_FUSED",
        "(1) | 0",
        "a decode step's queries and keys rotated in their own launch instead of inside attention",
    ),
    exp(
        "FERRY_GEMV_RING",
        "(1) | 0 | all",
        "decode GEMV weights through registers instead of copy-engine rings (sm_90+); all: gate/up through rings too",
    ),
    exp(
        "FERRY_GEMV_RING_MIN_ROW",
        "(4096) | bytes",
        "the narrowest row (bytes) a launch's widest row must reach to take the rings",
    ),
    exp(
        "FERRY_GEMV_RING_WARPS",
        "(8) | 16",
        "one ring block of 16 computing warps per SM instead of two of 8",
    ),
    exp(
        "FERRY_GEMV_RING_KIB",
        "(160) | 16..224",
        "an SM's ring size in KiB",
    ),
];

fn snapshot() -> &'static HashMap<&'static str, String> {
    static ENV: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        SETTINGS
            .iter()
            .filter_map(|s| std::env::var(s.name).ok().map(|v| (s.name, v)))
            .collect()
    })
}

/// The value of setting `name` (from the environment at the first call).
pub fn get(name: &str) -> Option<&'static str> {
    assert!(
        SETTINGS.iter().any(|s| s.name == name),
        "{name} is not in settings::SETTINGS"
    );
    snapshot().get(name).map(String::as_str)
}

/// `get` parsed as `T` (None where unset or unparsable).
pub fn parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    get(name).and_then(|v| v.parse().ok())
}

/// `FERRY_*` variables in the environment that are not settings.
pub fn unknown() -> Vec<String> {
    let mut v: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("FERRY_") && !SETTINGS.iter().any(|s| s.name == k))
        .collect();
    v.sort();
    v
}

/// Say once on stderr which `FERRY_*` variables ferry does not read.
pub fn warn_unknown() {
    for k in unknown() {
        let mut near: Vec<(usize, &str)> = SETTINGS
            .iter()
            .map(|s| (edit_distance(&k, s.name), s.name))
            .filter(|&(d, _)| d <= 3)
            .collect();
        near.sort();
        let near: Vec<&str> = near.into_iter().take(2).map(|(_, n)| n).collect();
        eprintln!(
            "ferry: {k} is not a setting ferry reads (ignored){}",
            if near.is_empty() {
                String::new()
            } else {
                format!("; did you mean {}?", near.join(" or "))
            }
        );
    }
}

/// Levenshtein distance (for "did you mean").
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `FERRY_*` name the sources read is a row of the table.
    #[test]
    fn every_setting_read_is_in_the_table() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut stack = vec![root];
        let mut names = Vec::new();
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("settings.rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for (i, _) in text.match_indices("\"FERRY_") {
                        let rest = &text[i + 1..];
                        let end = rest.find('"').unwrap();
                        let name = &rest[..end];
                        // Whole names only (not the prefix itself).
                        if name.len() > "FERRY_".len()
                            && name
                                .chars()
                                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                        {
                            names.push((p.display().to_string(), name.to_string()));
                        }
                    }
                }
            }
        }
        assert!(names.len() > 10);
        for (file, name) in names {
            assert!(
                SETTINGS.iter().any(|s| s.name == name),
                "{file} names {name}, which is not in settings::SETTINGS"
            );
        }
    }

    #[test]
    fn typos_find_their_setting() {
        assert_eq!(edit_distance("FERRY_GEMV_RNG", "FERRY_GEMV_RING"), 1);
        assert!(edit_distance("FERRY_GEMV_RNG", "FERRY_ATTN_KV") > 3);
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in SETTINGS.iter().enumerate() {
            assert!(
                SETTINGS[i + 1..].iter().all(|b| b.name != a.name),
                "{}",
                a.name
            );
        }
    }
}
