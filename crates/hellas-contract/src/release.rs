//! Release and channel file names and partition labels. `cargo xtask image` labels the
//! partitions, `cargo xtask release` names the channel's files, and the box's systemd-sysupdate
//! matches both with the patterns below, so each name is made here and nowhere else.
//!
//! A release is `<name>_<version>` (the image's name and version). Its root partition carries
//! that label and its dm-verity partition `<release>_verity`; in a channel they travel as
//! `<release>_<uuid>.root.zst` and `<release>_<uuid>.verity.zst` (the UKI's `roothash=` finds
//! both partitions by UUIDs derived from the root hash), with the UKI as `<release>.efi`.

/// The channel's checksums of every file it holds, and their detached signature.
pub const SUMS: &str = "SHA256SUMS";
pub const SUMS_SIGNATURE: &str = "SHA256SUMS.gpg";

/// The partition that holds `/var`: the owner's state, models and logs.
pub const DATA_LABEL: &str = "hellas-data";
/// The label of a root slot that holds no release (slot B of a new image).
pub const EMPTY_LABEL: &str = "_empty";
/// The EFI system partition's label.
pub const ESP_LABEL: &str = "ESP";

/// `<name>_<version>`: a release, and the label of the root partition holding it.
pub fn release(name: &str, version: &str) -> String {
    format!("{name}_{version}")
}

pub fn root_label(name: &str, version: &str) -> String {
    release(name, version)
}

pub fn verity_label(name: &str, version: &str) -> String {
    format!("{}_verity", release(name, version))
}

/// Which of a release's partitions a channel file carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Root,
    Verity,
}

impl Slot {
    pub fn label(self, name: &str, version: &str) -> String {
        match self {
            Slot::Root => root_label(name, version),
            Slot::Verity => verity_label(name, version),
        }
    }

    /// The channel file of this partition, whose UUID is `uuid`.
    pub fn file(self, name: &str, version: &str, uuid: &str) -> String {
        let kind = match self {
            Slot::Root => "root",
            Slot::Verity => "verity",
        };
        format!("{}_{uuid}.{kind}.zst", release(name, version))
    }
}

/// The UKI in a channel.
pub fn uki_file(name: &str, version: &str) -> String {
    format!("{}.efi", release(name, version))
}

/// The UKI on the ESP, with systemd-boot's boot-counting tries left.
pub fn uki_with_tries(name: &str, version: &str, tries: u32) -> String {
    format!("{}+{tries}.efi", release(name, version))
}

/// Whether `file` in a channel belongs to release `<name>_<version>`.
pub fn belongs_to(file: &str, name: &str, version: &str) -> bool {
    let release = release(name, version);
    file.strip_prefix(&release).is_some_and(|rest| rest.starts_with('_') || rest == ".efi")
}

/// systemd-sysupdate's patterns for the same names: `@v` the version, `@u` a partition UUID,
/// `@l`/`@d` the boot-counting tries left and done.
pub mod patterns {
    use super::*;

    pub fn file(slot: Slot, name: &str) -> String {
        slot.file(name, "@v", "@u")
    }

    pub fn label(slot: Slot, name: &str) -> String {
        slot.label(name, "@v")
    }

    pub fn uki_file(name: &str) -> String {
        super::uki_file(name, "@v")
    }

    /// The UKI on the ESP: counting tries, tries used up, or blessed.
    pub fn uki_on_esp(name: &str) -> [String; 3] {
        let release = release(name, "@v");
        [format!("{release}+@l-@d.efi"), format!("{release}+@l.efi"), format!("{release}.efi")]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_their_patterns_agree() {
        assert_eq!(Slot::Root.file("hellas", "0.2.0", "abc"), "hellas_0.2.0_abc.root.zst");
        assert_eq!(patterns::file(Slot::Verity, "hellas"), "hellas_@v_@u.verity.zst");
        assert_eq!(Slot::Verity.label("hellas", "0.2.0"), "hellas_0.2.0_verity");
        assert_eq!(patterns::label(Slot::Root, "hellas"), "hellas_@v");
        assert_eq!(uki_with_tries("hellas", "0.2.0", 3), "hellas_0.2.0+3.efi");
        assert_eq!(patterns::uki_on_esp("hellas")[2], patterns::uki_file("hellas"));
        assert!(belongs_to("hellas_0.2.0_abc.root.zst", "hellas", "0.2.0") && belongs_to("hellas_0.2.0.efi", "hellas", "0.2.0"));
        assert!(!belongs_to("hellas_0.2.0.1_abc.root.zst", "hellas", "0.2.0") && !belongs_to("hellas_0.2.0.1.efi", "hellas", "0.2.0"));
    }
}
