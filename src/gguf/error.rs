use std::path::PathBuf;

/// Everything that can be wrong with a GGUF file. Each variant names the file and,
/// where it applies, the key or tensor and the byte offset, so a user can tell a
/// truncated download from a corrupt header from an unsupported model.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The reason is in the message, not chained after it (it was printed twice).
    #[error("{path}: cannot open: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{path} is a directory, not a GGUF file; pass the .gguf file inside it (for a split model, its first part)"
    )]
    IsDirectory { path: PathBuf },
    #[error(
        "{path}: not a GGUF file (magic bytes {found:02x?} at offset 0, expected \"GGUF\"); is this a model in another format (safetensors, .bin)? Convert it with llama.cpp's convert_hf_to_gguf.py"
    )]
    BadMagic { path: PathBuf, found: [u8; 4] },
    #[error(
        "{path}: GGUF version {version} is not supported (ferry reads versions 2 and 3); re-convert the model with a current llama.cpp"
    )]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error(
        "{path}: {}: needed {needed} bytes at offset {offset} while reading {what}, but the file is {file_len} bytes; {}",
        truncation_kind(*needed).0,
        truncation_kind(*needed).1
    )]
    Truncated {
        path: PathBuf,
        offset: u64,
        needed: u64,
        file_len: u64,
        what: String,
    },
    #[error("{path}: at offset {offset}: {what}")]
    Malformed {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    #[error(
        "{path}: tensor '{tensor}' has type id {type_id} ({name}), which ferry does not support; use a model quantized to F32/F16/BF16/Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q2_K..Q6_K/IQ1_S/IQ1_M/IQ2_XXS/IQ2_XS/IQ2_S/IQ3_XXS/IQ3_S/IQ4_NL/IQ4_XS/MXFP4"
    )]
    UnsupportedType {
        path: PathBuf,
        tensor: String,
        type_id: u32,
        name: String,
    },
    #[error("{path}: tensor '{tensor}': {what}")]
    BadTensor {
        path: PathBuf,
        tensor: String,
        what: String,
    },
    #[error("{path}: metadata key '{key}': {what}")]
    BadKey {
        path: PathBuf,
        key: String,
        what: String,
    },
    #[error("{path}: split model: {what}")]
    Split { path: PathBuf, what: String },
}

pub type Result<T> = std::result::Result<T, GgufError>;

/// Why a read ran past the end: a length no model file could have (1 TiB
/// or more) is a corrupt field; anything less reads as a short file (a
/// truncated download's header still declares every array it had).
fn truncation_kind(needed: u64) -> (&'static str, &'static str) {
    if needed >= 1 << 40 {
        (
            "corrupt header",
            "no model file is that large: a length in the header is corrupt; re-convert or re-download the model",
        )
    } else {
        (
            "file is truncated",
            "the file is shorter than its header says: the download is probably incomplete (or the header corrupt)",
        )
    }
}
