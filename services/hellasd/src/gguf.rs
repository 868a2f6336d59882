//! GGUF reader: the header, metadata and tensor table of a GGUF v2/v3 file, and the model facts
//! the memory planner needs ([`ModelInfo`]).
//!
//! Only the front of the file is read, never the tensor data, so opening a 100 GB model is
//! instant. Everything in the file is untrusted: lengths and counts are checked against the bytes
//! that remain before anything is allocated for them, nested arrays are depth-limited, sizes are
//! computed with checked arithmetic, and tensor data ranges must lie inside the file. Malformed
//! input is an error naming the byte offset, never a panic (see the fuzz target in `fuzz/` and the
//! mutation test below).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

/// The four bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Tensor data alignment when `general.alignment` is absent (ggml's `GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;

/// Longest metadata string accepted. Chat templates are the largest real strings (tens of KiB).
const MAX_STRING_LEN: u64 = 16 << 20;
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

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(MetaArray),
}

/// A metadata array. Values are kept for arrays of at most [`MAX_KEPT_ARRAY_LEN`] elements
/// (while a per-file budget of a million kept elements lasts); for longer ones only the length
/// and element type are recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct MetaArray {
    pub elem_type: MetaType,
    pub len: u64,
    pub values: Option<Vec<MetaValue>>,
}

/// GGUF metadata value type ids (`gguf_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl MetaType {
    pub fn from_id(id: u32) -> Option<MetaType> {
        Some(match id {
            0 => MetaType::U8,
            1 => MetaType::I8,
            2 => MetaType::U16,
            3 => MetaType::I16,
            4 => MetaType::U32,
            5 => MetaType::I32,
            6 => MetaType::F32,
            7 => MetaType::Bool,
            8 => MetaType::String,
            9 => MetaType::Array,
            10 => MetaType::U64,
            11 => MetaType::I64,
            12 => MetaType::F64,
            _ => return None,
        })
    }

    /// Encoded size of a fixed-size value, `None` for strings and arrays.
    fn fixed_size(self) -> Option<u64> {
        match self {
            MetaType::U8 | MetaType::I8 | MetaType::Bool => Some(1),
            MetaType::U16 | MetaType::I16 => Some(2),
            MetaType::U32 | MetaType::I32 | MetaType::F32 => Some(4),
            MetaType::U64 | MetaType::I64 | MetaType::F64 => Some(8),
            MetaType::String | MetaType::Array => None,
        }
    }

    /// The fewest bytes one value of this type can take.
    fn min_size(self) -> u64 {
        match self {
            MetaType::String => 8,    // length
            MetaType::Array => 4 + 8, // element type, length
            other => other.fixed_size().unwrap_or(1),
        }
    }
}

impl MetaValue {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_u32(&self) -> Option<u32> {
        self.as_u64().and_then(|v| u32::try_from(v).ok())
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&MetaArray> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// ggml tensor types, with the ids GGUF stores (`enum ggml_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    Iq2Xxs,
    Iq2Xs,
    Iq3Xxs,
    Iq1S,
    Iq4Nl,
    Iq3S,
    Iq2S,
    Iq4Xs,
    I8,
    I16,
    I32,
    I64,
    F64,
    Iq1M,
    Bf16,
    Tq1_0,
    Tq2_0,
    Mxfp4,
    Nvfp4,
    Q1_0,
}

/// (type, id, name, elements per block, bytes per block), from ggml's `type_traits` table and the
/// block structs in `ggml-common.h`. Ids 4, 5, 31-33 and 36-38 were removed from ggml.
const GGML_TYPES: &[(GgmlType, u32, &str, u64, u64)] = &[
    (GgmlType::F32, 0, "F32", 1, 4),
    (GgmlType::F16, 1, "F16", 1, 2),
    (GgmlType::Q4_0, 2, "Q4_0", 32, 18),
    (GgmlType::Q4_1, 3, "Q4_1", 32, 20),
    (GgmlType::Q5_0, 6, "Q5_0", 32, 22),
    (GgmlType::Q5_1, 7, "Q5_1", 32, 24),
    (GgmlType::Q8_0, 8, "Q8_0", 32, 34),
    (GgmlType::Q8_1, 9, "Q8_1", 32, 36),
    (GgmlType::Q2K, 10, "Q2_K", 256, 84),
    (GgmlType::Q3K, 11, "Q3_K", 256, 110),
    (GgmlType::Q4K, 12, "Q4_K", 256, 144),
    (GgmlType::Q5K, 13, "Q5_K", 256, 176),
    (GgmlType::Q6K, 14, "Q6_K", 256, 210),
    (GgmlType::Q8K, 15, "Q8_K", 256, 292),
    (GgmlType::Iq2Xxs, 16, "IQ2_XXS", 256, 66),
    (GgmlType::Iq2Xs, 17, "IQ2_XS", 256, 74),
    (GgmlType::Iq3Xxs, 18, "IQ3_XXS", 256, 98),
    (GgmlType::Iq1S, 19, "IQ1_S", 256, 50),
    (GgmlType::Iq4Nl, 20, "IQ4_NL", 32, 18),
    (GgmlType::Iq3S, 21, "IQ3_S", 256, 110),
    (GgmlType::Iq2S, 22, "IQ2_S", 256, 82),
    (GgmlType::Iq4Xs, 23, "IQ4_XS", 256, 136),
    (GgmlType::I8, 24, "I8", 1, 1),
    (GgmlType::I16, 25, "I16", 1, 2),
    (GgmlType::I32, 26, "I32", 1, 4),
    (GgmlType::I64, 27, "I64", 1, 8),
    (GgmlType::F64, 28, "F64", 1, 8),
    (GgmlType::Iq1M, 29, "IQ1_M", 256, 56),
    (GgmlType::Bf16, 30, "BF16", 1, 2),
    (GgmlType::Tq1_0, 34, "TQ1_0", 256, 54),
    (GgmlType::Tq2_0, 35, "TQ2_0", 256, 66),
    (GgmlType::Mxfp4, 39, "MXFP4", 32, 17),
    (GgmlType::Nvfp4, 40, "NVFP4", 64, 36),
    (GgmlType::Q1_0, 41, "Q1_0", 128, 18),
];

impl GgmlType {
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GGML_TYPES.iter().find(|t| t.1 == id).map(|t| t.0)
    }

