//! `cargo xtask engine`: llama.cpp for the host tests, from the same Debian packages the
//! image ships rather than a source build. mmdebstrap makes a Debian root tree in
//! `engine/tree`; `engine/bin/*` are launchers that run its binaries through the tree's
//! own dynamic loader, so they need neither root nor chroot and never touch the host's
//! (older) libc. The tree is rebuilt only when `engine/stamp` no longer matches its inputs.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::{env, fs};

use anyhow::{bail, Context, Result};
use duct::cmd;
use sha2::{Digest, Sha256};

use crate::{cache, deps};

const SUITE: &str = "forky";
/// The image's engine packages: llama.cpp with its RPC and Vulkan backends, and Mesa's Vulkan
/// drivers, whose software device (lavapipe) lets the tests see llama.cpp place a model on a
/// Vulkan device. The Vulkan loader looks for drivers on the host, not in the tree, so a test
/// that wants that device names the tree's `usr/share/vulkan/icd.d/lvp_icd.json` in
/// `VK_DRIVER_FILES` and sets `GGML_VK_VISIBLE_DEVICES=0` (ggml skips CPU-type devices unless
/// told); without them the Vulkan backend finds no device and llama-server runs on the CPU.
const PACKAGES: &[&str] = &[
    "llama.cpp-tools",
    "llama.cpp-tools-extra",
    "libggml0-backend-rpc",
    "libggml0-backend-vulkan",
    "mesa-vulkan-drivers",
];
/// Bump when a change to this file changes what ends up in the tree, to rebuild old trees.
const RECIPE_VERSION: u32 = 2;

/// Launcher name and the binary it runs, relative to the tree.
const LAUNCHERS: &[(&str, &str)] = &[
    ("llama-server", "usr/bin/llama-server"),
    ("llama-fit-params", "usr/bin/llama-fit-params"),
    (
        "ggml-rpc-server",
        "usr/libexec/x86_64-linux-gnu/llama/bin/ggml-rpc-server",
    ),
];
const LIB: &str = "usr/lib/x86_64-linux-gnu";
const LOADER: &str = "ld-linux-x86-64.so.2";

#[derive(clap::Args)]
pub struct Engine {
    /// Rebuild the tree even when its stamp is current.
    #[arg(long)]
    refresh: bool,
    /// Refuse Release files past their Valid-Until date.
    ///
    /// Off by default so the tree also builds from a snapshot mirror (HELLAS_MIRROR),
    /// whose Release files have expired; signatures are checked either way.
    #[arg(long, env = "HELLAS_CHECK_VALID_UNTIL")]
    check_valid_until: bool,
}

impl Engine {
    pub fn run(&self) -> Result<()> {
        if env::consts::ARCH != "x86_64" {
            bail!(
                "the engine tree is amd64 Debian; this host is {}",
                env::consts::ARCH
            );
        }
        deps::ensure(&[deps::MMDEBSTRAP])?;
        let cache = cache::root()?;
        if cache.to_string_lossy().contains(':') {
            bail!(
                "HELLAS_CACHE may not contain ':' (it goes into a library path): {}",
                cache.display()
            );
        }
        let engine = cache.join("engine");
        cache::remove_stale(&engine)?;
        cache::remove_stale(&cache.join("apt"))?;
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").context("reading /proc/cpuinfo")?;
        let variant = cpu_variant(&cpuinfo);

        let stamp = input_stamp(&mirror());
        let built = fs::read_to_string(engine.join("stamp")).unwrap_or_default();
        if !self.refresh && built.trim() == stamp && engine.join("tree").is_dir() {
            println!("==> engine: up to date (stamp {})", &stamp[..12]);
        } else {
            let staging = cache::temp_path(&engine, "tmp");
            let result = self.build(&cache, &staging, &engine, &stamp, variant);
            if let Err(err) = result {
                cache::remove_any(&staging)?;
                return Err(err);
            }
            cache::replace_dir(&staging, &engine)?;
            println!(
                "==> engine: built {} (stamp {})",
                engine.display(),
                &stamp[..12]
            );
        }
        if write_launchers(&engine, &engine, variant)? {
            println!("==> engine: launchers updated (CPU backend {variant})");
        }
        let version = smoke_check(&[engine.join("bin/llama-server").into()])
            .context("the engine does not run; `cargo xtask engine --refresh` rebuilds it")?;
        println!("==> engine: llama-server {version} (CPU backend {variant})");
        Ok(())
    }

