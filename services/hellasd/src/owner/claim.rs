//! The claim code: a short secret, new each boot until the box has an owner, shown on the local
//! console (getty issue text), on the serial port and by `hellasd claim-code` as root. Whoever
//! claims the box must type it, so a neighbour on the same network cannot take the box. A code
//! seeded on the stick (`crate::seed`) is kept in `owner.json` and used every boot instead of a
//! random one, until the box is claimed.
//!
//! It lives in the runtime directory (a tmpfs, so every boot starts without one): `claim-code`
//! holds the code, `claim.issue` the text agetty shows above the login prompt (the image links
//! `/etc/issue.d/50-hellas.issue` to it).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hellas_contract::claim_code::{check as check_code, format, normalise, ALPHABET, LEN};
use rand::Rng;

use crate::state_file::{write_atomically, write_atomically_with_mode};

/// This boot's claim code and the console's text about the box, in the runtime directory.
/// (The code: letters and digits without 0/O and 1/I, 32 symbols, 5 bits each, 40 bits.)
pub struct ClaimFiles {
    dir: PathBuf,
    /// The web certificate's fingerprint, shown with the HTTPS address.
    fingerprint: Option<String>,
}

impl ClaimFiles {
    pub fn new(runtime_dir: &Path) -> ClaimFiles {
        ClaimFiles { dir: runtime_dir.to_path_buf(), fingerprint: None }
    }

    /// Shows the web certificate's fingerprint on the console with the HTTPS address.
    pub fn with_fingerprint(mut self, fingerprint: Option<String>) -> ClaimFiles {
        self.fingerprint = fingerprint;
        self
    }

    fn certificate_lines(&self, url: &str) -> String {
        match &self.fingerprint {
            Some(fingerprint) => format!("Over HTTPS: {url}. When the browser warns about the certificate, check that it shows this SHA-256 fingerprint:\n{fingerprint}\n"),
            None => String::new(),
        }
    }

    pub fn code_path(&self) -> PathBuf {
        self.dir.join("claim-code")
    }

    pub fn issue_path(&self) -> PathBuf {
        self.dir.join("claim.issue")
    }

    /// This boot's code, made now if there is none yet: the `kept` one (seeded, from
    /// `owner.json`) when there is one, else a random one.
    pub fn ensure(&self, kept: Option<&str>) -> Result<String> {
        if let Some(code) = self.current()? {
            // Written again: whoever made the code first (the seed, as root) may not have known
            // the certificate's fingerprint yet. The code stands either way.
            if let Err(e) = self.write_issue(&code) {
                tracing::warn!("updating the console's claim text: {e:#}");
            }
            return Ok(code);
        }
        let code = kept.filter(|c| check_code(c).is_ok()).map_or_else(generate, str::to_string);
        self.set(&code)?;
        Ok(code)
    }

    /// Makes `code` this boot's code, replacing any other.
    pub fn set(&self, code: &str) -> Result<()> {
        fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        write_atomically_with_mode(&self.code_path(), format!("{code}\n").as_bytes(), 0o600)?;
        self.write_issue(code)
    }

    /// The console's text for an unclaimed box with this code.
    fn write_issue(&self, code: &str) -> Result<()> {
        write_atomically(
            &self.issue_path(),
            format!(
                "\nHellas is not set up yet. Open http://\\4/ or http://hellas.local/ and enter the claim code {code}\n{}\n",
                self.certificate_lines("https://\\4/")
            )
            .as_bytes(),
        )
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
            let url = format!("https://{box_name}.local/");
            write_atomically(&self.issue_path(), format!("\nHellas: {url} (API on port 8080)\n{}\n", self.certificate_lines(&url)).as_bytes())?;
        }
        Ok(())
    }
}

pub fn generate() -> String {
    let mut rng = rand::rngs::OsRng;
    let raw: String = (0..LEN).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect();
    format(&raw)
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
        let code = files.ensure(None).unwrap();
        assert!(check_code(&code).is_ok(), "{code}");
        assert_eq!(files.ensure(Some("ABCD-EF23")).unwrap(), code);
        assert!(fs::read_to_string(files.issue_path()).unwrap().contains(&code));
        files.claimed("hellas").unwrap();
        assert_eq!(files.current().unwrap(), None);
        assert!(!fs::read_to_string(files.issue_path()).unwrap().contains(&code));
    }

    #[test]
    fn a_kept_code_is_used_instead_of_a_random_one() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ClaimFiles::new(dir.path()).ensure(Some("ABCD-EF23")).unwrap(), "ABCD-EF23");
        let next_boot = tempfile::tempdir().unwrap();
        let damaged = ClaimFiles::new(next_boot.path()).ensure(Some("abcd-ef23")).unwrap();
        assert!(check_code(&damaged).is_ok() && damaged != "ABCD-EF23", "{damaged}");
        for bad in ["ABCD-EF2", "ABCDEF23", "ABCD-EF20", "abcd-ef23", "ABCD_EF23", "ABCD-EF23 "] {
            assert!(check_code(bad).is_err(), "{bad}");
        }
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
