//! What every image step shares: digests of its inputs, a cache of its outputs keyed by them,
//! and running a tool with its output in the build log and a clear error when it fails.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};

use crate::cache;

/// The sha256 of a step's inputs, fed in order.
pub struct Inputs(Sha256);

impl Inputs {
    pub fn new(step: &str) -> Inputs {
        let mut hasher = Sha256::new();
        hasher.update(step.as_bytes());
        Inputs(hasher)
    }

    pub fn text(mut self, label: &str, value: &str) -> Inputs {
        for part in [label, value] {
            self.0.update((part.len() as u64).to_le_bytes());
            self.0.update(part.as_bytes());
        }
        self
    }

    /// Every file below `path` (names, modes, link targets and contents), in name order.
    pub fn tree(mut self, label: &str, path: &Path) -> Result<Inputs> {
        self = self.text("tree", label);
        let mut files = Vec::new();
        walk(path, path, &mut files)?;
        files.sort();
        for relative in files {
            let full = path.join(&relative);
            let meta = fs::symlink_metadata(&full).with_context(|| format!("reading {}", full.display()))?;
            let kind = if meta.file_type().is_symlink() {
                format!("link {}", fs::read_link(&full)?.display())
            } else {
                use std::os::unix::fs::PermissionsExt;
                format!("file {:o} {}", meta.permissions().mode(), file_sha256(&full)?)
            };
            self = self.text(&relative.to_string_lossy(), &kind);
        }
        Ok(self)
    }

    pub fn file(self, label: &str, path: &Path) -> Result<Inputs> {
        let digest = file_sha256(path)?;
        Ok(self.text(label, &digest))
    }

    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(root, &path, out)?;
        } else {
            out.push(path.strip_prefix(root).expect("below root").to_path_buf());
        }
    }
    Ok(())
}

pub fn file_sha256(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The template engine for `*.hbs` files: strict (a missing key is an error) and without HTML
/// escaping (these are config files, not pages).
pub fn handlebars() -> handlebars::Handlebars<'static> {
    let mut h = handlebars::Handlebars::new();
    h.set_strict_mode(true);
    h.register_escape_fn(handlebars::no_escape);
    h
}

/// A step's output directory under `$HELLAS_CACHE/image/<step>/<digest>`, built by `build`
/// into a temporary directory and renamed into place only when it succeeded. Older outputs of
/// the same step are removed, so the cache holds one of each.
pub fn cached_dir(progress: &Progress, step: &str, digest: &str, build: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let dir = progress.cache.join(step);
    let done = dir.join(&digest[..16]);
    if done.is_dir() {
        progress.note(&format!("{step}: cached ({})", &digest[..12]));
        return Ok(done);
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    cache::remove_stale(&done)?;
    let staging = cache::temp_path(&done, "tmp");
    cache::remove_any(&staging)?;
    fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let started = Instant::now();
    progress.start(step);
    if let Err(err) = build(&staging) {
        cache::remove_any(&staging)?;
        return Err(err.context(format!("image step '{step}' failed")));
    }
    for old in fs::read_dir(&dir)?.flatten() {
        let name = old.file_name();
        if !name.to_string_lossy().starts_with('.') {
            cache::remove_any(&old.path())?;
        }
    }
    fs::rename(&staging, &done).with_context(|| format!("renaming {} to {}", staging.display(), done.display()))?;
    progress.finish(step, started);
    Ok(done)
}

/// Step progress: a spinner with the running step and its time, and one line per step.
pub struct Progress {
    bar: indicatif::ProgressBar,
    pub log: PathBuf,
    /// Where step outputs are cached (`$HELLAS_CACHE/image`, or a fresh one to prove a build
    /// repeats).
    pub cache: PathBuf,
}

impl Progress {
    pub fn new(log: PathBuf, cache: PathBuf) -> Result<Progress> {
        if let Some(dir) = log.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        File::create(&log).with_context(|| format!("creating the build log {}", log.display()))?;
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("a valid template"));
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        Ok(Progress { bar, log, cache })
    }

    pub fn start(&self, step: &str) {
        self.bar.reset_elapsed();
        self.bar.set_message(format!("image: {step}"));
    }

    pub fn finish(&self, step: &str, started: Instant) {
        self.note(&format!("{step}: done in {:.0} s", started.elapsed().as_secs_f64()));
    }

    pub fn note(&self, line: &str) {
        // Without a terminal the bar is hidden and would swallow its lines too (CI logs).
        if self.bar.is_hidden() {
            eprintln!("==> image: {line}");
        } else {
            self.bar.println(format!("==> image: {line}"));
        }
    }

    /// Runs a step in the open (uncached), with the spinner and a done line.
    pub fn step<T>(&self, step: &str, work: impl FnOnce() -> Result<T>) -> Result<T> {
        let started = Instant::now();
        self.start(step);
        let result = work().with_context(|| format!("image step '{step}' failed"))?;
        self.finish(step, started);
        Ok(result)
    }

    pub fn done(&self) {
        self.bar.finish_and_clear();
    }

    /// Runs `expr` with its output appended to the build log; on failure the error names the
    /// command and quotes the end of its output.
    pub fn run(&self, what: &str, expr: duct::Expression) -> Result<()> {
        let mut log = OpenOptions::new().append(true).open(&self.log).with_context(|| format!("opening {}", self.log.display()))?;
        writeln!(log, "\n==> {what}: {expr:?}")?;
        let start = log.metadata()?.len();
        let output = expr
            .stdin_null()
            .stderr_to_stdout()
            .stdout_file(log.try_clone()?)
            .unchecked()
            .run()
            .with_context(|| format!("{what}: could not start {expr:?} (is the tool installed? `cargo xtask deps`)"))?;
        if !output.status.success() {
            let text = fs::read(&self.log).unwrap_or_default();
            let tail = String::from_utf8_lossy(&text[(start as usize).min(text.len())..]);
            let lines: Vec<&str> = tail.lines().collect();
            let tail = lines[lines.len().saturating_sub(25)..].join("\n");
            bail!("{what} failed ({}): {expr:?}\n--- last lines (full log: {}) ---\n{tail}", output.status, self.log.display());
        }
        Ok(())
    }
}