    /// Builds a complete engine directory at `staging` whose launchers point at `engine`,
    /// where it will be renamed to.
    fn build(
        &self,
        cache: &Path,
        staging: &Path,
        engine: &Path,
        stamp: &str,
        variant: &str,
    ) -> Result<()> {
        println!(
            "==> engine: building a Debian {SUITE} tree with {} (mmdebstrap)",
            PACKAGES.join(", ")
        );
        fs::create_dir_all(staging).with_context(|| format!("creating {}", staging.display()))?;
        let tree = staging.join("tree");
        let apt = cache.join("apt");
        let apt_new = cache::temp_path(&apt, "tmp");
        let mut args: Vec<OsString> = vec![
            "--variant=apt".into(),
            "--format=directory".into(),
            format!("--include={}", PACKAGES.join(",")).into(),
        ];
        if !self.check_valid_until {
            args.push(r#"--aptopt=Acquire::Check-Valid-Until "false""#.into());
        }
        let keep_debs = apt_cache_hooks(&apt, &apt_new)?;
        args.extend(keep_debs.iter().cloned());
        args.extend([SUITE.into(), tree.clone().into()]);
        args.extend(mirror().map(OsString::from));
        let status = cmd("mmdebstrap", &args)
            .stdin_null()
            .run()
            .with_context(|| format!("mmdebstrap failed to build {}", tree.display()));
        if let Err(err) = status {
            cache::remove_any(&apt_new)?;
            return Err(err);
        }
        if !keep_debs.is_empty() {
            cache::replace_dir(&apt_new, &apt)?;
        }
        fs::write(staging.join("stamp"), format!("{stamp}\n"))
            .with_context(|| format!("writing {}", staging.join("stamp").display()))?;
        write_launchers(staging, engine, variant)?;
        // The launchers name the final paths, so check the staged tree through its own.
        smoke_check(&launcher_command(staging, LAUNCHERS[0].1))?;
        Ok(())
    }
}

fn mirror() -> Option<String> {
    env::var("HELLAS_MIRROR")
        .ok()
        .filter(|mirror| !mirror.is_empty())
}

/// The sha256 of everything that decides what goes into the tree.
fn input_stamp(mirror: &Option<String>) -> String {
    let inputs = format!(
        "suite={SUITE}\npackages={}\nrecipe={RECIPE_VERSION}\nmirror={}\n",
        PACKAGES.join(","),
        mirror.as_deref().unwrap_or("")
    );
    hex::encode(Sha256::digest(inputs))
}

/// mmdebstrap's documented way to keep .debs between builds: copy `apt` into the tree's
/// archive cache before downloading, drop versions the archive no longer has, and copy the
/// cache out to `apt_new`, which replaces `apt` once the build succeeded. mmdebstrap splits
/// these hooks on whitespace, so a cache path with spaces goes without.
fn apt_cache_hooks(apt: &Path, apt_new: &Path) -> Result<Vec<OsString>> {
    let (Some(from), Some(to)) = (apt.to_str(), apt_new.to_str()) else {
        return Ok(vec![]);
    };
    if from.contains(char::is_whitespace) {
        println!("==> engine: not keeping .debs ({from} contains whitespace)");
        return Ok(vec![]);
    }
    for dir in [apt, apt_new] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(vec![
        "--skip=essential/unlink".into(),
        r#"--setup-hook=mkdir -p "$1"/var/cache/apt/archives"#.into(),
        format!("--setup-hook=sync-in {from} /var/cache/apt/archives").into(),
        r#"--customize-hook=chroot "$1" apt-get autoclean"#.into(),
        format!("--customize-hook=sync-out /var/cache/apt/archives {to}").into(),
    ])
}

/// The CPU backend the launchers load. Left alone, ggml loads the fanciest variant this CPU
/// runs (avx512, amx, ...); we pin a common one instead so that dev boxes and CI runners
/// execute the same kernels and the tests see the same numerics everywhere. Haswell (AVX2)
/// covers most x86-64 machines since 2013, and speed is the device's business, not the tests'.
fn cpu_variant(cpuinfo: &str) -> &'static str {
    let flags: HashSet<&str> = cpuinfo
        .lines()
        .find(|line| line.starts_with("flags"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, flags)| flags.split_whitespace().collect())
        .unwrap_or_default();
    let has = |wanted: &[&str]| wanted.iter().all(|flag| flags.contains(flag));
    // The flags ggml builds each variant with (GGML_CPU_ALL_VARIANTS).
    if has(&["sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"]) {
        "haswell"
    } else if has(&["sse4_2"]) {
        "sse42"
    } else {
        "x64"
    }
}

/// How to run `binary` from the tree in `engine`: the loader, its options, the binary.
fn launcher_command(engine: &Path, binary: &str) -> Vec<OsString> {
    let tree = engine.join("tree");
    let lib = tree.join(LIB);
    let library_path = format!("{0}/llama:{0}", lib.display());
    vec![
        engine.join("backends").join(LOADER).into(),
        "--library-path".into(),
        library_path.into(),
        tree.join(binary).into(),
    ]
}

