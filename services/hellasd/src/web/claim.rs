//! The claim code: a short secret, new each boot until the box has an owner, shown on the local
//! console (getty issue text), on the serial port and by `hellasd claim-code` as root. Whoever
//! claims the box must type it, so a neighbour on the same network cannot take the box.
//!
//! It lives in the runtime directory (a tmpfs, so every boot starts without one): `claim-code`
//! holds the code, `claim.issue` the text agetty shows above the login prompt (the image links
//! `/etc/issue.d/50-hellas.issue` to it).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand::Rng;

use crate::state_file::write_atomically;

/// Letters and digits without 0/O and 1/I: 32 symbols, 5 bits each, 40 bits a code.
const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
const LEN: usize = 8;

pub struct ClaimFiles {
    dir: PathBuf,
}

impl ClaimFiles {
    pub fn new(runtime_dir: &Path) -> ClaimFiles {
        ClaimFiles { dir: runtime_dir.to_path_buf() }
    }

    fn code_path(&self) -> PathBuf {
        self.dir.join("claim-code")
    }

    pub fn issue_path(&self) -> PathBuf {
        self.dir.join("claim.issue")
    }

    /// This boot's code, made now if there is none yet.
    pub fn ensure(&self) -> Result<String> {
        if let Some(code) = self.current()? {
            return Ok(code);
        }
        fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let code = generate();
        write_atomically(&self.code_path(), format!("{code}\n").as_bytes())?;
        restrict(&self.code_path())?;
        write_atomically(
            &self.issue_path(),
            format!("\nHellas is not set up yet. Open http://\\4/ or http://hellas.local/ and enter the claim code {code}\n\n").as_bytes(),
        )?;
        Ok(code)
    }

    /// The code, when one was made this boot.
    pub fn current(&self) -> Result<Option<String>> {
        match fs::read_to_string(self.code_path()) {
            Ok(text) => {
                let code = normalise(&text);
                Ok((code.len() == LEN).then(|| format(&code)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.code_path().display())),
        }
    }

    /// The box has an owner: the code is spent and the console says where the box answers.
    pub fn claimed(&self, box_name: &str) -> Result<()> {
        match fs::remove_file(self.code_path()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", self.code_path().display())),
        }
        if self.dir.exists() {
            write_atomically(&self.issue_path(), format!("\nHellas: http://{box_name}.local/ (API on port 8080)\n\n").as_bytes())?;
        }
        Ok(())
    }
}

fn restrict(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).with_context(|| format!("restricting {}", path.display()))
}

pub fn generate() -> String {
    let mut rng = rand::rngs::OsRng;
    let raw: String = (0..LEN).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect();
    format(&raw)
}

fn format(raw: &str) -> String {
    format!("{}-{}", &raw[..LEN / 2], &raw[LEN / 2..])
}

/// What a person typed, without spaces or dashes, upper-cased.
fn normalise(input: &str) -> String {
    input.chars().filter(|c| !c.is_whitespace() && *c != '-').map(|c| c.to_ascii_uppercase()).collect()
}

/// Compares in constant time, so the time taken says nothing about how much was right.
pub fn matches(input: &str, code: &str) -> bool {
    let (a, b) = (normalise(input), normalise(code));
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_made_once_per_boot_and_spent_by_the_claim() {
        let dir = tempfile::tempdir().unwrap();
        let files = ClaimFiles::new(dir.path());
        assert_eq!(files.current().unwrap(), None);
        let code = files.ensure().unwrap();
        assert_eq!(code.len(), 9);
        assert!(code.chars().all(|c| c == '-' || ALPHABET.contains(&(c as u8))));
        assert_eq!(files.ensure().unwrap(), code);
        assert!(fs::read_to_string(files.issue_path()).unwrap().contains(&code));
        files.claimed("hellas").unwrap();
        assert_eq!(files.current().unwrap(), None);
        assert!(!fs::read_to_string(files.issue_path()).unwrap().contains(&code));
    }

    #[test]
    fn typing_is_forgiving_but_exact() {
        assert!(matches("abcd efgh", "ABCD-EFGH"));
        assert!(matches(" ABCD-EFGH\n", "ABCD-EFGH"));
        assert!(!matches("ABCD-EFGJ", "ABCD-EFGH"));
        assert!(!matches("ABCD-EFG", "ABCD-EFGH"));
        assert!(!matches("", "ABCD-EFGH"));
    }
}
