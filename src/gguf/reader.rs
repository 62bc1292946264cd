//! GGUF reader: parses and validates the header of one file, then hands out tensor
//! bytes straight from the memory map.
//!
//! Validation happens once, before anything is used: every length is checked
//! against the bytes that remain, every dimension product for overflow, every
//! tensor's byte range against the file. After `open` succeeds, `tensor_bytes`
//! cannot fail or read out of bounds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::error::{GgufError, Result};
use super::value::{Value, ValueType};
use crate::quant::GgmlType;

pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
pub const MAX_DIMS: usize = 4;
/// Arrays of arrays deeper than this are rejected (real files use depth 1).
const MAX_ARRAY_DEPTH: usize = 8;

/// One tensor as described by the header.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order: `shape[0]` is the contiguous (row) dimension.
    pub shape: Vec<u64>,
    pub ty: GgmlType,
    /// Offset of the data relative to the start of the file's data section.
    pub offset: u64,
    /// Absolute offset of the data in its file.
    pub file_offset: u64,
    pub n_bytes: u64,
    /// Which file of a split model holds the data (0 for single files).
    pub file_index: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
    /// Length of one row (the contiguous dimension).
    pub fn row_len(&self) -> usize {
        self.shape.first().copied().unwrap_or(1) as usize
    }
    /// Number of rows: the product of every dimension but the first.
    pub fn n_rows(&self) -> usize {
        self.shape.iter().skip(1).product::<u64>() as usize
    }
}

/// The parsed header of one GGUF file.
#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset where tensor data begins.
    pub data_offset: u64,
}

struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let remaining = (self.bytes.len() - self.pos) as u64;
        if n > remaining {
            return Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                offset: self.pos as u64,
                needed: n,
                file_len: self.bytes.len() as u64,
                what: what(),
            });
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn malformed(&self, offset: usize, what: String) -> GgufError {
        GgufError::Malformed {
            path: self.path.to_path_buf(),
            offset: offset as u64,
            what,
        }
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let start = self.pos;
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| {
            self.malformed(
                start,
                format!("{}: string is not valid UTF-8 ({e})", what()),
            )
        })
    }

    fn value(&mut self, ty: ValueType, depth: usize, what: &dyn Fn() -> String) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(what)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(what)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => Value::U32(self.u32(what)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::U64 => Value::U64(self.u64(what)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Bool => {
                let at = self.pos;
                match self.array::<1>(what)?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => {
                        return Err(
                            self.malformed(at, format!("{}: bool value {b} is not 0 or 1", what()))
                        );
                    }
                }
            }
            ValueType::String => Value::String(self.string(what)?),
            ValueType::Array => {
                let at = self.pos;
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.malformed(
                        at,
                        format!("{}: arrays nested deeper than {MAX_ARRAY_DEPTH}", what()),
                    ));
                }
                let raw = self.u32(what)?;
                let elem = ValueType::from_u32(raw).ok_or_else(|| {
                    self.malformed(at, format!("{}: unknown array element type {raw}", what()))
                })?;
                let len = self.u64(what)?;
                // Reject lengths that cannot fit before allocating anything.
                let remaining = (self.bytes.len() - self.pos) as u64;
                if len.saturating_mul(elem.min_encoded_size() as u64) > remaining {
                    return Err(GgufError::Truncated {
                        path: self.path.to_path_buf(),
                        offset: self.pos as u64,
                        needed: len.saturating_mul(elem.min_encoded_size() as u64),
                        file_len: self.bytes.len() as u64,
                        what: format!("{} (array of {len} {elem:?})", what()),
                    });
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(elem, depth + 1, what)?);
                }
                Value::Array(elem, items)
            }
        })
    }
}