    fn traits(self) -> &'static (GgmlType, u32, &'static str, u64, u64) {
        // Every variant has a row; the table test below checks it.
        GGML_TYPES.iter().find(|t| t.0 == self).expect("every GgmlType has a type_traits row")
    }

    pub fn id(self) -> u32 {
        self.traits().1
    }

    pub fn name(self) -> &'static str {
        self.traits().2
    }

    /// Elements per quantization block.
    pub fn block_size(self) -> u64 {
        self.traits().3
    }

    /// Bytes per quantization block.
    pub fn type_size(self) -> u64 {
        self.traits().4
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (row) dimension.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Relative to [`GgufFile::data_offset`].
    pub offset: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        // Cannot overflow: checked when the tensor was parsed.
        self.dims.iter().product()
    }
}

/// What is being read, for error messages.
#[derive(Clone, Debug)]
enum Ctx {
    Header,
    KvKey(u64),
    KvValue(u64, String),
    TensorInfo(u64),
    TensorInfoNamed(u64, String),
}

impl fmt::Display for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ctx::Header => f.write_str("the header"),
            Ctx::KvKey(i) => write!(f, "the key of metadata entry {i}"),
            Ctx::KvValue(i, key) => write!(f, "metadata entry {i} ('{key}')"),
            Ctx::TensorInfo(i) => write!(f, "tensor info {i}"),
            Ctx::TensorInfoNamed(i, name) => write!(f, "tensor info {i} ('{name}')"),
        }
    }
}

/// A little-endian reader that knows its offset and how many bytes the file has left.
struct Reader<R> {
    inner: R,
    pos: u64,
    file_size: u64,
    ctx: Ctx,
    /// Array elements that may still be kept in memory (see [`MAX_KEPT_VALUES`]).
    keep_budget: u64,
}

type Result<T, E = GgufError> = std::result::Result<T, E>;

impl<R: Read> Reader<R> {
    fn remaining(&self) -> u64 {
        self.file_size.saturating_sub(self.pos)
    }

    fn truncated(&self) -> GgufError {
        GgufError::Truncated { offset: self.pos, context: self.ctx.to_string() }
    }

    fn invalid_at(&self, offset: u64, reason: impl Into<String>) -> GgufError {
        GgufError::Invalid { offset, context: self.ctx.to_string(), reason: reason.into() }
    }

