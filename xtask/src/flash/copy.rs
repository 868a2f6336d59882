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
/// syncs. Returns the image's sha256.
pub fn write(image: &Path, target: &Path, block_device: bool, stop_after: Option<u64>) -> Result<String> {
    let mut input = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let len = input.metadata()?.len();
    if len % 512 != 0 {
        bail!("{} is {len} bytes, not whole 512-byte sectors: not a disk image", image.display());
    }
    let mut output = open_direct(target, true, block_device)?;
    let mut buffer = Aligned::new(CHUNK);
    let mut hasher = Sha256::new();
    let progress = bar(len, "writing");
    let limit = stop_after.unwrap_or(len).min(len);
    let mut done = 0u64;
    while done < limit {
        let want = (limit - done).min(CHUNK as u64) as usize;
        let buf = &mut buffer.slice()[..want];
        input.read_exact(buf).with_context(|| format!("reading {}", image.display()))?;
        hasher.update(&*buf);
        if want & (ALIGN - 1) == 0 {
            output.write_all(buf).with_context(|| format!("writing {} at byte {done}", target.display()))?;
        } else {
            // The last, unaligned piece goes through the page cache.
            let mut tail = OpenOptions::new().write(true).open(target).with_context(|| format!("opening {}", target.display()))?;
            std::io::Seek::seek(&mut tail, std::io::SeekFrom::Start(done))?;
            tail.write_all(buf).with_context(|| format!("writing {} at byte {done}", target.display()))?;
            tail.sync_all()?;
        }
        done += want as u64;
        progress.set_position(done);
    }
    output.sync_all().with_context(|| format!("syncing {}", target.display()))?;
    progress.finish_with_message("written");
    if done < len {
        // Only a test stops early: hash the rest so the expected digest is the image's.
        std::io::copy(&mut input, &mut hasher)?;
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The sha256 of the first `len` bytes of `target`, read back with O_DIRECT.
pub fn read_back(target: &Path, len: u64) -> Result<String> {
    let mut input = open_direct(target, false, false)?;
    let mut buffer = Aligned::new(CHUNK);
    let mut hasher = Sha256::new();
    let progress = bar(len, "verifying");
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(CHUNK as u64) as usize;
        let aligned = want.div_ceil(ALIGN) * ALIGN;
        let buf = &mut buffer.slice()[..aligned];
        let mut got = 0;
        while got < want {
            let n = input.read(&mut buf[got..]).with_context(|| format!("reading {} back at byte {}", target.display(), done + got as u64))?;
            if n == 0 {
                bail!("{} ends after {} of the image's {len} bytes", target.display(), done + got as u64);
            }
            got += n;
        }
        hasher.update(&buf[..want]);
        done += want as u64;
        progress.set_position(done);
    }
    progress.finish_with_message("verified");
    Ok(hex::encode(hasher.finalize()))
}
