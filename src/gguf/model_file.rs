//! A model as one or more GGUF files. Split models (`name-00001-of-00003.gguf`)
//! open as one: metadata comes from the first part, tensors from all parts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::error::{GgufError, Result};
use super::reader::{GgufFile, TensorInfo};
use super::value::Value;

pub const KEY_SPLIT_NO: &str = "split.no";
pub const KEY_SPLIT_COUNT: &str = "split.count";
pub const KEY_SPLIT_TENSORS: &str = "split.tensors.count";

/// A whole model: every part of a split model, with one tensor table.
pub struct Gguf {
    pub files: Vec<GgufFile>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    meta: HashMap<String, usize>,
}

/// `dir/name-00002-of-00003.gguf` → (`dir/name`, 2, 3).
pub fn parse_split_name(path: &Path) -> Option<(String, u32, u32)> {
    let s = path.to_str()?;
    let stem = s.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, no) = rest.rsplit_once('-')?;
    if no.len() != 5 || count.len() != 5 {
        return None;
    }
    let no: u32 = no.parse().ok()?;
    let count: u32 = count.parse().ok()?;
    (no >= 1 && no <= count).then(|| (prefix.to_string(), no, count))
}

pub fn split_path(prefix: &str, no: u32, count: u32) -> PathBuf {
    PathBuf::from(format!("{prefix}-{no:05}-of-{count:05}.gguf"))
}

impl Gguf {
    /// Open a model file. A path naming any part of a split model opens all parts.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let first = GgufFile::open(path)?;
        let count = first
            .header
            .metadata
            .iter()
            .find(|(k, _)| k == KEY_SPLIT_COUNT)
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(1);
        if count <= 1 {
            return Self::from_files(vec![first]);
        }
        let Some((prefix, _, name_count)) = parse_split_name(path) else {
            return Err(GgufError::Split {
                path: path.to_path_buf(),
                what: format!(
                    "the file says it is one of {count} parts, but its name does not follow the \
                     'NAME-00001-of-{count:05}.gguf' pattern, so the other parts cannot be found"
                ),
            });
        };
        if name_count as u64 != count {
            return Err(GgufError::Split {
                path: path.to_path_buf(),
                what: format!("the name says {name_count} parts but the metadata says {count}"),
            });
        }
        let mut files = Vec::with_capacity(count as usize);
        for no in 1..=name_count {
            let p = split_path(&prefix, no, name_count);
            files.push(GgufFile::open(&p).map_err(|e| match e {
                GgufError::Io { error, .. } if error.kind() == std::io::ErrorKind::NotFound => {
                    GgufError::Split {
                        path: path.to_path_buf(),
                        what: format!("part {no} of {name_count} is missing: {}", p.display()),
                    }
                }
                e => e,
            })?);
        }
        Self::from_files(files)
    }

    /// Build a model from already opened parts, in order.
    pub fn from_files(files: Vec<GgufFile>) -> Result<Self> {
        let mut tensors = Vec::new();
        let mut by_name = HashMap::new();
        let n = files.len();
        for (i, f) in files.iter().enumerate() {
            if n > 1 {
                let no = f
                    .header
                    .metadata
                    .iter()
                    .find(|(k, _)| k == KEY_SPLIT_NO)
                    .and_then(|(_, v)| v.as_u64());
                if no != Some(i as u64) {
                    return Err(GgufError::Split {
                        path: f.path.clone(),
                        what: format!("expected part index {i} in '{KEY_SPLIT_NO}', found {no:?}"),
                    });
                }
            }
            for t in &f.header.tensors {
                let mut t = t.clone();
                t.file_index = i;
                if by_name.insert(t.name.clone(), tensors.len()).is_some() {
                    return Err(GgufError::Split {
                        path: f.path.clone(),
                        what: format!("tensor '{}' appears in more than one part", t.name),
                    });
                }
                tensors.push(t);
            }
        }
        if n > 1 {
            let expected = files[0]
                .header
                .metadata
                .iter()
                .find(|(k, _)| k == KEY_SPLIT_TENSORS)
                .and_then(|(_, v)| v.as_u64());
            if let Some(expected) = expected
                && expected != tensors.len() as u64
            {
                return Err(GgufError::Split {
                    path: files[0].path.clone(),
                    what: format!(
                        "metadata promises {expected} tensors, the parts hold {}",
                        tensors.len()
                    ),
                });
            }
        }
        let meta = files
            .first()
            .map(|f| {
                f.header
                    .metadata
                    .iter()
                    .enumerate()
                    .map(|(i, (k, _))| (k.clone(), i))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Gguf {
            files,
            tensors,
            by_name,
            meta,
        })
    }

    pub fn path(&self) -> &Path {
        &self.files[0].path
    }

    pub fn version(&self) -> u32 {
        self.files[0].header.version
    }

    /// All metadata of the first part, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.files[0].header.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta
            .get(key)
            .map(|&i| &self.files[0].header.metadata[i].1)
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw (still quantized) bytes of a tensor, borrowed from the map.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        self.files[t.file_index].tensor_bytes(t)
    }

    pub fn total_tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.n_bytes).sum()
    }

    fn key_error(&self, key: &str, what: String) -> GgufError {
        GgufError::BadKey {
            path: self.path().to_path_buf(),
            key: key.to_string(),
            what,
        }
    }

    /// A required string value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.get(key) {
            None => Err(self.key_error(key, "missing".into())),
            Some(v) => v
                .as_str()
                .ok_or_else(|| self.key_error(key, format!("expected a string, found {v}"))),
        }
    }

    /// A required unsigned integer value.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        match self.get(key) {
            None => Err(self.key_error(key, "missing".into())),
            Some(v) => v.as_u64().ok_or_else(|| {
                self.key_error(key, format!("expected a non-negative integer, found {v}"))
            }),
        }
    }

    /// An optional unsigned integer value; present with the wrong type is an error.
    pub fn get_u64_opt(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.get_u64(key).map(Some),
        }
    }

    /// An optional float value.
    pub fn get_f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.key_error(key, format!("expected a number, found {v}"))),
        }
    }

    /// An optional bool value.
    pub fn get_bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.key_error(key, format!("expected a bool, found {v}"))),
        }
    }

    /// An optional array value.
    pub fn get_array_opt(&self, key: &str) -> Result<Option<&[Value]>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_array()
                .map(Some)
                .ok_or_else(|| self.key_error(key, format!("expected an array, found {v}"))),
        }
    }

    /// The model architecture (`general.architecture`).
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }
}