/// Parse and validate a GGUF header from the whole file's bytes. `path` is only
/// used in error messages.
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<Header> {
    let mut c = Cursor {
        path,
        bytes,
        pos: 0,
    };
    let magic: [u8; 4] = c.array(&|| "the magic number".into())?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic {
            path: path.to_path_buf(),
            found: magic,
        });
    }
    let version = c.u32(&|| "the version".into())?;
    if version != 2 && version != 3 {
        // A big-endian file reads as a huge version number.
        if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
            return Err(c.malformed(4, "big-endian GGUF files are not supported".into()));
        }
        return Err(GgufError::UnsupportedVersion {
            path: path.to_path_buf(),
            version,
        });
    }
    let n_tensors = c.u64(&|| "the tensor count".into())?;
    let n_kv = c.u64(&|| "the metadata count".into())?;
    // Each key/value takes at least 12 bytes, each tensor info at least 24.
    let remaining = (bytes.len() - c.pos) as u64;
    if n_kv.saturating_mul(12) > remaining || n_tensors.saturating_mul(24) > remaining {
        return Err(GgufError::Truncated {
            path: path.to_path_buf(),
            offset: c.pos as u64,
            needed: n_kv
                .saturating_mul(12)
                .saturating_add(n_tensors.saturating_mul(24)),
            file_len: bytes.len() as u64,
            what: format!("{n_kv} metadata entries and {n_tensors} tensor infos"),
        });
    }

    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv as usize);
    let mut seen: HashMap<String, ()> = HashMap::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let at = c.pos;
        let key = c.string(&|| format!("the key of metadata entry {i}"))?;
        if seen.insert(key.clone(), ()).is_some() {
            return Err(c.malformed(at, format!("metadata key '{key}' appears twice")));
        }
        let tat = c.pos;
        let raw = c.u32(&|| format!("the type of metadata '{key}'"))?;
        let ty = ValueType::from_u32(raw).ok_or_else(|| {
            c.malformed(
                tat,
                format!("metadata '{key}' has unknown value type {raw}"),
            )
        })?;
        let value = c.value(ty, 0, &|| format!("metadata '{key}'"))?;
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((k, v)) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
            _ => {
                return Err(GgufError::BadKey {
                    path: path.to_path_buf(),
                    key: k.clone(),
                    what: format!("alignment must be a power of two up to 1 MiB, found {v}"),
                });
            }
        },
    };

    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut names: HashMap<String, ()> = HashMap::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let at = c.pos;
        let name = c.string(&|| format!("the name of tensor {i}"))?;
        if names.insert(name.clone(), ()).is_some() {
            return Err(c.malformed(at, format!("tensor name '{name}' appears twice")));
        }
        let what = || format!("the info of tensor '{name}'");
        let n_dims = c.u32(&what)? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(c.malformed(
                at,
                format!("tensor '{name}' has {n_dims} dimensions (must be 1..={MAX_DIMS})"),
            ));
        }
        let mut shape = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            shape.push(c.u64(&what)?);
        }
        let type_at = c.pos;
        let type_id = c.u32(&what)?;
        let ty = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnsupportedType {
            path: path.to_path_buf(),
            tensor: name.clone(),
            type_id,
            name: GgmlType::unsupported_name(type_id)
                .map(str::to_string)
                .unwrap_or_else(|| format!("unknown, at offset {type_at}")),
        })?;
        let offset = c.u64(&what)?;
        let bad = |what: String| GgufError::BadTensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
            what,
        };
        if shape.contains(&0) {
            return Err(bad(format!("shape {shape:?} has a zero dimension")));
        }
        let n_elements = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| bad(format!("element count of shape {shape:?} overflows")))?;
        if shape[0] % ty.block_elems() as u64 != 0 {
            return Err(bad(format!(
                "row length {} is not a multiple of the {} block size {}",
                shape[0],
                ty,
                ty.block_elems()
            )));
        }
        let n_bytes = ty
            .bytes_for(n_elements)
            .ok_or_else(|| bad(format!("byte size of {n_elements} {ty} elements overflows")))?;
        if offset % alignment != 0 {
            return Err(bad(format!(
                "data offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        tensors.push(TensorInfo {
            name,
            shape,
            ty,
            offset,
            file_offset: 0,
            n_bytes,
            file_index: 0,
        });
    }

    let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
    let file_len = bytes.len() as u64;
    for t in &mut tensors {
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        match (start, end) {
            (Some(s), Some(e)) if e <= file_len => t.file_offset = s,
            _ => {
                return Err(GgufError::Truncated {
                    path: path.to_path_buf(),
                    offset: data_offset.saturating_add(t.offset),
                    needed: t.n_bytes,
                    file_len,
                    what: format!("the data of tensor '{}'", t.name),
                });
            }
        }
    }
    // Overlapping tensors would let one write alias another's weights.
    let mut ranges: Vec<(u64, u64, &str)> = tensors
        .iter()
        .map(|t| (t.offset, t.offset + t.n_bytes, t.name.as_str()))
        .collect();
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(GgufError::BadTensor {
                path: path.to_path_buf(),
                tensor: w[1].2.to_string(),
                what: format!("its data overlaps tensor '{}'", w[0].2),
            });
        }
    }

    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

/// Bytes of a file: a read-only memory map, or an owned buffer (tests, fuzzing).
enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
    External(Box<dyn AsRef<[u8]> + Send + Sync>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
            Backing::External(e) => (**e).as_ref(),
        }
    }
}

/// A cheap, shareable handle to the bytes of an open file, so that weights can
/// reference the memory map without borrowing the model.
#[derive(Clone)]
pub struct SharedBytes(std::sync::Arc<Backing>);

impl SharedBytes {
    pub fn as_slice(&self) -> &[u8] {
        self.0.bytes()
    }

    /// Share memory owned elsewhere (the streaming engine's pinned host
    /// buffers, which the CPU backend then reads in place).
    pub fn external(bytes: Box<dyn AsRef<[u8]> + Send + Sync>) -> Self {
        SharedBytes(std::sync::Arc::new(Backing::External(bytes)))
    }
}

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedBytes({} bytes)", self.as_slice().len())
    }
}

/// One opened and validated GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    pub header: Header,
    backing: std::sync::Arc<Backing>,
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |error| GgufError::Io {
            path: path.to_path_buf(),
            error,
        };
        if path.is_dir() {
            return Err(GgufError::IsDirectory {
                path: path.to_path_buf(),
            });
        }
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let backing = if len == 0 {
            Backing::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only; ferry never writes model files it has open.
            // A file truncated by another process while mapped is outside what any
            // mmap-based reader can defend against.
            Backing::Mmap(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?)
        };
        let header = parse_header(path, backing.bytes())?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            header,
            backing: std::sync::Arc::new(backing),
        })
    }

    /// Parse a file held in memory.
    pub fn from_bytes(path: impl AsRef<Path>, bytes: Vec<u8>) -> Result<Self> {
        let header = parse_header(path.as_ref(), &bytes)?;
        Ok(GgufFile {
            path: path.as_ref().to_path_buf(),
            header,
            backing: std::sync::Arc::new(Backing::Owned(bytes)),
        })
    }

    pub fn bytes(&self) -> &[u8] {
        self.backing.bytes()
    }

    pub fn bytes_handle(&self) -> SharedBytes {
        SharedBytes(self.backing.clone())
    }

    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.bytes()[t.file_offset as usize..(t.file_offset + t.n_bytes) as usize]
    }
}
