//! `cargo xtask fuzz [--secs N]`: coverage-guided fuzzing of the GGUF reader for a fixed time.
//!
//! The target (`crates/hellas-model/fuzz`) is built with the stable toolchain: libFuzzer comes
//! from the `libfuzzer-sys` crate (compiled with the host's C++ compiler) and the coverage
//! instrumentation from LLVM's `sancov-module` pass, which stable rustc runs when asked with
//! `-Cpasses`. No sanitizer runs (those need nightly); a panic, an overflow (overflow checks
//! are on), an abort, a hang past `--timeout` or memory past `--rss-limit-mb` is a crash.
//! libFuzzer starts from the checked-in corpus (real headers, see `--regenerate-corpus`) and
//! every past crasher, writes what it finds new to a scratch directory under the target
//! directory, and saves a crashing input into `fuzz/crashers/`, where
//! `cargo test -p hellas-model` replays it from then on.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use duct::cmd;

use crate::{cache, deps, workspace};

const FUZZ_DIR: &str = "crates/hellas-model/fuzz";

/// The instrumentation cargo-fuzz uses, minus the sanitizer: edge counters and comparison
/// operands for libFuzzer, with debug assertions and overflow checks in the optimised build.
const RUSTFLAGS: &str = "--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks";

#[derive(clap::Args)]
pub struct Fuzz {
    /// How long to fuzz, in seconds.
    #[arg(long, default_value_t = 60)]
    pub secs: u64,
    /// The longest one input may take, in seconds, before it counts as a hang.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// Resident memory past which the run counts as a crash (an unbounded allocation).
    #[arg(long, default_value_t = 1024)]
    pub rss_limit_mb: u64,
    /// Instead of fuzzing, rewrite fuzz/corpus/ from the models under $HELLAS_CACHE (test models
    /// and shape-only models): their headers and tensor tables, no weights, long arrays cut short.
    #[arg(long)]
    pub regenerate_corpus: bool,
}

impl Fuzz {
    /// A run of `secs` seconds with the default limits, as `cargo xtask test` makes it.
    pub fn for_secs(secs: u64) -> Fuzz {
        Fuzz { secs, timeout: 10, rss_limit_mb: 1024, regenerate_corpus: false }
    }

    pub fn run(&self) -> Result<()> {
        let ws = workspace::locate()?;
        let fuzz_dir = ws.root.join(FUZZ_DIR);
        if self.regenerate_corpus {
            return regenerate_corpus(&cache::root()?, &fuzz_dir.join("corpus"));
        }
        deps::ensure(&[deps::GXX])?;
        let target = build(&fuzz_dir, &ws.target.join("fuzz"))?;
        let crashers = fuzz_dir.join("crashers");
        let scratch = ws.target.join("fuzz/corpus");
        fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
        let before = list(&crashers)?;
        println!("==> fuzz: the GGUF reader for {} s", self.secs);
        let args: Vec<String> = vec![
            format!("-max_total_time={}", self.secs),
            format!("-timeout={}", self.timeout),
            format!("-rss_limit_mb={}", self.rss_limit_mb),
            format!("-dict={}", fuzz_dir.join("gguf.dict").display()),
            format!("-artifact_prefix={}/", crashers.display()),
            "-print_final_stats=1".into(),
            scratch.display().to_string(),
            fuzz_dir.join("corpus").display().to_string(),
            crashers.display().to_string(),
        ];
        let status = cmd(&target, &args).unchecked().run().with_context(|| format!("running {}", target.display()))?;
        if status.status.success() {
            return Ok(());
        }
        let found: Vec<PathBuf> = list(&crashers)?.into_iter().filter(|p| !before.contains(p)).collect();
        let found: Vec<String> = found.iter().map(|p| p.strip_prefix(&ws.root).unwrap_or(p).display().to_string()).collect();
        bail!(
            "the GGUF reader crashed under fuzzing; the input is saved as {}. Replay it with `{} {}` \
             (a backtrace) or `cargo test -p hellas-model replay_fuzz_inputs`, fix the reader, and commit the \
             file: that test replays every crasher from then on",
            if found.is_empty() { "nothing (see libFuzzer's output above)".into() } else { found.join(", ") },
            target.strip_prefix(&ws.root).unwrap_or(&target).display(),
            found.first().map_or("CRASH_FILE", String::as_str),
        )
    }
}

