//! Choosing a reference's files among a repository's: the model's GGUF for the quantisation
//! asked (every part of a split one, in order) and the vision projector (`mmproj…`) beside it.

use hellas_model::gguf::split;

use super::Selector;

/// A file in a repository, as the Hub lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct RepoFile {
    pub path: String,
    pub size: u64,
    /// The Git LFS object id, which is the file's sha256; `None` for a file kept in Git itself.
    pub sha256: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    /// The model's files: one, or a split model's parts in order.
    pub parts: Vec<RepoFile>,
    pub projector: Option<RepoFile>,
}

/// A model in the repository: one file, or the parts of a split one.
struct Group<'a> {
    /// The path without `.gguf` (for a split, without the part suffix).
    name: String,
    parts: Vec<&'a RepoFile>,
    count: u32,
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn is_projector(path: &str) -> bool {
    file_name(path).to_ascii_lowercase().starts_with("mmproj")
}

fn groups(files: &[RepoFile]) -> Vec<Group<'_>> {
    let mut groups: Vec<Group> = Vec::new();
    for file in files.iter().filter(|f| f.path.to_ascii_lowercase().ends_with(".gguf") && !is_projector(&f.path)) {
        let (name, count) = match split::parse_name(&file.path) {
            Some((prefix, _, count)) => (prefix.to_string(), count),
            None => (file.path[..file.path.len() - ".gguf".len()].to_string(), 1),
        };
        match groups.iter_mut().find(|g| g.name == name && g.count == count) {
            Some(group) => group.parts.push(file),
            None => groups.push(Group { name, parts: vec![file], count }),
        }
    }
    for group in &mut groups {
        group.parts.sort_by_key(|f| split::parse_name(&f.path).map_or(1, |(_, no, _)| no));
    }
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    groups
}

/// Where `quant` stands in `name` as a whole word (between `-`, `.`, `/` or the ends);
/// `Some(true)` when it ends the name, as quantisation suffixes do.
fn quant_in(name: &str, quant: &str) -> Option<bool> {
    let (name, quant) = (name.to_ascii_lowercase(), quant.to_ascii_lowercase());
    let bounded = |c: Option<char>| c.is_none_or(|c| "-./".contains(c));
    let mut found = None;
    for (at, _) in name.match_indices(&quant) {
        let before = name[..at].chars().next_back();
        let after = name[at + quant.len()..].chars().next();
        if bounded(before) && bounded(after) {
            found = Some(found.unwrap_or(false) || after.is_none());
        }
    }
    found
}

/// The files `selector` means among `files`, or what to ask for instead.
pub fn choose(repo: &str, files: &[RepoFile], selector: &Selector) -> Result<Choice, String> {
    let groups = groups(files);
    if groups.is_empty() {
        return Err(format!("hf.co/{repo} holds no GGUF model: pick a repository that publishes GGUF files (their names often end in -GGUF)"));
    }
    let offered = || groups.iter().map(|g| file_name(&g.name).to_string()).collect::<Vec<_>>().join(", ");
    let group = match selector {
        Selector::File(path) => groups
            .iter()
            .find(|g| g.parts.iter().any(|f| f.path == *path || file_name(&f.path) == path.as_str()))
            .ok_or_else(|| format!("hf.co/{repo} has no file {path}; its models: {}", offered()))?,
        Selector::Quant(quant) => pick_quant(&groups, quant).map_err(|many| match many {
            0 => format!("hf.co/{repo} has no {quant} model; its models: {}", offered()),
            _ => format!("{quant} matches several models in hf.co/{repo}: name the file instead, e.g. hf.co/{repo}:{}.gguf", groups[0].name),
        })?,
        Selector::Default => match pick_quant(&groups, "Q4_K_M") {
            Ok(group) => group,
            Err(_) if groups.len() == 1 => &groups[0],
            Err(_) => return Err(format!("hf.co/{repo} has several models and none is Q4_K_M: add one to the reference, e.g. hf.co/{repo}:{} (its models: {})", quant_guess(&groups[0].name), offered())),
        },
    };
    if group.parts.len() as u32 != group.count {
        let have: Vec<u32> = group.parts.iter().filter_map(|f| split::parse_name(&f.path).map(|(_, no, _)| no)).collect();
        let missing: Vec<String> = (1..=group.count).filter(|n| !have.contains(n)).map(|n| split::part_name(file_name(&group.name), n, group.count)).collect();
        return Err(format!("hf.co/{repo} lacks part(s) {} of the split model {}: the repository is incomplete; try another quantisation", missing.join(", "), group.name));
    }
    if let Some(unverifiable) = group.parts.iter().find(|f| f.sha256.is_none()) {
        return Err(format!("hf.co/{repo}: {} is not stored in Git LFS, so the Hub records no sha256 to check it against", unverifiable.path));
    }
    // The projector beside the model (same folder), full precision first, as the vision
    // models' own repositories recommend.
    let folder = |p: &str| p.rsplit_once('/').map_or("", |(d, _)| d).to_string();
    let mut projectors: Vec<&RepoFile> = files.iter().filter(|f| is_projector(&f.path) && f.sha256.is_some() && folder(&f.path) == folder(&group.parts[0].path)).collect();
    projectors.sort_by_key(|f| {
        let name = file_name(&f.path).to_ascii_lowercase();
        (!name.contains("f16") && !name.contains("bf16"), name)
    });
    Ok(Choice { parts: group.parts.iter().map(|f| (*f).clone()).collect(), projector: projectors.first().map(|f| (*f).clone()) })
}

