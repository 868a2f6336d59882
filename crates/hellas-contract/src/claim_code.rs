//! The claim code: `XXXX-XXXX` from an alphabet without look-alikes (no I, O, 0 or 1), typed by
//! whoever claims a box. The box makes one each boot, or keeps one seeded on the stick.

/// The letters and digits a code is made of.
pub const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
/// Characters in a code, without its dash.
pub const LEN: usize = 8;

/// A code as it is written down: `XXXX-XXXX` from the alphabet, upper case.
pub fn check(code: &str) -> Result<(), String> {
    let shaped = code.len() == LEN + 1
        && code.bytes().enumerate().all(|(i, b)| if i == LEN / 2 { b == b'-' } else { ALPHABET.contains(&b) });
    if shaped {
        Ok(())
    } else {
        Err(format!("'{code}' is not a claim code: use XXXX-XXXX from {}", std::str::from_utf8(ALPHABET).unwrap()))
    }
}

/// `LEN` characters of the alphabet, written down with their dash.
pub fn format(raw: &str) -> String {
    format!("{}-{}", &raw[..LEN / 2], &raw[LEN / 2..])
}

/// What a person typed, without spaces or dashes, upper-cased.
pub fn normalise(input: &str) -> String {
    input.chars().filter(|c| !c.is_whitespace() && *c != '-').map(|c| c.to_ascii_uppercase()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_one_shape() {
        assert!(check("QEMU-2345").is_ok());
        for bad in ["QEMU2345", "qemu-2345", "QEMU-2341", "QEMU-23456", "QEM-U2345", "OOOO-0000"] {
            assert!(check(bad).is_err(), "{bad}");
        }
        assert_eq!(format("ABCD2345"), "ABCD-2345");
        assert_eq!(normalise(" abcd - 2345 "), "ABCD2345");
    }
}
