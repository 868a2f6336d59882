//! Parsing a GGUF header: every length and count checked against the bytes left.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use super::*;


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
    /// String bytes that may still be kept in memory (see [`MAX_STRING_BYTES`]).
    string_budget: u64,
}

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
        let at = self.pos;
        let len = self.string_len(max)?;
        self.string_budget = self.string_budget.checked_sub(len).ok_or_else(|| {
            self.invalid_at(at, format!("the header's strings add up to more than the limit of {MAX_STRING_BYTES} bytes"))
        })?;
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
        let mut r = Reader { inner: reader, pos: 0, file_size, ctx: Ctx::Header, keep_budget: MAX_KEPT_VALUES, string_budget: MAX_STRING_BYTES };

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
        let data_offset = r.pos.div_ceil(alignment).saturating_mul(alignment);

        // Like ggml (`gguf_init_from_file_impl`), tensors must lie back to back in table order,
        // each padded to the alignment: no gaps, no overlaps. So their sizes add up to at most
        // the file's, and a sum over them cannot overflow.
        let mut expected = 0u64;
        for (i, (t, &info_at)) in tensors.iter().zip(&info_offsets).enumerate() {
            r.ctx = Ctx::TensorInfoNamed(i as u64, t.name.clone());
            if t.offset != expected {
                return Err(r.invalid_at(info_at, format!("data offset {} should be {expected}, right after the previous tensor's", t.offset)));
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
            // Saturates only past the end of any file, where the next tensor's check fails.
            expected = t.offset.saturating_add(t.n_bytes.div_ceil(alignment).saturating_mul(alignment));
        }

        Ok(GgufFile { version, metadata, tensors, data_offset, file_size })
    }
}