/// The one group `quant` names: one whose name ends with it beats one that has it inside.
fn pick_quant<'a, 'g>(groups: &'g [Group<'a>], quant: &str) -> Result<&'g Group<'a>, usize> {
    let matches: Vec<(&Group, bool)> = groups.iter().filter_map(|g| quant_in(&g.name, quant).map(|at_end| (g, at_end))).collect();
    let at_end: Vec<&Group> = matches.iter().filter(|(_, e)| *e).map(|(g, _)| *g).collect();
    match (at_end.as_slice(), matches.as_slice()) {
        ([one], _) => Ok(one),
        ([], [(one, _)]) => Ok(one),
        (_, all) => Err(all.len()),
    }
}

/// The last word of a model's name, which is usually its quantisation.
fn quant_guess(name: &str) -> &str {
    file_name(name).rsplit(['-', '.']).next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> RepoFile {
        RepoFile { path: path.into(), size: 1, sha256: Some(format!("{:064x}", path.len())) }
    }

    fn repo() -> Vec<RepoFile> {
        [
            "README.md",
            "Qwen3-30B-A3B-Q4_K_M.gguf",
            "Qwen3-30B-A3B-UD-Q4_K_XL.gguf",
            "Qwen3-30B-A3B-Q8_0.gguf",
            "BF16/Qwen3-30B-A3B-BF16-00002-of-00002.gguf",
            "BF16/Qwen3-30B-A3B-BF16-00001-of-00002.gguf",
            "Q6_K/Qwen3-30B-A3B-Q6_K-00001-of-00002.gguf",
            "mmproj-F32.gguf",
            "mmproj-F16.gguf",
        ]
        .iter()
        .map(|p| file(p))
        .collect()
    }

    fn paths(choice: &Choice) -> Vec<&str> {
        choice.parts.iter().map(|f| f.path.as_str()).collect()
    }

    #[test]
    fn quants_files_and_defaults() {
        let files = repo();
        let q = |s: &str| choose("o/r", &files, &Selector::Quant(s.into()));
        assert_eq!(paths(&q("q8_0").unwrap()), ["Qwen3-30B-A3B-Q8_0.gguf"]);
        assert_eq!(paths(&q("UD-Q4_K_XL").unwrap()), ["Qwen3-30B-A3B-UD-Q4_K_XL.gguf"]);
        assert_eq!(paths(&q("BF16").unwrap()), ["BF16/Qwen3-30B-A3B-BF16-00001-of-00002.gguf", "BF16/Qwen3-30B-A3B-BF16-00002-of-00002.gguf"]);
        let default = choose("o/r", &files, &Selector::Default).unwrap();
        assert_eq!(paths(&default), ["Qwen3-30B-A3B-Q4_K_M.gguf"]);
        assert_eq!(default.projector.unwrap().path, "mmproj-F16.gguf", "full precision first");
        let by_part = choose("o/r", &files, &Selector::File("Qwen3-30B-A3B-BF16-00002-of-00002.gguf".into())).unwrap();
        assert_eq!(by_part.parts.len(), 2);
        assert!(by_part.projector.is_none(), "no projector in that folder");
    }

    #[test]
    fn what_cannot_be_pulled_says_why() {
        let files = repo();
        let err = choose("o/r", &files, &Selector::Quant("Q5_K_M".into())).unwrap_err();
        assert!(err.contains("has no Q5_K_M model") && err.contains("Qwen3-30B-A3B-Q8_0"), "{err}");
        let err = choose("o/r", &files, &Selector::Quant("Q6_K".into())).unwrap_err();
        assert!(err.contains("Qwen3-30B-A3B-Q6_K-00002-of-00002.gguf") && err.contains("incomplete"), "{err}");
        let err = choose("o/r", &files, &Selector::Quant("Qwen3".into())).unwrap_err();
        assert!(err.contains("matches several models"), "{err}");
        let err = choose("o/r", &[file("README.md")], &Selector::Default).unwrap_err();
        assert!(err.contains("holds no GGUF model"), "{err}");
        let mut plain = file("model-Q4_K_M.gguf");
        plain.sha256 = None;
        let err = choose("o/r", &[plain], &Selector::Default).unwrap_err();
        assert!(err.contains("not stored in Git LFS"), "{err}");
        let two = [file("a-Q8_0.gguf"), file("b-Q6_K.gguf")];
        let err = choose("o/r", &two, &Selector::Default).unwrap_err();
        assert!(err.contains("none is Q4_K_M") && err.contains("hf.co/o/r:Q8_0"), "{err}");
    }
}
