//! GGUF reader: the header, metadata and tensor table of a GGUF v2/v3 file, and the model facts
//! the memory planner needs ([`ModelInfo`]).
//!
//! Only the front of the file is read, never the tensor data, so opening a 100 GB model is
//! instant. Everything in the file is untrusted: lengths and counts are checked against the bytes
//! that remain before anything is allocated for them, nested arrays are depth-limited, sizes are
//! computed with checked arithmetic, and tensor data ranges must lie inside the file. Malformed
//! input is an error naming the byte offset, never a panic. `cargo xtask fuzz` fuzzes it (the
//! target in `fuzz/`, see `fuzz/README.md`), and `tests::replay_fuzz_inputs` replays the fuzz
//! corpus and every past crasher on each `cargo test`.

mod facts;
mod reader;
pub mod split;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
mod types;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

pub use facts::{file_type_name, ModelInfo, ModelKind};
pub use types::{GgmlType, MetaArray, MetaType, MetaValue, TensorInfo};

/// The four bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Tensor data alignment when `general.alignment` is absent (ggml's `GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;

/// Longest metadata string accepted. Chat templates are the largest real strings (tens of KiB).
const MAX_STRING_LEN: u64 = 16 << 20;
/// String bytes kept from one header: keys, values, tensor names. Without it a large file could
/// fill memory with metadata (skipped arrays, such as the tokenizer's, do not count); real
/// headers keep well under 1 MiB.
const MAX_STRING_BYTES: u64 = 64 << 20;
/// Longest tensor name accepted (ggml itself stops at 64 bytes).
const MAX_TENSOR_NAME_LEN: u64 = 4096;
/// Most elements in one metadata array. Tokenizer arrays hold up to a few hundred thousand.
const MAX_ARRAY_LEN: u64 = 16 << 20;
/// Arrays up to this length keep their values; longer ones (tokenizer tokens, scores, merges)
/// are skipped and only their length and element type are kept.
pub const MAX_KEPT_ARRAY_LEN: u64 = 4096;
/// Arrays of arrays nest at most this deep (real files use one level).
const MAX_ARRAY_DEPTH: u32 = 4;
/// Array elements kept across the whole file. A kept value takes ~40 bytes in memory but can
/// take 1 byte in the file, so without this a crafted header of many small (possibly nested)
/// arrays could blow up 40-fold; past it, further arrays are only counted.
const MAX_KEPT_VALUES: u64 = 1 << 20;
/// Sanity bounds on the header counts, far above any real model.
const MAX_TENSORS: u64 = 1 << 20;
const MAX_KVS: u64 = 1 << 20;
/// A model with more layers than this is treated as corrupt (the largest have ~130).
const MAX_LAYERS: u32 = 4096;

/// Smallest possible encodings, used to bound counts by the bytes remaining.
const MIN_KV_BYTES: u64 = 8 + 4 + 1; // key length, value type, a one-byte value
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8; // name length, n_dims, type, offset

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot open {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("I/O error at offset {offset} while reading {context}")]
    Io {
        offset: u64,
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("not a GGUF file: bad magic at offset 0 (expected 'GGUF', found {found})")]
    BadMagic { found: String },
    #[error("unsupported GGUF version {0}")]
    UnsupportedVersion(u32),
    #[error("big-endian GGUF files are not supported (version field reads {0:#010x})")]
    BigEndian(u32),
    #[error("truncated GGUF at offset {offset} while reading {context}")]
    Truncated { offset: u64, context: String },
    #[error("invalid GGUF at offset {offset} while reading {context}: {reason}")]
    Invalid { offset: u64, context: String, reason: String },
    #[error("unknown ggml type {type_id} for tensor '{tensor}' at offset {offset}")]
    UnknownGgmlType { type_id: u32, tensor: String, offset: u64 },
    #[error("GGUF metadata has no '{0}'")]
    MissingKey(String),
    #[error("GGUF metadata '{key}' {reason}")]
    BadValue { key: String, reason: String },
}

type Result<T, E = GgufError> = std::result::Result<T, E>;

/// A parsed GGUF header: metadata and tensor table.
#[derive(Clone, Debug)]
pub struct GgufFile {
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    /// Where tensor data starts; tensor offsets are relative to it.
    pub data_offset: u64,
    pub file_size: u64,
}

impl GgufFile {
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }

    /// An optional unsigned integer; present with another type is an error.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u32().map(Some).ok_or_else(|| GgufError::BadValue {
                key: key.to_string(),
                reason: format!("should be an unsigned 32-bit integer, found {}", describe(v)),
            }),
        }
    }

    fn require_u32(&self, key: &str) -> Result<u32> {
        self.get_u32(key)?.ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    /// A per-layer value, stored either as one integer for every layer or as an array with one
    /// entry per layer (llama.cpp's `get_key_or_arr`).
    fn per_layer_u32(&self, key: &str, n_layer: u32) -> Result<Option<Vec<u32>>> {
        let bad = |reason: String| GgufError::BadValue { key: key.to_string(), reason };
        match self.get(key) {
            None => Ok(None),
            Some(MetaValue::Array(arr)) => {
                let values = arr
                    .values
                    .as_ref()
                    .filter(|v| v.len() as u64 == u64::from(n_layer))
                    .ok_or_else(|| bad(format!("has {} entries but the model has {n_layer} layers", arr.len)))?;
                values
                    .iter()
                    .map(|v| v.as_u32().ok_or_else(|| bad(format!("holds {}, not unsigned integers", describe(v)))))
                    .collect::<Result<Vec<u32>>>()
                    .map(Some)
            }
            Some(v) => {
                let x = v.as_u32().ok_or_else(|| bad(format!("should be an integer, found {}", describe(v))))?;
                Ok(Some(vec![x; n_layer as usize]))
            }
        }
    }

}

/// A metadata value in an error message: long strings and arrays only by their size.
fn describe(v: &MetaValue) -> String {
    match v {
        MetaValue::String(s) if s.len() > 40 => format!("a string ({} bytes)", s.len()),
        MetaValue::Array(a) => format!("an array of {} {:?}", a.len, a.elem_type),
        other => format!("{other:?}"),
    }
}
