//! Which checkout a run of xtask works on: found at run time from the current directory, as
//! cargo finds the workspace of `cargo xtask`, never from where the binary was compiled. With a
//! target directory shared between checkouts, one xtask binary serves them all, and each must
//! read its own `image/` and write its own `out/`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use duct::cmd;
use serde_json::Value;

/// The workspace's paths: the checkout's root, and the target directory cargo builds it into
/// (`cargo metadata` reports it, so a `CARGO_TARGET_DIR` set by CI is honoured).
pub struct Workspace {
    pub root: PathBuf,
    pub target: PathBuf,
}

/// The root of the Hellas checkout holding the current directory.
pub fn root() -> Result<PathBuf> {
    let here = std::env::current_dir().context("reading the current directory")?;
    find_root(&here)
}

/// The root and the target directory of the checkout holding the current directory.
pub fn locate() -> Result<Workspace> {
    let root = root()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let json = cmd!(cargo, "metadata", "--format-version", "1", "--no-deps")
        .dir(&root)
        .stdin_null()
        .read()
        .context("`cargo metadata --format-version 1 --no-deps` failed")?;
    let metadata: Value = serde_json::from_str(&json).context("`cargo metadata` printed no JSON")?;
    let target = metadata["target_directory"].as_str().map(PathBuf::from).context("`cargo metadata` printed no target_directory")?;
    Ok(Workspace { root, target })
}

/// The nearest directory at or above `start` whose `Cargo.toml` declares a `[workspace]` with
/// an `xtask` member.
pub fn find_root(start: &Path) -> Result<PathBuf> {
    for dir in start.ancestors() {
        let manifest = dir.join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let parsed: toml::Table = text.parse().with_context(|| format!("parsing {}", manifest.display()))?;
        let has_xtask = parsed
            .get("workspace")
            .and_then(|w| w.get("members"))
            .and_then(|m| m.as_array())
            .is_some_and(|members| members.iter().any(|m| m.as_str() == Some("xtask")));
        if has_xtask {
            return Ok(dir.to_path_buf());
        }
    }
    bail!("{} is not inside a Hellas checkout (no Cargo.toml above it has a [workspace] with an xtask member): run `cargo xtask` in one", start.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkout(dir: &Path) {
        std::fs::create_dir_all(dir.join("xtask/src")).unwrap();
        std::fs::create_dir_all(dir.join("services/hellasd")).unwrap();
        std::fs::write(dir.join("Cargo.toml"), "[workspace]\nmembers = [\"xtask\", \"services/hellasd\"]\n").unwrap();
        std::fs::write(dir.join("services/hellasd/Cargo.toml"), "[package]\nname = \"hellasd\"\n").unwrap();
    }

    #[test]
    fn each_checkout_finds_its_own_root() {
        let temp = tempfile::tempdir().unwrap();
        let (a, b) = (temp.path().join("a"), temp.path().join("b"));
        checkout(&a);
        checkout(&b);
        // A member's own Cargo.toml is passed over on the way up.
        assert_eq!(find_root(&a.join("services/hellasd")).unwrap(), a);
        assert_eq!(find_root(&b.join("xtask/src")).unwrap(), b);
        assert_eq!(find_root(&b).unwrap(), b);
    }

    #[test]
    fn a_workspace_without_xtask_is_not_a_checkout() {
        let temp = tempfile::tempdir().unwrap();
        std::fs::write(temp.path().join("Cargo.toml"), "[workspace]\nmembers = [\"other\"]\n").unwrap();
        let err = find_root(temp.path()).unwrap_err().to_string();
        assert!(err.contains("not inside a Hellas checkout"), "{err}");
    }

    #[test]
    fn this_checkout_is_found_from_the_test_directory() {
        // cargo runs unit tests in the package's directory, xtask/.
        let root = root().unwrap();
        assert!(root.join("xtask/Cargo.toml").is_file() && root.join("image/hellas.toml").is_file(), "{}", root.display());
    }
}