/// Builds the fuzz target into `target_dir` and returns its path. `--target` keeps the
/// instrumentation off build scripts and proc-macros, which run on the host uninstrumented.
fn build(fuzz_dir: &Path, target_dir: &Path) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let host = host_triple()?;
    println!("==> fuzz: building the fuzz target (stable rustc, sancov, libFuzzer)");
    cmd!(&cargo, "build", "--release", "--locked", "--bin", "gguf", "--target", &host, "--target-dir", target_dir)
        .dir(fuzz_dir)
        .env("RUSTFLAGS", RUSTFLAGS)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .run()
        .context("building the fuzz target in crates/hellas-model/fuzz failed (libfuzzer-sys needs a C++ compiler: apt-get install g++)")?;
    Ok(target_dir.join(host).join("release/gguf"))
}

fn host_triple() -> Result<String> {
    let version = cmd!("rustc", "-vV").read().context("`rustc -vV` failed")?;
    version.lines().find_map(|l| l.strip_prefix("host: ")).map(str::to_string).context("`rustc -vV` names no host")
}

fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    entries.map(|e| Ok(e.with_context(|| format!("listing {}", dir.display()))?.path())).collect()
}

/// Arrays longer than this are cut to it in the corpus: tokenizer vocabularies would make
/// each header megabytes, and a few entries exercise the reader as well as 262 144.
const CORPUS_ARRAY_LEN: u64 = 16;
/// The most of a model's file read for its header.
const HEADER_READ_LIMIT: u64 = 128 << 20;

/// Rewrites `out` from every GGUF under `$HELLAS_CACHE/models` and `shape-models/*`.
fn regenerate_corpus(cache: &Path, out: &Path) -> Result<()> {
    let mut models = Vec::new();
    let shape_dirs = fs::read_dir(cache.join("shape-models")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_else(|_| Vec::new());
    for dir in std::iter::once(cache.join("models")).chain(shape_dirs) {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        models.extend(entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "gguf")));
    }
    ensure!(!models.is_empty(), "no GGUF models under {}: run `cargo xtask models` first", cache.display());
    models.sort();
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for (i, model) in models.iter().enumerate() {
        let mut bytes = Vec::new();
        let file = fs::File::open(model).with_context(|| format!("opening {}", model.display()))?;
        std::io::Read::read_to_end(&mut std::io::Read::take(file, HEADER_READ_LIMIT), &mut bytes)
            .with_context(|| format!("reading {}", model.display()))?;
        let sample = header_sample(&bytes).with_context(|| format!("sampling the header of {}", model.display()))?;
        let stem = model.file_stem().unwrap_or_default().to_string_lossy();
        write_seed(&out.join(format!("real-{stem}.gguf")), &sample.bytes)?;
        if i == 0 {
            write_seed(&out.join(format!("split-{stem}.gguf")), &split_seed(&sample))?;
        }
    }
    Ok(())
}

fn write_seed(dest: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(dest, bytes).with_context(|| format!("writing {}", dest.display()))?;
    println!("==> fuzz: {} ({} bytes)", dest.display(), bytes.len());
    Ok(())
}

/// The first model as a split in two, as gguf-split writes one, its parts back to back (the
/// fuzz target cuts its input into parts at each magic): the model's header with the `split.*`
/// keys, then a second part holding no tensors.
fn split_seed(sample: &Sample) -> Vec<u8> {
    let kv = |no: u16, n_tensors: u64| {
        let mut kvs = Vec::new();
        for (key, ty, value) in [
            ("split.no", 2u32, no.to_le_bytes().to_vec()),
            ("split.count", 2, 2u16.to_le_bytes().to_vec()),
            ("split.tensors.count", 5, (n_tensors as i32).to_le_bytes().to_vec()),
        ] {
            kvs.extend((key.len() as u64).to_le_bytes());
            kvs.extend(key.as_bytes());
            kvs.extend(ty.to_le_bytes());
            kvs.extend(value);
        }
        kvs
    };
    let mut first = sample.bytes.clone();
    let n_kv = u64::from_le_bytes(first[16..24].try_into().expect("8 bytes")) + 3;
    first[16..24].copy_from_slice(&n_kv.to_le_bytes());
    first.splice(sample.kv_end..sample.kv_end, kv(0, sample.n_tensors));
    let mut second = b"GGUF".to_vec();
    second.extend(3u32.to_le_bytes());
    second.extend(0u64.to_le_bytes());
    second.extend(3u64.to_le_bytes());
    second.extend(kv(1, sample.n_tensors));
    first.extend(second);
    first
}