    fn invalid(&self, reason: impl Into<String>) -> GgufError {
        self.invalid_at(self.pos, reason)
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<()> {
        if buf.len() as u64 > self.remaining() {
            return Err(self.truncated());
        }
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.pos += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(self.truncated()),
            Err(source) => Err(GgufError::Io { offset: self.pos, context: self.ctx.to_string(), source }),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut buf = [0u8; N];
        self.fill(&mut buf)?;
        Ok(buf)
    }

    fn skip(&mut self, n: u64) -> Result<()> {
        if n > self.remaining() {
            return Err(self.truncated());
        }
        let copied = io::copy(&mut (&mut self.inner).take(n), &mut io::sink()).map_err(|source| GgufError::Io {
            offset: self.pos,
            context: self.ctx.to_string(),
            source,
        })?;
        self.pos += copied;
        if copied < n {
            return Err(self.truncated());
        }
        Ok(())
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A string's length, checked against `max` and the bytes left.
    fn string_len(&mut self, max: u64) -> Result<u64> {
        let at = self.pos;
        let len = self.u64()?;
        if len > max {
            return Err(self.invalid_at(at, format!("string length {len} exceeds the limit of {max} bytes")));
        }
        if len > self.remaining() {
            return Err(self.truncated());
        }
        Ok(len)
    }

    fn string(&mut self, max: u64) -> Result<String> {
        let len = self.string_len(max)?;
        // Bounded by `max` and by the bytes left in the file.
        let mut buf = vec![0u8; len as usize];
        self.fill(&mut buf)?;
        // GGUF strings should be UTF-8, but ggml does not check; neither do we fail on it.
        Ok(match String::from_utf8(buf) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    fn meta_type(&mut self) -> Result<MetaType> {
        let at = self.pos;
        let id = self.u32()?;
        MetaType::from_id(id).ok_or_else(|| self.invalid_at(at, format!("unknown metadata value type {id}")))
    }

    fn value(&mut self, ty: MetaType, depth: u32) -> Result<MetaValue> {
        Ok(match ty {
            MetaType::U8 => MetaValue::U8(self.u8()?),
            MetaType::I8 => MetaValue::I8(self.u8()? as i8),
            MetaType::U16 => MetaValue::U16(self.u16()?),
            MetaType::I16 => MetaValue::I16(self.u16()? as i16),
            MetaType::U32 => MetaValue::U32(self.u32()?),
            MetaType::I32 => MetaValue::I32(self.u32()? as i32),
            MetaType::U64 => MetaValue::U64(self.u64()?),
            MetaType::I64 => MetaValue::I64(self.u64()? as i64),
            MetaType::F32 => MetaValue::F32(f32::from_bits(self.u32()?)),
            MetaType::F64 => MetaValue::F64(f64::from_bits(self.u64()?)),
            // ggml writes 0 or 1; like ggml we do not reject other bytes.
            MetaType::Bool => MetaValue::Bool(self.u8()? != 0),
            MetaType::String => MetaValue::String(self.string(MAX_STRING_LEN)?),
            MetaType::Array => MetaValue::Array(self.meta_array(depth + 1)?),
        })
    }

    /// An array's element type and length, with the length checked.
    fn array_header(&mut self, depth: u32) -> Result<(MetaType, u64)> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(self.invalid(format!("arrays nested deeper than {MAX_ARRAY_DEPTH} levels")));
        }
        let elem_type = self.meta_type()?;
        let at = self.pos;
        let len = self.u64()?;
        if len > MAX_ARRAY_LEN {
            return Err(self.invalid_at(at, format!("array of {len} elements exceeds the limit of {MAX_ARRAY_LEN}")));
        }
        // Every element takes at least `min_size` bytes, so a longer array cannot be in the file.
        if len.saturating_mul(elem_type.min_size()) > self.remaining() {
            return Err(self.truncated());
        }
        Ok((elem_type, len))
    }

    fn meta_array(&mut self, depth: u32) -> Result<MetaArray> {
        let (elem_type, len) = self.array_header(depth)?;
        let values = if len <= MAX_KEPT_ARRAY_LEN && len <= self.keep_budget {
            self.keep_budget -= len;
            let mut values = Vec::with_capacity(len as usize);
            for _ in 0..len {
                values.push(self.value(elem_type, depth)?);
            }
            Some(values)
        } else {
            self.skip_elements(elem_type, len, depth)?;
            None
        };
        Ok(MetaArray { elem_type, len, values })
    }

    fn skip_elements(&mut self, elem_type: MetaType, len: u64, depth: u32) -> Result<()> {
        if let Some(size) = elem_type.fixed_size() {
            // `array_header` bounded len * size by the bytes left, so this cannot overflow.
            return self.skip(len * size);
        }
        for _ in 0..len {
            match elem_type {
                MetaType::String => {
                    let n = self.string_len(MAX_STRING_LEN)?;
                    self.skip(n)?;
                }
                _ => {
                    let (inner, inner_len) = self.array_header(depth + 1)?;
                    self.skip_elements(inner, inner_len, depth + 1)?;
                }
            }
        }
        Ok(())
    }
}

fn escape_bytes(bytes: &[u8]) -> String {
    format!("'{}'", bytes.iter().flat_map(|b| std::ascii::escape_default(*b)).map(char::from).collect::<String>())
}

impl GgufFile {
    /// Reads the header and tensor table of the GGUF file at `path`.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let open_err = |source| GgufError::Open { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(open_err)?;
        let file_size = file.metadata().map_err(open_err)?.len();
        GgufFile::parse(BufReader::new(file), file_size)
    }

    /// Parses a GGUF header from `reader`, which is positioned at the start of a file of
    /// `file_size` bytes. Reads no further than the end of the tensor table.
    pub fn parse<R: Read>(reader: R, file_size: u64) -> Result<GgufFile> {
        let mut r = Reader { inner: reader, pos: 0, file_size, ctx: Ctx::Header, keep_budget: MAX_KEPT_VALUES };

        let magic = match r.array::<4>() {
            Ok(m) => m,
            Err(GgufError::Truncated { .. }) => {
                return Err(GgufError::BadMagic { found: format!("only {file_size} bytes") })
            }
            Err(e) => return Err(e),
        };
        if magic != MAGIC {
            return Err(GgufError::BadMagic { found: escape_bytes(&magic) });
        }
        let version = r.u32()?;
        if version == 1 {
            // v1 used 32-bit counts and lengths; nothing current writes it.
            return Err(GgufError::UnsupportedVersion(1));
        }
        if !(2..=3).contains(&version) {
            if (2..=3).contains(&version.swap_bytes()) {
                return Err(GgufError::BigEndian(version));
            }
            return Err(GgufError::UnsupportedVersion(version));
        }

        let at = r.pos;
        let n_tensors = r.u64()?;
        if n_tensors > MAX_TENSORS {
            return Err(r.invalid_at(at, format!("tensor count {n_tensors} exceeds the limit of {MAX_TENSORS}")));
        }
        let at = r.pos;
        let n_kv = r.u64()?;
        if n_kv > MAX_KVS {
            return Err(r.invalid_at(at, format!("metadata entry count {n_kv} exceeds the limit of {MAX_KVS}")));
        }
        if n_kv.saturating_mul(MIN_KV_BYTES) + n_tensors.saturating_mul(MIN_TENSOR_INFO_BYTES) > r.remaining() {
            return Err(r.invalid_at(
                at,
                format!("{n_kv} metadata entries and {n_tensors} tensors cannot fit in a file of {file_size} bytes"),
            ));
        }

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            r.ctx = Ctx::KvKey(i);
            let key_at = r.pos;
            let key = r.string(MAX_STRING_LEN)?;
            r.ctx = Ctx::KvValue(i, key.clone());
            let ty = r.meta_type()?;
            let value = r.value(ty, 0)?;
            if metadata.insert(key, value).is_some() {
                return Err(r.invalid_at(key_at, "duplicate key"));
            }
        }

        // Capacity is bounded by the file size check above and by MAX_TENSORS.
        let mut tensors = Vec::with_capacity(n_tensors.min(4096) as usize);
        let mut info_offsets = Vec::with_capacity(n_tensors.min(4096) as usize);
        let mut names = BTreeSet::new();
        for i in 0..n_tensors {
            r.ctx = Ctx::TensorInfo(i);
            let info_at = r.pos;
            let name = r.string(MAX_TENSOR_NAME_LEN)?;
            r.ctx = Ctx::TensorInfoNamed(i, name.clone());
            if !names.insert(name.clone()) {
                return Err(r.invalid_at(info_at, "duplicate tensor name"));
            }
            let at = r.pos;
            let n_dims = r.u32()?;
            if n_dims > MAX_DIMS {
                return Err(r.invalid_at(at, format!("{n_dims} dimensions (ggml supports at most {MAX_DIMS})")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let at = r.pos;
                let d = r.u64()?;
                if d > i64::MAX as u64 {
                    return Err(r.invalid_at(at, format!("dimension {d} is out of range")));
                }
                dims.push(d);
            }
            let type_at = r.pos;
            let type_id = r.u32()?;
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownGgmlType {
                type_id,
                tensor: name.clone(),
                offset: type_at,
            })?;
            let offset = r.u64()?;

            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| r.invalid_at(at, format!("shape {dims:?} has too many elements")))?;
            let row = dims.first().copied().unwrap_or(1);
            if row % ggml_type.block_size() != 0 {
                return Err(r.invalid_at(
                    at,
                    format!(
                        "row length {row} is not a multiple of the {ggml_type} block size {}",
                        ggml_type.block_size()
                    ),
                ));
            }
            let n_bytes = (n_elements / ggml_type.block_size())
                .checked_mul(ggml_type.type_size())
                .ok_or_else(|| r.invalid_at(at, format!("shape {dims:?} is too large")))?;
            tensors.push(TensorInfo { name, dims, ggml_type, offset, n_bytes });
            info_offsets.push(info_at);
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                _ => {
                    return Err(GgufError::BadValue {
                        key: "general.alignment".into(),
                        reason: format!("must be a power of two, found {v:?}"),
                    })
                }
            },
        };
        let data_offset = r.pos.div_ceil(alignment) * alignment;

