//! The OpenSSH public keys the box accepts for its admin user, one per line: the web settings,
//! the seed file and `cargo xtask flash --ssh-key` all check them here.

/// The key types accepted.
pub const TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// The keys in `text`, one per line, blank lines ignored. Each must be of a type above, with a
/// base64 blob that names the same type, and no control characters.
pub fn parse(text: &str) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().map(str::trim).enumerate().filter(|(_, l)| !l.is_empty()) {
        if !is_key(line) {
            return Err(format!(
                "line {} is not an OpenSSH public key: paste the contents of e.g. ~/.ssh/id_ed25519.pub (it starts with ssh-ed25519)",
                n + 1
            ));
        }
        keys.push(line.to_string());
    }
    Ok(keys)
}

fn is_key(line: &str) -> bool {
    let mut parts = line.split_whitespace();
    let (kind, blob) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let decoded = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, blob).unwrap_or_default();
    // The blob starts with the key type again, after its big-endian length.
    let named = decoded.len() > 4 + kind.len()
        && decoded[..4] == (kind.len() as u32).to_be_bytes()
        && &decoded[4..4 + kind.len()] == kind.as_bytes();
    TYPES.contains(&kind) && named && !line.chars().any(|c| c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@laptop";

    #[test]
    fn keys_are_decoded_not_only_recognised() {
        assert_eq!(parse(&format!("\n{ED25519}\n\n")).unwrap(), [ED25519]);
        assert!(parse("ssh-ed25519 bm90IGEga2V5 x").is_err(), "a blob that is not a key");
        assert!(parse("ssh-dss AAAAB3NzaC1kc3MAAACBAP x").is_err(), "a type not accepted");
        assert!(parse(&ED25519.replace("ssh-ed25519", "ssh-rsa")).is_err(), "a blob of another type");
        assert!(parse(&format!("{ED25519}\u{7}")).is_err());
    }
}
