//! A model reference on Hugging Face, in the form Ollama and llama.cpp take:
//! `hf.co/ORG/REPO`, `hf.co/ORG/REPO:QUANT` (e.g. `Q4_K_M`), or `hf.co/ORG/REPO:FILE.gguf`, each
//! optionally pinned to a revision with `@REVISION` (a branch, tag or commit).

use std::fmt;
use std::str::FromStr;

/// Which of a repository's GGUF files a reference means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// The repository's default: `Q4_K_M` when it has one (as Ollama picks).
    Default,
    /// A quantisation, matched against the files' names, e.g. `Q4_K_M`, `UD-Q4_K_XL`.
    Quant(String),
    /// A file by its path in the repository (for a split model, any of its parts).
    File(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `ORG/REPO`.
    pub repo: String,
    pub selector: Selector,
    /// The branch, tag or commit; `main` when not given.
    pub revision: Option<String>,
}

const EXAMPLE: &str = "hf.co/ggml-org/gemma-3-27b-it-GGUF:Q4_K_M";

impl FromStr for Reference {
    type Err = String;

    fn from_str(text: &str) -> Result<Reference, String> {
        let bad = |why: &str| format!("'{text}' is not a Hugging Face model reference ({why}): use hf.co/ORG/REPO:QUANT, e.g. {EXAMPLE}");
        let rest = text.trim().trim_start_matches("https://").trim_start_matches("http://");
        let rest = ["hf.co/", "huggingface.co/"].iter().find_map(|p| rest.strip_prefix(p)).ok_or_else(|| bad("it does not start with hf.co/"))?;
        let (rest, revision) = match rest.split_once('@') {
            Some((rest, revision)) => (rest, Some(revision)),
            None => (rest, None),
        };
        let (repo, selector) = match rest.split_once(':') {
            Some((repo, selector)) => (repo, Some(selector)),
            None => (rest, None),
        };
        let segment = |s: &str| !s.is_empty() && s.len() <= 96 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) && !s.starts_with('.');
        match repo.split_once('/') {
            Some((org, name)) if segment(org) && segment(name) => {}
            _ => return Err(bad("the repository must be ORG/REPO")),
        }
        let selector = match selector {
            None => Selector::Default,
            Some("") => return Err(bad("nothing follows ':'")),
            Some(s) if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b)) || s.contains("..") => {
                return Err(bad("the quantisation or file has characters a file name does not"))
            }
            Some(s) if s.to_ascii_lowercase().ends_with(".gguf") => Selector::File(s.to_string()),
            Some(s) => Selector::Quant(s.to_string()),
        };
        if let Some(revision) = revision {
            let ok = !revision.is_empty() && revision.len() <= 128 && revision.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b)) && !revision.contains("..");
            if !ok {
                return Err(bad("the revision after '@' must be a branch, tag or commit"));
            }
        }
        Ok(Reference { repo: repo.to_string(), selector, revision: revision.map(str::to_string) })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hf.co/{}", self.repo)?;
        match &self.selector {
            Selector::Default => {}
            Selector::Quant(q) => write!(f, ":{q}")?,
            Selector::File(file) => write!(f, ":{file}")?,
        }
        if let Some(revision) = &self.revision {
            write!(f, "@{revision}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_people_paste() {
        let r: Reference = "hf.co/unsloth/Qwen3-30B-A3B-Instruct-2507-GGUF:Q4_K_M".parse().unwrap();
        assert_eq!((r.repo.as_str(), &r.selector, r.revision.as_deref()), ("unsloth/Qwen3-30B-A3B-Instruct-2507-GGUF", &Selector::Quant("Q4_K_M".into()), None));
        let r: Reference = "https://huggingface.co/ggml-org/gpt-oss-20b-GGUF".parse().unwrap();
        assert_eq!(r.selector, Selector::Default);
        let r: Reference = "hf.co/org/repo:sub/Model-Q8_0-00001-of-00002.gguf@3f2a9c".parse().unwrap();
        assert_eq!((&r.selector, r.revision.as_deref()), (&Selector::File("sub/Model-Q8_0-00001-of-00002.gguf".into()), Some("3f2a9c")));
        assert_eq!(r.to_string(), "hf.co/org/repo:sub/Model-Q8_0-00001-of-00002.gguf@3f2a9c");
        for bad in ["org/repo:Q4", "hf.co/repo", "hf.co/org/repo:", "hf.co/org/../x", "hf.co/org/repo:../../etc/passwd", "hf.co/org/repo@", "hf.co/org/re po"] {
            let err = bad.parse::<Reference>().unwrap_err();
            assert!(err.contains("hf.co/ORG/REPO:QUANT"), "{bad}: {err}");
        }
    }
}
