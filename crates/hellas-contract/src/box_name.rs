//! A box's name is one DNS label: the box answers as `<name>.local` and uses it as its host name.

pub const MAX_LEN: usize = 63;

/// 1 to 63 lower-case letters, digits and inner hyphens.
pub fn check(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_LEN
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("'{name}' cannot be a box name: use 1 to 63 lower-case letters, digits and inner hyphens, e.g. hellas-kitchen"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_dns_label() {
        for good in ["hellas", "hellas-kitchen", "a", "box2", &"x".repeat(63)] {
            assert!(check(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "Hellas", "a.b", "a_b", "ä", &"x".repeat(64)] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }
}
