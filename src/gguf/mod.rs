//! GGUF: the model file format of the llama.cpp ecosystem.
//!
//! `reader` parses and validates one file over a memory map, `model_file` joins
//! the parts of a split model, `writer` streams new files to disk.

mod error;
mod model_file;
mod reader;
mod value;
mod writer;

pub use error::{GgufError, Result};
pub use model_file::{
    Gguf, KEY_SPLIT_COUNT, KEY_SPLIT_NO, KEY_SPLIT_TENSORS, parse_split_name, split_path,
};
pub use reader::{
    DEFAULT_ALIGNMENT, GGUF_MAGIC, GgufFile, Header, MAX_DIMS, SharedBytes, TensorInfo,
    parse_header,
};
pub use value::{Value, ValueType};
pub use writer::{GgufWriter, TensorDataWriter, TensorSpec, string_array, write_gguf};