        for (i, (t, &info_at)) in tensors.iter().zip(&info_offsets).enumerate() {
            r.ctx = Ctx::TensorInfoNamed(i as u64, t.name.clone());
            if t.offset % alignment != 0 {
                return Err(r.invalid_at(info_at, format!("data offset {} is not aligned to {alignment}", t.offset)));
            }
            let end = data_offset.checked_add(t.offset).and_then(|s| s.checked_add(t.n_bytes));
            if end.is_none_or(|end| end > file_size) {
                return Err(r.invalid_at(
                    info_at,
                    format!(
                        "data ({} bytes at {} + {}) lies beyond the end of the file ({file_size} bytes)",
                        t.n_bytes, data_offset, t.offset
                    ),
                ));
            }
        }

        Ok(GgufFile { version, metadata, tensors, data_offset, file_size })
    }

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

    /// The facts about the model that serving and memory planning need.
    pub fn model_info(&self) -> Result<ModelInfo> {
        let architecture = self
            .get_str("general.architecture")
            .ok_or_else(|| GgufError::MissingKey("general.architecture".into()))?
            .to_string();
        let arch = architecture.as_str();
        let key = |suffix: &str| format!("{arch}.{suffix}");

        let n_layer = self.require_u32(&key("block_count"))?;
        if n_layer > MAX_LAYERS {
            return Err(GgufError::BadValue {
                key: key("block_count"),
                reason: format!("{n_layer} layers is more than the {MAX_LAYERS} this reader accepts"),
            });
        }
        let n_embd = self.require_u32(&key("embedding_length"))?;
        let context_length = self.require_u32(&key("context_length"))?;

        let n_vocab = match self.get_u32(&key("vocab_size"))? {
            Some(n) => n,
            None => match self.get("tokenizer.ggml.tokens").and_then(MetaValue::as_array) {
                Some(tokens) => u32::try_from(tokens.len).unwrap_or(u32::MAX),
                None => self
                    .tensors
                    .iter()
                    .find(|t| t.name == "token_embd.weight")
                    .and_then(|t| t.dims.get(1))
                    .and_then(|&d| u32::try_from(d).ok())
                    .ok_or_else(|| GgufError::MissingKey("tokenizer.ggml.tokens".into()))?,
            },
        };

        // Attention-free models (Mamba, RWKV) have no head count; llama.cpp defaults it to 0.
        let n_head =
            self.per_layer_u32(&key("attention.head_count"), n_layer)?.unwrap_or_else(|| vec![0; n_layer as usize]);
        let mut n_head_kv =
            self.per_layer_u32(&key("attention.head_count_kv"), n_layer)?.unwrap_or_else(|| n_head.clone());
        let head0 = n_head.first().copied().unwrap_or(0);
        let default_head_dim = n_embd.checked_div(head0).unwrap_or(0);
        let mut key_length = self.get_u32(&key("attention.key_length"))?.unwrap_or(default_head_dim);
        let mut value_length = self.get_u32(&key("attention.value_length"))?.unwrap_or(default_head_dim);
        // Multi-head latent attention (DeepSeek2-style, MLA-converted GGUFs): the cache holds one
        // compressed "head" of key_length (kv_lora_rank + rope dims) per token and no V at all
        // (llama.cpp's KV layout gives MLA layers n_embd_v_gqa = 0).
        let is_mla = self.get(&key("attention.key_length_mla")).is_some()
            && self.get(&key("attention.value_length_mla")).is_some();
        if is_mla {
            n_head_kv = vec![1; n_layer as usize];
            value_length = 0;
            if key_length == 0 {
                key_length = self.get_u32(&key("attention.kv_lora_rank"))?.unwrap_or(0)
                    + self.get_u32(&key("rope.dimension_count"))?.unwrap_or(0);
            }
        }

        let (sliding_window, swa_layers) = self.sliding_window(arch, n_layer)?;

        let n_ff =
            self.per_layer_u32(&key("feed_forward_length"), n_layer)?.and_then(|v| v.into_iter().max()).unwrap_or(0);
        let n_expert = self.get_u32(&key("expert_count"))?.unwrap_or(0);
        let n_expert_used = self.get_u32(&key("expert_used_count"))?.unwrap_or(0);
        let n_ff_expert = self.get_u32(&key("expert_feed_forward_length"))?.unwrap_or(0);
        let n_ff_shared = self.get_u32(&key("expert_shared_feed_forward_length"))?.unwrap_or(0);

        let tensor_bytes = self.tensors.iter().map(|t| t.n_bytes).fold(0u64, u64::saturating_add);
        let layer_tensor_bytes =
            self.tensors.iter().filter(|t| t.name.starts_with("blk.")).map(|t| t.n_bytes).fold(0u64, u64::saturating_add);
        let parameter_count = self.tensors.iter().map(TensorInfo::n_elements).fold(0u64, u64::saturating_add);
        let file_type = self
            .get("general.file_type")
            .and_then(MetaValue::as_u32)
            .map(|ft| file_type_name(ft).map_or_else(|| format!("file type {ft}"), str::to_string));

        Ok(ModelInfo {
            architecture: architecture.clone(),
            name: self.get_str("general.name").map(str::to_string),
            n_layer,
            n_embd,
            n_vocab,
            context_length,
            n_head,
            n_head_kv,
            key_length,
            value_length,
            sliding_window,
            swa_layers,
            n_ff,
            n_expert,
            n_expert_used,
            n_ff_expert,
            n_ff_shared,
            tensor_bytes,
            layer_tensor_bytes,
            parameter_count,
            file_type,
            chat_template: self.get_str("tokenizer.chat_template").map(str::to_string),
        })
    }

    /// The sliding window and which layers use it, following llama.cpp's per-architecture
    /// hparams loading (`hparams.set_swa_pattern(n)`: layer `il` is windowed when
    /// `il % n < n - 1`, i.e. every n-th layer is global; gemma3 uses n = 6).
    fn sliding_window(&self, arch: &str, n_layer: u32) -> Result<(Option<u32>, Vec<bool>)> {
        let none = (None, vec![false; n_layer as usize]);
        let window = match self.get_u32(&format!("{arch}.attention.sliding_window"))? {
            Some(0) => return Ok(none),
            Some(w) => w,
            // llama4 has no key for it: chunked attention over 8192 tokens on 3 of 4 layers.
            None if arch == "llama4" => 8192,
            None => return Ok(none),
        };
        let pattern_key = format!("{arch}.attention.sliding_window_pattern");
        let period = match self.get(&pattern_key) {
            Some(MetaValue::Array(arr)) => {
                let flags = arr
                    .values
                    .as_ref()
                    .filter(|v| v.len() as u64 == u64::from(n_layer))
                    .and_then(|v| v.iter().map(MetaValue::as_bool).collect::<Option<Vec<bool>>>())
                    .ok_or_else(|| GgufError::BadValue {
                        key: pattern_key.clone(),
                        reason: format!("should be {n_layer} booleans, one per layer"),
                    })?;
                return Ok((Some(window), flags));
            }
            Some(_) => self.get_u32(&pattern_key)?,
            None => match arch {
                "gemma2" | "gpt-oss" => Some(2),
                "gemma3" | "gemma-embedding" => Some(6),
                "gemma3n" => Some(5),
                "cohere2" | "exaone4" | "llama4" => Some(4),
                _ => None,
            },
        };
        Ok(match period {
            Some(n) => (Some(window), (0..n_layer).map(|il| n == 0 || il % n < n - 1).collect()),
            // A window we cannot place: plan every layer as global, which over- rather than
            // under-estimates the KV cache.
            None => (Some(window), vec![false; n_layer as usize]),
        })
    }
}

