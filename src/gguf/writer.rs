//! GGUF writer. The header is written first (all offsets are known from the
//! tensor shapes), then tensor data is streamed in order, so a 20 GB model is
//! never held in memory.

use std::io::{self, Write};

use super::reader::DEFAULT_ALIGNMENT;
use super::value::{Value, ValueType};
use crate::quant::GgmlType;

#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    /// ggml order: `shape[0]` is the row length.
    pub shape: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorSpec {
    pub fn n_bytes(&self) -> u64 {
        let n: u64 = self.shape.iter().product();
        self.ty.bytes_for(n).expect("validated in add_tensor")
    }
}

#[derive(Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorSpec>,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn write_str<W: Write>(w: &mut W, s: &str) -> io::Result<u64> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())?;
    Ok(8 + s.len() as u64)
}

fn write_value<W: Write>(w: &mut W, v: &Value) -> io::Result<u64> {
    Ok(match v {
        Value::U8(x) => w.write_all(&[*x]).map(|_| 1)?,
        Value::I8(x) => w.write_all(&[*x as u8]).map(|_| 1)?,
        Value::U16(x) => w.write_all(&x.to_le_bytes()).map(|_| 2)?,
        Value::I16(x) => w.write_all(&x.to_le_bytes()).map(|_| 2)?,
        Value::U32(x) => w.write_all(&x.to_le_bytes()).map(|_| 4)?,
        Value::I32(x) => w.write_all(&x.to_le_bytes()).map(|_| 4)?,
        Value::F32(x) => w.write_all(&x.to_le_bytes()).map(|_| 4)?,
        Value::U64(x) => w.write_all(&x.to_le_bytes()).map(|_| 8)?,
        Value::I64(x) => w.write_all(&x.to_le_bytes()).map(|_| 8)?,
        Value::F64(x) => w.write_all(&x.to_le_bytes()).map(|_| 8)?,
        Value::Bool(x) => w.write_all(&[*x as u8]).map(|_| 1)?,
        Value::String(s) => write_str(w, s)?,
        Value::Array(t, items) => {
            w.write_all(&(*t as u32).to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            let mut n = 12;
            for item in items {
                if item.value_type() != *t {
                    return Err(invalid(format!(
                        "array declared as {t:?} holds a {:?}",
                        item.value_type()
                    )));
                }
                n += write_value(w, item)?;
            }
            n
        }
    })
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn alignment(&self) -> u64 {
        self.metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// Add or replace a metadata value.
    pub fn set(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        if let Some(slot) = self.metadata.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            self.metadata.push((key, value));
        }
    }

    pub fn set_str(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.set(key, Value::String(value.into()));
    }

    pub fn set_u32(&mut self, key: impl Into<String>, value: u32) {
        self.set(key, Value::U32(value));
    }

    pub fn set_f32(&mut self, key: impl Into<String>, value: f32) {
        self.set(key, Value::F32(value));
    }

    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }

    /// Declare a tensor. Data must later be written in declaration order.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        shape: &[u64],
        ty: GgmlType,
    ) -> io::Result<()> {
        let name = name.into();
        if shape.is_empty() || shape.len() > super::reader::MAX_DIMS {
            return Err(invalid(format!(
                "tensor '{name}': {} dimensions",
                shape.len()
            )));
        }
        if shape.contains(&0) {
            return Err(invalid(format!(
                "tensor '{name}': shape {shape:?} has a zero dimension"
            )));
        }
        if !shape[0].is_multiple_of(ty.block_elems() as u64) {
            return Err(invalid(format!(
                "tensor '{name}': row length {} is not a multiple of the {ty} block size {}",
                shape[0],
                ty.block_elems()
            )));
        }
        let n = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        if n.and_then(|n| ty.bytes_for(n)).is_none() {
            return Err(invalid(format!("tensor '{name}': size overflows")));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(invalid(format!("tensor '{name}' declared twice")));
        }
        self.tensors.push(TensorSpec {
            name,
            shape: shape.to_vec(),
            ty,
        });
        Ok(())
    }

    /// Write the header and return a writer that takes the tensor data in order.
    pub fn write_header<W: Write>(self, mut w: W) -> io::Result<TensorDataWriter<W>> {
        let alignment = self.alignment();
        let mut pos = 0u64;
        w.write_all(b"GGUF")?;
        w.write_all(&3u32.to_le_bytes())?;
        w.write_all(&(self.tensors.len() as u64).to_le_bytes())?;
        w.write_all(&(self.metadata.len() as u64).to_le_bytes())?;
        pos += 24;
        for (k, v) in &self.metadata {
            pos += write_str(&mut w, k)?;
            w.write_all(&(v.value_type() as u32).to_le_bytes())?;
            pos += 4 + write_value(&mut w, v)?;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            pos += write_str(&mut w, &t.name)?;
            w.write_all(&(t.shape.len() as u32).to_le_bytes())?;
            for d in &t.shape {
                w.write_all(&d.to_le_bytes())?;
            }
            w.write_all(&t.ty.id().to_le_bytes())?;
            w.write_all(&offset.to_le_bytes())?;
            pos += 4 + 8 * t.shape.len() as u64 + 4 + 8;
            offset = (offset + t.n_bytes()).div_ceil(alignment) * alignment;
        }
        let pad = pos.div_ceil(alignment) * alignment - pos;
        w.write_all(&vec![0u8; pad as usize])?;
        Ok(TensorDataWriter {
            w,
            tensors: self.tensors,
            alignment,
            current: 0,
            written: 0,
        })
    }
}

