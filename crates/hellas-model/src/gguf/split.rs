//! Split GGUFs: one model in several files, `<prefix>-00001-of-0000N.gguf`, as llama.cpp's
//! gguf-split writes them (and Hugging Face repositories carry models over 50 GB). Each part is
//! a GGUF of its own holding some of the tensors; every part carries `split.no` (from 0),
//! `split.count` and `split.tensors.count`, and the first holds the model's metadata. llama.cpp
//! loads the first part and opens the others beside it by name.

use super::*;

const SPLIT_NO: &str = "split.no";
const SPLIT_COUNT: &str = "split.count";
const SPLIT_TENSORS: &str = "split.tensors.count";

/// `(prefix, part number from 1, part count)` of a split file's name.
pub fn parse_name(file: &str) -> Option<(&str, u32, u32)> {
    let stem = file.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, no) = rest.rsplit_once('-')?;
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(no) || !digits(count) || prefix.is_empty() {
        return None;
    }
    let (no, count) = (no.parse().ok()?, count.parse().ok()?);
    (no >= 1 && no <= count).then_some((prefix, no, count))
}

/// The name of part `no` (from 1) of `count`, as llama.cpp looks for it.
pub fn part_name(prefix: &str, no: u32, count: u32) -> String {
    format!("{prefix}-{no:05}-of-{count:05}.gguf")
}

impl GgufFile {
    /// How many files the model is split into (1 for a whole file).
    pub fn split_count(&self) -> Result<u32> {
        Ok(self.get_u32(SPLIT_COUNT)?.unwrap_or(1).max(1))
    }

    /// A split model's parts, in order, read as one: the first part's metadata with every
    /// part's tensors. Each part must say it is that part of this many, and together they must
    /// hold the tensors the split counts.
    pub fn join_split(parts: Vec<GgufFile>) -> Result<GgufFile> {
        let mut parts = parts.into_iter();
        let Some(mut joined) = parts.next() else {
            return Err(GgufError::BadValue { key: SPLIT_COUNT.into(), reason: "names no parts".into() });
        };
        let count = joined.split_count()?;
        let mut seen = 1;
        for (i, part) in parts.enumerate() {
            let no = part.get_u32(SPLIT_NO)?;
            if no != Some(i as u32 + 1) || part.split_count()? != count {
                return Err(GgufError::BadValue {
                    key: SPLIT_NO.into(),
                    reason: format!("part {} of the split says it is part {} of {}", i + 2, no.map_or(0, |n| n + 1), part.split_count()?),
                });
            }
            joined.tensors.extend(part.tensors);
            seen += 1;
        }
        if seen != count {
            return Err(GgufError::BadValue { key: SPLIT_COUNT.into(), reason: format!("is {count}, but {seen} parts were given") });
        }
        if let Some(expected) = joined.get_u32(SPLIT_TENSORS)? {
            if expected as usize != joined.tensors.len() {
                return Err(GgufError::BadValue {
                    key: SPLIT_TENSORS.into(),
                    reason: format!("is {expected}, but the parts hold {} tensors", joined.tensors.len()),
                });
            }
        }
        Ok(joined)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::GgufBuilder;
    use super::*;

    fn part(no: u32, count: u32, tensors: u32, names: &[&str]) -> GgufFile {
        let mut builder = GgufBuilder::new().u32(SPLIT_NO, no).u32(SPLIT_COUNT, count).u32(SPLIT_TENSORS, tensors);
        if no == 0 {
            builder = builder.str("general.architecture", "llama");
        }
        for name in names {
            builder = builder.tensor(name, &[64, 64], 0, 64 * 64 * 4);
        }
        let bytes = builder.build();
        GgufFile::parse(bytes.as_slice(), bytes.len() as u64).unwrap()
    }

    #[test]
    fn names_follow_llama_cpp() {
        assert_eq!(part_name("Qwen3-235B-Q4_K_M", 2, 3), "Qwen3-235B-Q4_K_M-00002-of-00003.gguf");
        assert_eq!(parse_name("Qwen3-235B-Q4_K_M-00002-of-00003.gguf"), Some(("Qwen3-235B-Q4_K_M", 2, 3)));
        for bad in ["model.gguf", "m-2-of-3.gguf", "m-00004-of-00003.gguf", "-00001-of-00002.gguf", "m-00001-of-00002.bin"] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn parts_join_into_one_model() {
        let joined = GgufFile::join_split(vec![part(0, 3, 4, &["a", "b"]), part(1, 3, 4, &["c"]), part(2, 3, 4, &["d"])]).unwrap();
        assert_eq!(joined.tensors.len(), 4);
        assert_eq!(joined.get_str("general.architecture"), Some("llama"));
        let missing = GgufFile::join_split(vec![part(0, 3, 4, &["a", "b"]), part(2, 3, 4, &["d"])]).unwrap_err().to_string();
        assert!(missing.contains("part 2 of the split says it is part 3 of 3"), "{missing}");
        let short = GgufFile::join_split(vec![part(0, 3, 4, &["a", "b"]), part(1, 3, 4, &["c"])]).unwrap_err().to_string();
        assert!(short.contains("is 3, but 2 parts were given"), "{short}");
        let lost = GgufFile::join_split(vec![part(0, 2, 4, &["a"]), part(1, 2, 4, &["c"])]).unwrap_err().to_string();
        assert!(lost.contains("the parts hold 2 tensors"), "{lost}");
    }
}