fn describe(v: &MetaValue) -> String {
    match v {
        MetaValue::String(s) if s.len() > 40 => format!("a string ({} bytes)", s.len()),
        MetaValue::Array(a) => format!("an array of {} {:?}", a.len, a.elem_type),
        other => format!("{other:?}"),
    }
}

/// The name llama.cpp gives a `general.file_type` (`enum llama_ftype`).
pub fn file_type_name(ftype: u32) -> Option<&'static str> {
    // Bit 10 (LLAMA_FTYPE_GUESSED) marks a type inferred by an old converter.
    Some(match ftype & !1024 {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        39 => "NVFP4",
        _ => return None,
    })
}

/// What the planner and the API need to know about a model.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ModelInfo {
    pub architecture: String,
    pub name: Option<String>,
    pub n_layer: u32,
    pub n_embd: u32,
    pub n_vocab: u32,
    /// Training context (`{arch}.context_length`).
    pub context_length: u32,
    /// Attention heads per layer.
    pub n_head: Vec<u32>,
    /// KV heads per layer, as llama.cpp caches them (1 for MLA models; 0 for layers without
    /// attention).
    pub n_head_kv: Vec<u32>,
    /// Per-head K and V widths, as llama.cpp caches them (n_embd / n_head when absent; for MLA,
    /// key_length is the compressed width and value_length 0 because V is not cached).
    pub key_length: u32,
    pub value_length: u32,
    pub sliding_window: Option<u32>,
    /// Per layer: does it attend only within the sliding window?
    pub swa_layers: Vec<bool>,
    /// Widest dense feed-forward layer (0 when absent).
    pub n_ff: u32,
    pub n_expert: u32,
    pub n_expert_used: u32,
    /// Feed-forward width of one routed expert (0 for dense models).
    pub n_ff_expert: u32,
    /// Feed-forward width of the shared expert, where the model has one.
    pub n_ff_shared: u32,
    /// Sum of all tensor data sizes.
    pub tensor_bytes: u64,
    /// The part of it in the repeating layers (`blk.N.*`), which a split spreads over boxes;
    /// the rest (token embeddings, output) stays with the box that runs llama-server.
    pub layer_tensor_bytes: u64,
    pub parameter_count: u64,
    /// e.g. "Q4_K_M", from `general.file_type`.
    pub file_type: Option<String>,
    pub chat_template: Option<String>,
}

