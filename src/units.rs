//! Units and limits shared by the planner and the backends (a leaf module:
//! it imports nothing of ferry's).

use std::fmt;

/// Bytes printed in binary units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanBytes(pub u64);

impl fmt::Display for HumanBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        // Rounded up, so that a printed minimum budget is always enough.
        if b >= (1u64 << 30) as f64 {
            write!(
                f,
                "{:.2}GiB",
                (b / (1u64 << 30) as f64 * 100.0).ceil() / 100.0
            )
        } else {
            write!(f, "{:.0}MiB", (b / (1u64 << 20) as f64).ceil())
        }
    }
}

/// Parse sizes such as `8GiB`, `512MiB`, `24GB`, `1.5G`, `1000000`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (try 8GiB or 512MiB)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "kb" => 1e3,
        "m" | "mib" => (1u64 << 20) as f64,
        "mb" => 1e6,
        "g" | "gib" => (1u64 << 30) as f64,
        "gb" => 1e9,
        "t" | "tib" => (1u64 << 40) as f64,
        "tb" => 1e12,
        other => {
            return Err(format!(
                "unknown size unit '{other}' in '{s}' (use GiB, MiB, GB, MB)"
            ));
        }
    };
    Ok((v * mult) as u64)
}

/// Largest decode batch the GPU runs with its matrix-vector kernels; larger
/// batches dequantize weights into the f16 workspace for GEMMs.
pub const GEMV_MAX_BATCH: usize = 8;