/// Takes tensor data in declaration order, in pieces of any size, and pads
/// between tensors.
pub struct TensorDataWriter<W: Write> {
    w: W,
    tensors: Vec<TensorSpec>,
    alignment: u64,
    current: usize,
    written: u64,
}

impl<W: Write> TensorDataWriter<W> {
    /// The tensor the next bytes belong to, if any remain.
    pub fn current_tensor(&self) -> Option<&TensorSpec> {
        self.tensors.get(self.current)
    }

    /// Append bytes to the current tensor. A piece may not cross a tensor boundary.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(t) = self.tensors.get(self.current) else {
            return Err(invalid("more tensor data than the header declares".into()));
        };
        let size = t.n_bytes();
        if self.written + bytes.len() as u64 > size {
            return Err(invalid(format!(
                "tensor '{}' is {size} bytes, got {} so far",
                t.name,
                self.written + bytes.len() as u64
            )));
        }
        self.w.write_all(bytes)?;
        self.written += bytes.len() as u64;
        if self.written == size {
            let pad = size.div_ceil(self.alignment) * self.alignment - size;
            self.w.write_all(&vec![0u8; pad as usize])?;
            self.current += 1;
            self.written = 0;
        }
        Ok(())
    }

    /// Check that every tensor was written completely and flush.
    pub fn finish(mut self) -> io::Result<W> {
        if let Some(t) = self.tensors.get(self.current) {
            return Err(invalid(format!(
                "tensor '{}' was not written ({} of {} bytes)",
                t.name,
                self.written,
                t.n_bytes()
            )));
        }
        self.w.flush()?;
        Ok(self.w)
    }
}

/// Convenience for small files: write metadata and complete tensors at once.
pub fn write_gguf(
    path: &std::path::Path,
    metadata: &[(String, Value)],
    tensors: &[(String, Vec<u64>, GgmlType, Vec<u8>)],
) -> io::Result<()> {
    let mut wr = GgufWriter::new();
    for (k, v) in metadata {
        wr.set(k.clone(), v.clone());
    }
    for (name, shape, ty, _) in tensors {
        wr.add_tensor(name.clone(), shape, *ty)?;
    }
    let file = std::fs::File::create(path)?;
    let mut data = wr.write_header(io::BufWriter::with_capacity(1 << 20, file))?;
    for (_, _, _, bytes) in tensors {
        data.write(bytes)?;
    }
    data.finish()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
}

/// Helper for building metadata arrays of strings.
pub fn string_array<I: IntoIterator<Item = S>, S: Into<String>>(items: I) -> Value {
    Value::Array(
        ValueType::String,
        items.into_iter().map(|s| Value::String(s.into())).collect(),
    )
}
