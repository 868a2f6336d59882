//! Step 5: the disk image, by systemd-repart from the tools tree, offline and seeded.
//!
//! repart runs twice, as mkosi does: first every partition but the ESP (whose space is
//! reserved), which yields root-A's dm-verity root hash; the UKI is built with that hash on its
//! command line; then the ESP is added with systemd-boot and the UKI.

use std::ffi::OsString;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use super::step::Progress;
use super::tools::ToolsTree;

/// Fixes every partition and file-system UUID that repart derives, so builds repeat bit for bit.
pub const SEED: &str = "6b6f2f6e-1a1e-4c55-9d7b-68656c6c6173";

/// Renders `image/repart.d/*.conf.hbs` into `work/repart.d`.
pub fn definitions(templates: &Path, work: &Path, context: &Value) -> Result<()> {
    let out = work.join("repart.d");
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let handlebars = super::step::handlebars();
    for entry in fs::read_dir(templates).with_context(|| format!("listing {}", templates.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".hbs")) else { continue };
        let template = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let text = handlebars.render_template(&template, context).with_context(|| format!("rendering {}", path.display()))?;
        fs::write(out.join(name), text).with_context(|| format!("writing {}", out.join(name).display()))?;
    }
    Ok(())
}

fn repart(tools: &ToolsTree, work: &Path, image: &str, extra: &[&str], epoch: u64, progress: &Progress, what: &str) -> Result<Value> {
    let mut args: Vec<OsString> = vec![
        "--offline=yes".into(),
        "--dry-run=no".into(),
        format!("--seed={SEED}").into(),
        "--definitions=/work/repart.d".into(),
        "--copy-source=/work".into(),
        "--json=pretty".into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    args.push(format!("/work/{image}").into());
    let json_path = work.join(format!("{what}.json"));
    let expr = tools
        .command(work, "systemd-repart", &args)
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        // A fixed hash seed keeps ext4 directory hashes, and so the data partition, identical.
        .env("SYSTEMD_REPART_MKFS_OPTIONS_EXT4", "-E hash_seed=6b6f2f6e-1a1e-4c55-9d7b-68656c6c6173")
        .stdout_path(&json_path);
    progress.run(&format!("systemd-repart ({what})"), expr)?;
    let text = fs::read_to_string(&json_path).with_context(|| format!("reading {}", json_path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing systemd-repart's output {}", json_path.display()))
}

/// Everything but the ESP; returns root-A's dm-verity root hash.
pub fn without_esp(tools: &ToolsTree, work: &Path, image: &str, epoch: u64, progress: &Progress) -> Result<String> {
    // repart still reads the deferred ESP's CopyFiles source, so it must exist.
    fs::create_dir_all(work.join("esp"))?;
    let out = repart(tools, work, image, &["--empty=create", "--size=auto", "--defer-partitions=esp"], epoch, progress, "repart-root")?;
    out.as_array()
        .into_iter()
        .flatten()
        .find_map(|p| p["roothash"].as_str().filter(|h| h.len() == 64).map(String::from))
        .context("systemd-repart reported no root hash for root-A")
}

pub fn add_esp(tools: &ToolsTree, work: &Path, image: &str, epoch: u64, progress: &Progress) -> Result<Value> {
    repart(tools, work, image, &[], epoch, progress, "repart-esp")
}