/// A header cut down for the corpus, with where its metadata ends.
struct Sample {
    bytes: Vec<u8>,
    kv_end: usize,
    n_tensors: u64,
}

/// A GGUF file's header and tensor table, byte for byte, except that arrays longer than
/// [`CORPUS_ARRAY_LEN`] keep only their first elements. Walked here independently of the
/// reader under test, so a reader bug cannot shape its own corpus.
fn header_sample(bytes: &[u8]) -> Result<Sample> {
    let mut walk = Walk { bytes, pos: 0, out: Vec::new() };
    ensure!(walk.take(4)? == b"GGUF", "not a GGUF file");
    ensure!((2..=3).contains(&walk.u32()?), "not GGUF version 2 or 3");
    let n_tensors = walk.u64()?;
    let n_kv = walk.u64()?;
    for _ in 0..n_kv {
        walk.string()?;
        let ty = walk.u32()?;
        walk.value(ty)?;
    }
    let kv_end = walk.out.len();
    for _ in 0..n_tensors {
        walk.string()?;
        let n_dims = walk.u32()?;
        walk.take(8 * n_dims as usize + 4 + 8)?;
    }
    Ok(Sample { bytes: walk.out, kv_end, n_tensors })
}

/// A cursor over a GGUF that copies what it passes over to `out`.
struct Walk<'a> {
    bytes: &'a [u8],
    pos: usize,
    out: Vec<u8>,
}

impl Walk<'_> {
    fn skip(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.bytes.len()).context("truncated header")?;
        let taken = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(taken)
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let (start, end) = (self.pos, self.pos + n);
        self.skip(n)?;
        self.out.extend_from_slice(&self.bytes[start..end]);
        Ok(&self.bytes[start..end])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }

    fn string(&mut self) -> Result<()> {
        let len = self.u64()?;
        self.take(usize::try_from(len)?)?;
        Ok(())
    }

    fn value(&mut self, ty: u32) -> Result<()> {
        match ty {
            0 | 1 | 7 => self.take(1).map(drop),
            2 | 3 => self.take(2).map(drop),
            4..=6 => self.take(4).map(drop),
            10..=12 => self.take(8).map(drop),
            8 => self.string(),
            9 => {
                let elem = self.u32()?;
                let len_at = self.out.len();
                let len = self.u64()?;
                let kept = len.min(CORPUS_ARRAY_LEN);
                self.out[len_at..].copy_from_slice(&kept.to_le_bytes());
                for i in 0..len {
                    if i < kept {
                        self.value(elem)?;
                    } else {
                        // Walk past the rest without keeping it.
                        let out_len = self.out.len();
                        self.value(elem)?;
                        self.out.truncate(out_len);
                    }
                }
                Ok(())
            }
            _ => bail!("unknown metadata type {ty}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_sample_cuts_long_arrays_and_drops_the_data() {
        let mut gguf = b"GGUF".to_vec();
        gguf.extend(3u32.to_le_bytes());
        gguf.extend(1u64.to_le_bytes()); // one tensor
        gguf.extend(1u64.to_le_bytes()); // one key
        gguf.extend(1u64.to_le_bytes());
        gguf.extend(b"k");
        gguf.extend(9u32.to_le_bytes()); // an array
        gguf.extend(4u32.to_le_bytes()); // of u32
        gguf.extend(100u64.to_le_bytes());
        (0..100u32).for_each(|i| gguf.extend(i.to_le_bytes()));
        let tensor_at = gguf.len();
        gguf.extend(1u64.to_le_bytes());
        gguf.extend(b"t");
        gguf.extend(1u32.to_le_bytes());
        gguf.extend(32u64.to_le_bytes());
        gguf.extend(0u32.to_le_bytes());
        gguf.extend(0u64.to_le_bytes());
        let table = gguf[tensor_at..].to_vec();
        gguf.extend([0u8; 200]); // padding and data

        let sample = header_sample(&gguf).unwrap().bytes;
        let array_len_at = 4 + 4 + 8 + 8 + 9 + 4 + 4;
        assert_eq!(sample[array_len_at..array_len_at + 8], CORPUS_ARRAY_LEN.to_le_bytes());
        assert_eq!(sample.len(), tensor_at - 4 * (100 - CORPUS_ARRAY_LEN as usize) + table.len());
        assert!(sample.ends_with(&table));
    }
}
