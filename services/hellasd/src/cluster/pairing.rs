//! One-time join codes and the proofs that pair two boxes.
//!
//! The owner of box A shows a code (60 random bits, shown as `XXXX-XXXX-XXXX`, valid ten
//! minutes); the owner of box B types it on B. B connects to A over TLS and sends an HMAC of the
//! TLS session's exported keying material keyed with the code; A answers with its own HMAC over
//! the same session. Each proves it knows the code on this session, so a box in the middle, which
//! would hold two different sessions, can relay nothing useful, and it gets one guess: A forgets
//! the code at the first attempt, right or wrong.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

/// Crockford's base32: no I, L, O or U to misread.
const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const CODE_CHARS: usize = 12;
pub const CODE_LIFETIME: Duration = Duration::from_secs(600);

pub struct JoinCode {
    code: String,
    expires: Instant,
}

impl JoinCode {
    pub fn new() -> JoinCode {
        let mut rng = rand::thread_rng();
        let code = (0..CODE_CHARS)
            .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
            .collect();
        JoinCode {
            code,
            expires: Instant::now() + CODE_LIFETIME,
        }
    }

    /// `XXXX-XXXX-XXXX`.
    pub fn display(&self) -> String {
        let chars: Vec<char> = self.code.chars().collect();
        chars
            .chunks(4)
            .map(|c| c.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join("-")
    }

    pub fn expired(&self) -> bool {
        Instant::now() >= self.expires
    }

    pub fn remaining(&self) -> Duration {
        self.expires.saturating_duration_since(Instant::now())
    }

    pub fn code(&self) -> &str {
        &self.code
    }
}

/// The code as typed, in its canonical form: case, spaces and dashes do not matter, and the
/// letters Crockford reads as digits are taken as those digits.
pub fn normalize(typed: &str) -> Result<String, String> {
    let code: String = typed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        })
        .collect();
    if code.len() != CODE_CHARS || !code.bytes().all(|b| ALPHABET.contains(&b)) {
        return Err(format!("a join code is {CODE_CHARS} letters and digits like ABCD-EFGH-JKMN, as the other box's dashboard shows it"));
    }
    Ok(code)
}

/// Which side of the pairing a proof speaks for, so one side's proof cannot be sent back as the
/// other's.
#[derive(Clone, Copy)]
pub enum Role {
    Joiner,
    Host,
}

fn mac(code: &str, role: Role, session: &[u8; 32]) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(code.as_bytes()).expect("HMAC takes any key length");
    mac.update(match role {
        Role::Joiner => b"hellas-pair-v1 joiner",
        Role::Host => b"hellas-pair-v1 host",
    });
    mac.update(session);
    mac
}

pub fn proof(code: &str, role: Role, session: &[u8; 32]) -> String {
    hex::encode(mac(code, role, session).finalize().into_bytes())
}

pub fn verify(code: &str, role: Role, session: &[u8; 32], proof_hex: &str) -> bool {
    hex::decode(proof_hex).is_ok_and(|bytes| mac(code, role, session).verify_slice(&bytes).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_read_back_however_typed() {
        let code = JoinCode::new();
        let shown = code.display();
        assert_eq!(shown.len(), 14);
        assert_eq!(
            normalize(&shown.to_lowercase().replace('-', " ")).unwrap(),
            code.code()
        );
        assert_eq!(normalize("0o1i-L234-5678").unwrap(), "001112345678");
        assert!(normalize("ABCD-EFGH").unwrap_err().contains("12 letters"));
        assert!(normalize("ABCD-EFGH-JKMU").is_err());
    }

    #[test]
    fn proofs_bind_code_role_and_session() {
        let session = [7u8; 32];
        let p = proof("ABCDEFGHJKMN", Role::Joiner, &session);
        assert!(verify("ABCDEFGHJKMN", Role::Joiner, &session, &p));
        assert!(!verify("ABCDEFGHJKMP", Role::Joiner, &session, &p));
        assert!(!verify("ABCDEFGHJKMN", Role::Host, &session, &p));
        assert!(!verify("ABCDEFGHJKMN", Role::Joiner, &[8u8; 32], &p));
        assert!(!verify("ABCDEFGHJKMN", Role::Joiner, &session, "zz"));
    }
}