impl ModelInfo {
    /// A short label: the model's name, else its architecture.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.architecture)
    }
}

/// Builds GGUF files for tests (here, in the planner and in the fuzz seed).
#[doc(hidden)]
pub mod testing {
    use super::MetaType;

    /// A GGUF writer covering what the tests need.
    #[derive(Default)]
    pub struct GgufBuilder {
        kvs: Vec<(String, Vec<u8>)>,
        tensors: Vec<(String, Vec<u64>, u32, u64)>,
    }

    fn type_id(t: MetaType) -> u32 {
        (0..=12).find(|&i| MetaType::from_id(i) == Some(t)).unwrap_or(0)
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    impl GgufBuilder {
        pub fn new() -> Self {
            Self::default()
        }

        fn kv(mut self, key: &str, ty: MetaType, payload: Vec<u8>) -> Self {
            let mut v = type_id(ty).to_le_bytes().to_vec();
            v.extend(payload);
            self.kvs.push((key.to_string(), v));
            self
        }

        pub fn u32(self, key: &str, v: u32) -> Self {
            self.kv(key, MetaType::U32, v.to_le_bytes().to_vec())
        }

        pub fn f32(self, key: &str, v: f32) -> Self {
            self.kv(key, MetaType::F32, v.to_le_bytes().to_vec())
        }

        pub fn bool(self, key: &str, v: bool) -> Self {
            self.kv(key, MetaType::Bool, vec![v as u8])
        }

        pub fn str(self, key: &str, v: &str) -> Self {
            let mut p = Vec::new();
            string(&mut p, v);
            self.kv(key, MetaType::String, p)
        }

        pub fn u32_array(self, key: &str, v: &[u32]) -> Self {
            let mut p = type_id(MetaType::U32).to_le_bytes().to_vec();
            p.extend((v.len() as u64).to_le_bytes());
            v.iter().for_each(|x| p.extend(x.to_le_bytes()));
            self.kv(key, MetaType::Array, p)
        }

        pub fn str_array(self, key: &str, v: &[&str]) -> Self {
            let mut p = type_id(MetaType::String).to_le_bytes().to_vec();
            p.extend((v.len() as u64).to_le_bytes());
            v.iter().for_each(|s| string(&mut p, s));
            self.kv(key, MetaType::Array, p)
        }

        /// An array of arrays of i32, to exercise nesting.
        pub fn nested_array(self, key: &str, v: &[&[i32]]) -> Self {
            let mut p = type_id(MetaType::Array).to_le_bytes().to_vec();
            p.extend((v.len() as u64).to_le_bytes());
            for inner in v {
                p.extend(type_id(MetaType::I32).to_le_bytes());
                p.extend((inner.len() as u64).to_le_bytes());
                inner.iter().for_each(|x| p.extend(x.to_le_bytes()));
            }
            self.kv(key, MetaType::Array, p)
        }

        /// A tensor of ggml type `type_id` taking `n_bytes` of (zeroed) data.
        pub fn tensor(mut self, name: &str, dims: &[u64], type_id: u32, n_bytes: u64) -> Self {
            self.tensors.push((name.to_string(), dims.to_vec(), type_id, n_bytes));
            self
        }

        pub fn build(&self) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend(3u32.to_le_bytes());
            out.extend((self.tensors.len() as u64).to_le_bytes());
            out.extend((self.kvs.len() as u64).to_le_bytes());
            for (k, v) in &self.kvs {
                string(&mut out, k);
                out.extend(v);
            }
            let mut offset = 0u64;
            for (name, dims, ty, n_bytes) in &self.tensors {
                string(&mut out, name);
                out.extend((dims.len() as u32).to_le_bytes());
                dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
                out.extend(ty.to_le_bytes());
                out.extend(offset.to_le_bytes());
                offset += n_bytes.div_ceil(32) * 32;
            }
            out.resize(out.len().div_ceil(32) * 32, 0);
            out.resize(out.len() + offset as usize, 0);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::GgufBuilder;
    use super::*;
    use rand::{Rng, SeedableRng};

    fn small_model() -> GgufBuilder {
        GgufBuilder::new()
            .str("general.architecture", "llama")
            .str("general.name", "Tiny")
            .u32("general.file_type", 15)
            .u32("llama.block_count", 2)
            .u32("llama.context_length", 2048)
            .u32("llama.embedding_length", 64)
            .u32("llama.feed_forward_length", 128)
            .u32("llama.attention.head_count", 4)
            .u32_array("llama.attention.head_count_kv", &[2, 1])
            .f32("llama.rope.freq_base", 10000.0)
            .bool("tokenizer.ggml.add_bos_token", true)
            .str_array("tokenizer.ggml.tokens", &["<s>", "</s>", "a", "b", "c"])
            .nested_array("test.nested", &[&[1, 2], &[3]])
            .str("tokenizer.chat_template", "{{ messages }}")
            .tensor("token_embd.weight", &[64, 5], 0, 64 * 5 * 4)
            .tensor("blk.0.attn_q.weight", &[64, 64], 2, 64 * 64 / 32 * 18)
            .tensor("blk.0.ffn_up.weight", &[256, 2], 12, 2 * 144)
    }

    #[test]
    fn type_table_is_complete_and_consistent() {
        for id in 0..64 {
            if let Some(t) = GgmlType::from_id(id) {
                assert_eq!(t.id(), id);
                assert!(t.block_size() > 0 && t.type_size() > 0);
            }
        }
        assert_eq!((GgmlType::Q4K.block_size(), GgmlType::Q4K.type_size()), (256, 144));
        assert_eq!(GgmlType::from_id(39), Some(GgmlType::Mxfp4));
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::from_id(99), None);
    }

    #[test]
    fn parses_synthetic_file() {
        let bytes = small_model().build();
        let f = GgufFile::parse(&bytes[..], bytes.len() as u64).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.tensors.len(), 3);
        assert_eq!(f.tensors[1].ggml_type, GgmlType::Q4_0);
        assert_eq!(f.tensors[1].n_bytes, 64 * 64 / 32 * 18);
        assert_eq!(f.tensors[2].n_bytes, 288);
        assert_eq!(f.data_offset % 32, 0);
        let nested = f.get("test.nested").unwrap().as_array().unwrap();
        assert_eq!(nested.len, 2);
        assert_eq!(nested.values.as_ref().unwrap()[1].as_array().unwrap().values, Some(vec![MetaValue::I32(3)]));

        let info = f.model_info().unwrap();
        assert_eq!(info.architecture, "llama");
        assert_eq!(info.name.as_deref(), Some("Tiny"));
        assert_eq!(info.n_vocab, 5);
        assert_eq!(info.n_head, vec![4, 4]);
        assert_eq!(info.n_head_kv, vec![2, 1]);
        assert_eq!((info.key_length, info.value_length), (16, 16));
        assert_eq!(info.file_type.as_deref(), Some("Q4_K_M"));
        assert_eq!(info.chat_template.as_deref(), Some("{{ messages }}"));
        assert_eq!(info.sliding_window, None);
        assert_eq!(info.tensor_bytes, 64 * 5 * 4 + 64 * 64 / 32 * 18 + 288);
        assert_eq!(info.parameter_count, 64 * 5 + 64 * 64 + 512);
    }