/// Writes `dir/bin/*` and `dir/backends/` for an engine that will live at `engine`.
///
/// ggml looks for its backends (CPU, RPC) next to the running executable, which for a
/// binary started through the loader is the loader itself, found via /proc/self/exe. So
/// `backends/` holds a copy of the tree's loader (a symlink would resolve back into the
/// tree) beside links to exactly the backends we want. Setting GGML_BACKEND_PATH instead
/// loads only one backend, and llama-server then refuses `--rpc`. A GGML_BACKEND_PATH set
/// by the caller is still loaded on top.
fn write_launchers(dir: &Path, engine: &Path, variant: &str) -> Result<bool> {
    let backends = dir.join("backends");
    let bin = dir.join("bin");
    for sub in [&backends, &bin] {
        fs::create_dir_all(sub).with_context(|| format!("creating {}", sub.display()))?;
    }
    let lib = dir.join("tree").join(LIB);
    let loader = fs::read(lib.join(LOADER))
        .with_context(|| format!("reading {}", lib.join(LOADER).display()))?;
    let mut changed = cache::write_if_changed(&backends.join(LOADER), &loader, 0o755)?;
    let wanted = [
        format!("libggml-cpu-{variant}.so"),
        "libggml-rpc.so".to_string(),
        "libggml-vulkan.so".to_string(),
    ];
    for name in &wanted {
        let target = Path::new("../tree")
            .join(LIB)
            .join("ggml/backends0")
            .join(name);
        if !backends.join(&target).exists() {
            bail!(
                "{} is missing from the tree",
                lib.join("ggml/backends0").join(name).display()
            );
        }
        changed |= replace_symlink(&backends.join(name), &target)?;
    }
    // Drop backends chosen for another CPU, or ggml would load the best of them.
    for entry in
        fs::read_dir(&backends).with_context(|| format!("reading {}", backends.display()))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != LOADER && !wanted.contains(&name) {
            cache::remove_any(&entry.path())?;
            changed = true;
        }
    }
    for (name, binary) in LAUNCHERS {
        let command = launcher_command(engine, binary);
        let script = format!(
            "#!/bin/sh\n\
             # Written by `cargo xtask engine`: runs {binary} from the Debian {SUITE} tree\n\
             # through the tree's own loader (see xtask/src/engine.rs). `exec` keeps one PID.\n\
             exec {} \"$@\"\n",
            shell_words(&command)
        );
        changed |= cache::write_if_changed(&bin.join(name), script.as_bytes(), 0o755)?;
    }
    Ok(changed)
}

fn replace_symlink(link: &Path, target: &Path) -> Result<bool> {
    if fs::read_link(link).ok().as_deref() == Some(target) {
        return Ok(false);
    }
    let temp = cache::temp_path(link, "tmp");
    cache::remove_any(&temp)?;
    symlink(target, &temp)
        .with_context(|| format!("linking {} to {}", temp.display(), target.display()))?;
    fs::rename(&temp, link)
        .with_context(|| format!("renaming {} to {}", temp.display(), link.display()))?;
    Ok(true)
}

/// Runs `command --version` and returns the version it prints.
fn smoke_check(command: &[OsString]) -> Result<String> {
    let mut args: Vec<OsString> = command[1..].to_vec();
    args.push("--version".into());
    let shown = shell_words(&[command, &["--version".into()]].concat());
    let output = cmd(&command[0], &args)
        .stdin_null()
        .stderr_to_stdout()
        .stdout_capture()
        .unchecked()
        .run()
        .with_context(|| format!("running `{shown}`"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.lines().find_map(|line| line.strip_prefix("version:"));
    match version {
        Some(version) if output.status.success() => Ok(version.trim().to_string()),
        _ => bail!("`{shown}` failed ({}):\n{}", output.status, text.trim_end()),
    }
}

/// `words` quoted for sh, for launchers and for error messages.
fn shell_words(words: &[OsString]) -> String {
    let quote = |word: &OsString| {
        let word = word.to_string_lossy();
        if !word.is_empty()
            && word
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@".contains(c))
        {
            word.into_owned()
        } else {
            format!("'{}'", word.replace('\'', r"'\''"))
        }
    };
    words.iter().map(quote).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_variant_follows_flags() {
        let haswell = "processor : 0\nflags : fpu sse4_2 avx avx2 fma f16c bmi2 avx512f\n";
        assert_eq!(cpu_variant(haswell), "haswell");
        assert_eq!(cpu_variant("flags\t\t: fpu sse4_2 avx\n"), "sse42");
        assert_eq!(cpu_variant("flags : fpu sse2\n"), "x64");
        assert_eq!(cpu_variant(""), "x64");
    }

    #[test]
    fn stamp_depends_on_mirror() {
        assert_eq!(input_stamp(&None), input_stamp(&None));
        assert_ne!(
            input_stamp(&None),
            input_stamp(&Some("http://mirror.invalid/debian".into()))
        );
    }

    #[test]
    fn launcher_quotes_paths_for_sh() {
        let words = [OsString::from("/a b/ld.so"), "--x".into(), "it's".into()];
        assert_eq!(shell_words(&words), r#"'/a b/ld.so' --x 'it'\''s'"#);
    }
}
