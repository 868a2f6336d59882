//! Builds GGUF files for tests (the reader's, the planner's, hellasd's and the fuzz seed).

use super::MetaType;

/// A GGUF writer covering what the tests need.
#[derive(Default)]
pub struct GgufBuilder {
    kvs: Vec<(String, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, u64)>,
    /// Data offsets written instead of the laid-out ones, by tensor index.
    offsets: Vec<(usize, u64)>,
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

    /// Writes `offset` as the last tensor's data offset instead of where it lies.
    pub fn at_offset(mut self, offset: u64) -> Self {
        self.offsets.push((self.tensors.len() - 1, offset));
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = self.build_header();
        out.resize(out.len() + self.data_bytes() as usize, 0);
        out
    }

    /// The header and tensor table only, padded to where the data starts: for a file whose data
    /// is a hole (`set_len` to the header's length plus [`GgufBuilder::data_bytes`]).
    pub fn build_header(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            string(&mut out, k);
            out.extend(v);
        }
        let mut offset = 0u64;
        for (i, (name, dims, ty, n_bytes)) in self.tensors.iter().enumerate() {
            string(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(ty.to_le_bytes());
            let written = self.offsets.iter().find(|o| o.0 == i).map_or(offset, |o| o.1);
            out.extend(written.to_le_bytes());
            offset += n_bytes.div_ceil(32) * 32;
        }
        out.resize(out.len().div_ceil(32) * 32, 0);
        out
    }

    /// The bytes of tensor data the header describes, padded as laid out.
    pub fn data_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.3.div_ceil(32) * 32).sum()
    }
}
