//! Writing the image to the target with O_DIRECT (the page cache neither hides a slow stick
//! nor answers the verify), then reading it back the same way and comparing sha256.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

const CHUNK: usize = 4 << 20;
const ALIGN: usize = 4096;

/// A buffer O_DIRECT accepts: page-aligned.
struct Aligned {
    ptr: *mut u8,
    layout: Layout,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = Layout::from_size_align(len, ALIGN).expect("a valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        Aligned { ptr, layout }
    }

    fn slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `layout.size()` initialised bytes owned by this buffer.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

// SAFETY: an `Aligned` owns its allocation alone; moving it to another thread moves that.
unsafe impl Send for Aligned {}

/// Runs `produce` on its own thread, handing each filled buffer to `consume` here, so reading
/// and hashing overlap with writing (or reading with hashing). Buffers go round a small pool.
fn pipeline(
    total: u64,
    mut produce: impl FnMut(&mut [u8], u64) -> Result<usize> + Send,
    mut consume: impl FnMut(&[u8], u64) -> Result<()>,
) -> Result<()> {
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Result<(Aligned, usize)>>(2);
    let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Aligned>();
    for _ in 0..3 {
        empty_tx.send(Aligned::new(CHUNK)).expect("the pool is open");
    }
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut at = 0u64;
            while at < total {
                let Ok(mut buffer) = empty_rx.recv() else { return };
                let want = (total - at).min(CHUNK as u64) as usize;
                let filled = produce(&mut buffer.slice()[..want.div_ceil(ALIGN) * ALIGN], at).map(|n| (buffer, n));
                let failed = filled.is_err();
                if full_tx.send(filled).is_err() || failed {
                    return;
                }
                at += want as u64;
            }
        });
        let mut at = 0u64;
        while at < total {
            let (mut buffer, n) = full_rx.recv().context("the reading thread stopped")??;
            consume(&buffer.slice()[..n], at)?;
            at += n as u64;
            let _ = empty_tx.send(buffer);
        }
        Ok(())
    })
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

fn bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

fn open_direct(path: &Path, write: bool, exclusive: bool) -> Result<File> {
    let mut options = OpenOptions::new();
    options.read(!write).write(write);
    let mut flags = nix::libc::O_DIRECT;
    if exclusive {
        // On a block device O_EXCL (without O_CREAT) fails while anything else holds it open.
        flags |= nix::libc::O_EXCL;
    }
    options.custom_flags(flags);
    options.open(path).with_context(|| format!("opening {} (in use by another program?)", path.display()))
}

/// Copies the first `stop_after` bytes of `image` (all of it when `None`) to `target` and
/// syncs. Returns the image's sha256: `known` when given (the build's `SHA256SUMS`), which
/// spares hashing the image on the way (hashing is slower than the write), or else hashed here.
pub fn write(image: &Path, target: &Path, block_device: bool, stop_after: Option<u64>, known: Option<&str>) -> Result<String> {
    let mut input = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let len = input.metadata()?.len();
    if len % 512 != 0 {
        bail!("{} is {len} bytes, not whole 512-byte sectors: not a disk image", image.display());
    }
    let mut output = open_direct(target, true, block_device)?;
    let progress = bar(len, "writing");
    let limit = stop_after.unwrap_or(len).min(len);
    let mut hasher = Sha256::new();
    let hashed = &mut hasher;
    pipeline(
        limit,
        |buf, at| {
            let want = (limit - at).min(CHUNK as u64) as usize;
            input.read_exact(&mut buf[..want]).with_context(|| format!("reading {}", image.display()))?;
            if known.is_none() {
                hashed.update(&buf[..want]);
            }
            Ok(want)
        },
        |buf, at| {
            if buf.len() & (ALIGN - 1) == 0 {
                output.write_all(buf).with_context(|| format!("writing {} at byte {at}", target.display()))?;
            } else {
                // The last, unaligned piece goes through the page cache.
                let mut tail = OpenOptions::new().write(true).open(target).with_context(|| format!("opening {}", target.display()))?;
                std::io::Seek::seek(&mut tail, std::io::SeekFrom::Start(at))?;
                tail.write_all(buf).with_context(|| format!("writing {} at byte {at}", target.display()))?;
                tail.sync_all()?;
            }
            progress.set_position(at + buf.len() as u64);
            Ok(())
        },
    )?;
    output.sync_all().with_context(|| format!("syncing {}", target.display()))?;
    progress.finish_with_message("written");
    if let Some(digest) = known {
        return Ok(digest.to_string());
    }
    if limit < len {
        // Only a test stops early: hash the rest so the expected digest is the image's.
        std::io::copy(&mut input, &mut hasher)?;
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The image's sha256 as its build's `SHA256SUMS` (beside it) records it, if it does.
pub fn recorded_digest(image: &Path) -> Option<String> {
    let name = image.file_name()?.to_str()?;
    let sums = std::fs::read_to_string(image.with_file_name("SHA256SUMS")).ok()?;
    sums.lines().find_map(|l| l.strip_suffix(name)?.strip_suffix("  ").filter(|d| d.len() == 64).map(str::to_string))
}

/// The sha256 of the first `len` bytes of `target`, read back with O_DIRECT.
pub fn read_back(target: &Path, len: u64) -> Result<String> {
    let mut input = open_direct(target, false, false)?;
    let mut hasher = Sha256::new();
    let progress = bar(len, "verifying");
    pipeline(
        len,
        |buf, at| {
            let want = (len - at).min(CHUNK as u64) as usize;
            let mut got = 0;
            while got < want {
                let n = input.read(&mut buf[got..]).with_context(|| format!("reading {} back at byte {}", target.display(), at + got as u64))?;
                if n == 0 {
                    bail!("{} ends after {} of the image's {len} bytes", target.display(), at + got as u64);
                }
                got += n;
            }
            Ok(want)
        },
        |buf, at| {
            hasher.update(buf);
            progress.set_position(at + buf.len() as u64);
            Ok(())
        },
    )?;
    progress.finish_with_message("verified");
    Ok(hex::encode(hasher.finalize()))
}
