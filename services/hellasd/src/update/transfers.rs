//! The systemd-sysupdate transfer definitions: root partition, its dm-verity hash partition and
//! the UKI, bound together by one version. They are written for each run from the configured
//! channel (the root file system is read-only, and the owner may change the channel).
//!
//! The channel serves what `cargo xtask release` writes, named by `hellas_contract::release`:
//! each release's root and verity partitions and its UKI, and `SHA256SUMS` with its signature.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use hellas_contract::release::{patterns, Slot};

/// Writes the three `.transfer` files for `channel` into `dir`, replacing what was there;
/// `name` (the image's `IMAGE_ID`) prefixes every release file and partition label.
pub fn write(dir: &Path, name: &str, channel: &str, boot_tries: u32) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (file, text) in definitions(name, channel, boot_tries) {
        let path = dir.join(file);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn definitions(name: &str, channel: &str, boot_tries: u32) -> [(&'static str, String); 3] {
    let channel = channel.trim_end_matches('/');
    // The booted version is never overwritten, whichever slot it is in.
    let transfer = "[Transfer]\nProtectVersion=%A\nVerify=yes\n";
    let source = |pattern: &str| format!("[Source]\nType=url-file\nPath={channel}/\nMatchPattern={pattern}\n");
    let partition = |label: &str, kind: &str| {
        format!("[Target]\nType=partition\nPath=auto\nMatchPattern={label}\nMatchPartitionType={kind}\nReadOnly=1\n")
    };
    [
        ("10-root-verity.transfer", format!("{transfer}\n{}\n{}", source(&patterns::file(Slot::Verity, name)), partition(&patterns::label(Slot::Verity, name), "root-verity"))),
        ("20-root.transfer", format!("{transfer}\n{}\n{}", source(&patterns::file(Slot::Root, name)), partition(&patterns::label(Slot::Root, name), "root"))),
        // Last, so that a release is bootable only once both partitions are written; named with
        // boot-counting tries (`+3`), which systemd-bless-boot drops once the health check passes.
        // Writable: on FAT a read-only file is one systemd-boot cannot rename to count a try.
        (
            "30-uki.transfer",
            format!(
                "{transfer}\n{}\n[Target]\nType=regular-file\nPath=/EFI/Linux\nPathRelativeTo=boot\nMatchPattern={}\nMode=0644\nTriesLeft={boot_tries}\nTriesDone=0\nInstancesMax=2\n",
                source(&patterns::uki_file(name)),
                patterns::uki_on_esp(name).join(" ")
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_name_the_channel_and_the_tries() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "hellas", "http://updates.test/stable/", 1).unwrap();
        let uki = fs::read_to_string(dir.path().join("30-uki.transfer")).unwrap();
        assert!(uki.contains("Path=http://updates.test/stable/\n"), "{uki}");
        assert!(uki.contains("TriesLeft=1\n"), "{uki}");
        let root = fs::read_to_string(dir.path().join("20-root.transfer")).unwrap();
        assert!(root.contains("MatchPattern=hellas_@v_@u.root.zst"), "{root}");
        assert!(root.contains("MatchPattern=hellas_@v\n"), "{root}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3);
    }
}