    #[test]
    fn big_arrays_are_counted_not_kept() {
        let tokens: Vec<String> = (0..5000).map(|i| format!("t{i}")).collect();
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let bytes = GgufBuilder::new().str_array("tokenizer.ggml.tokens", &refs).u32("after", 7).build();
        let f = GgufFile::parse(&bytes[..], bytes.len() as u64).unwrap();
        let arr = f.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
        assert_eq!((arr.len, arr.values.is_none()), (5000, true));
        assert_eq!(f.get_u32("after").unwrap(), Some(7));

        // Many small arrays: kept until the per-file budget runs out, then only counted.
        let per_layer = vec![1u32; 4096];
        let mut b = GgufBuilder::new();
        for i in 0..300 {
            b = b.u32_array(&format!("a{i:03}"), &per_layer);
        }
        let bytes = b.build();
        let f = GgufFile::parse(&bytes[..], bytes.len() as u64).unwrap();
        let kept = |k: &str| f.get(k).unwrap().as_array().unwrap().values.is_some();
        assert!(kept("a000") && kept("a255") && !kept("a256") && !kept("a299"));
        assert_eq!(f.get("a299").unwrap().as_array().unwrap().len, 4096);
    }

    #[test]
    fn gemma3_swa_pattern() {
        let bytes = GgufBuilder::new()
            .str("general.architecture", "gemma3")
            .u32("gemma3.block_count", 18)
            .u32("gemma3.context_length", 32768)
            .u32("gemma3.embedding_length", 640)
            .u32("gemma3.attention.head_count", 4)
            .u32("gemma3.attention.head_count_kv", 1)
            .u32("gemma3.attention.key_length", 256)
            .u32("gemma3.attention.value_length", 256)
            .u32("gemma3.attention.sliding_window", 512)
            .u32("gemma3.vocab_size", 262144)
            .build();
        let info = GgufFile::parse(&bytes[..], bytes.len() as u64).unwrap().model_info().unwrap();
        assert_eq!(info.sliding_window, Some(512));
        let global: Vec<usize> = info.swa_layers.iter().enumerate().filter(|(_, s)| !**s).map(|(i, _)| i).collect();
        assert_eq!(global, vec![5, 11, 17]);
    }

    #[test]
    fn error_messages_name_offsets() {
        let err = GgufFile::parse(&b"GGML\x03\0\0\0"[..], 8).unwrap_err().to_string();
        assert_eq!(err, "not a GGUF file: bad magic at offset 0 (expected 'GGUF', found 'GGML')");

        let err = GgufFile::parse(&b"GGUF\x01\0\0\0"[..], 8).unwrap_err().to_string();
        assert_eq!(err, "unsupported GGUF version 1");

        let bytes = small_model().build();
        // Cut inside the metadata (the header is the first ~700 bytes).
        let cut = &bytes[..300];
        let err = GgufFile::parse(cut, cut.len() as u64).unwrap_err().to_string();
        assert!(err.starts_with("truncated GGUF at offset "), "{err}");

        let bytes = GgufBuilder::new().tensor("blk.0.attn_q.weight", &[32], 99, 32).build();
        let err = GgufFile::parse(&bytes[..], bytes.len() as u64).unwrap_err().to_string();
        assert!(err.starts_with("unknown ggml type 99 for tensor 'blk.0.attn_q.weight' at offset "), "{err}");

        // Claimed data beyond the end of the file.
        let bytes = GgufBuilder::new().tensor("t", &[32], 0, 128).build();
        let err = GgufFile::parse(&bytes[..bytes.len() - 1], bytes.len() as u64 - 1).unwrap_err().to_string();
        assert!(err.contains("beyond the end of the file"), "{err}");

        let err = GgufFile::parse(&b"GGUF\0\0\0\x03"[..], 8).unwrap_err().to_string();
        assert!(err.starts_with("big-endian"), "{err}");
    }

    #[test]
    fn huge_counts_are_rejected_without_allocating() {
        let mut bytes = b"GGUF\x03\0\0\0".to_vec();
        bytes.extend(u64::MAX.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
        assert!(GgufFile::parse(&bytes[..], bytes.len() as u64).is_err());

        // A string claiming 2^60 bytes, in a file claiming to be huge.
        let mut bytes = b"GGUF\x03\0\0\0".to_vec();
        bytes.extend(0u64.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        bytes.extend((1u64 << 60).to_le_bytes());
        assert!(GgufFile::parse(&bytes[..], u64::MAX).is_err());

        // n_layer from metadata must not size an allocation.
        let bytes = GgufBuilder::new()
            .str("general.architecture", "llama")
            .u32("llama.block_count", u32::MAX)
            .u32("llama.embedding_length", 64)
            .u32("llama.context_length", 64)
            .u32("llama.attention.head_count", 4)
            .build();
        assert!(GgufFile::parse(&bytes[..], bytes.len() as u64).unwrap().model_info().is_err());
    }

    /// The CI-run form of the fuzz target: truncations, bit flips, byte overwrites and splices of
    /// a valid file must give errors, never panics or huge allocations.
    #[test]
    fn mutated_inputs_never_panic() {
        let seed = small_model().build();
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x6767_7566);
        let check = |data: &[u8]| {
            if let Ok(f) = GgufFile::parse(data, data.len() as u64) {
                let _ = f.model_info();
            }
            // A lying file size must not cause trouble either.
            let _ = GgufFile::parse(data, u64::MAX);
        };
        for len in 0..=seed.len() {
            check(&seed[..len]);
        }
        for _ in 0..20_000 {
            let mut data = seed.clone();
            for _ in 0..rng.gen_range(1..=8) {
                let i = rng.gen_range(0..data.len());
                match rng.gen_range(0..4) {
                    0 => data[i] ^= 1 << rng.gen_range(0..8),
                    1 => data[i] = rng.gen(),
                    2 => data[i] = [0x00, 0xff, 0x7f, 0x80][rng.gen_range(0..4)],
                    _ => {
                        // Overwrite 8 bytes with an extreme u64 (counts, lengths, dims).
                        let v: u64 = [u64::MAX, 1 << 40, 1 << 32, 4097, 5][rng.gen_range(0..5)];
                        let end = (i + 8).min(data.len());
                        data[i..end].copy_from_slice(&v.to_le_bytes()[..end - i]);
                    }
                }
            }
            if rng.gen_bool(0.2) {
                data.truncate(rng.gen_range(0..=data.len()));
            }
            check(&data);
        }
        for _ in 0..2_000 {
            let len = rng.gen_range(0..256);
            let mut data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if data.len() >= 8 && rng.gen_bool(0.5) {
                data[..8].copy_from_slice(b"GGUF\x03\0\0\0");
            }
            check(&data);
        }
    }

    #[test]
    fn real_models_if_present() {
        let Some(home) = std::env::var_os("HELLAS_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hellas")))
        else {
            return;
        };
        let smol = home.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
        if smol.exists() {
            let info = GgufFile::open(&smol).unwrap().model_info().unwrap();
            assert_eq!((info.architecture.as_str(), info.n_layer, info.n_vocab), ("llama", 30, 49152));
            assert_eq!(info.file_type.as_deref(), Some("Q4_1"));
        }
        let gemma = home.join("models/gemma-3-270m-q4_k_m.gguf");
        if gemma.exists() {
            let info = GgufFile::open(&gemma).unwrap().model_info().unwrap();
            assert_eq!((info.architecture.as_str(), info.n_layer, info.n_vocab), ("gemma3", 18, 262144));
            assert_eq!(info.swa_layers.iter().filter(|s| !**s).count(), 3);
        }
    }
}
