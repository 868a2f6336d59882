//! Model downloads from the catalog: resumable, verified, cancellable, and all-or-nothing.
//!
//! A download writes `downloads/<sha256>.partial` on the data partition. After an interruption it
//! continues with an HTTP range request from where the file ends (also after a reboot: partial
//! files of catalog models are resumed at start-up). The sha256 is computed on the way and
//! checked against the catalog at the end; only then is the file fsynced and renamed into the
//! library, so a model in the library is always whole and verified. A mismatch deletes the
//! partial file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use reqwest::{header, StatusCode};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::CatalogEntry;
use crate::library::ModelLibrary;
use hellas_model::plan::format_bytes;

/// Free space left over after a download, for logs and the system.
const SPARE: u64 = 256 << 20;
/// Consecutive failed attempts (no byte gained) before a download gives up.
const MAX_FAILURES: u32 = 6;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Progress {
    Starting,
    Downloading { done: u64, total: u64, bytes_per_sec: u64 },
    /// The connection broke; it continues from `done` after a pause.
    Retrying { done: u64, total: u64, attempt: u32, error: String },
    Verifying { total: u64 },
    Done { name: String },
    Failed { error: String },
    Cancelled,
}

impl Progress {
    pub fn finished(&self) -> bool {
        matches!(self, Progress::Done { .. } | Progress::Failed { .. } | Progress::Cancelled)
    }
}

pub struct Job {
    pub entry: CatalogEntry,
    progress: watch::Sender<Progress>,
    cancel: watch::Sender<bool>,
}

impl Job {
    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }
}

pub struct Downloads {
    dir: PathBuf,
    library: Arc<ModelLibrary>,
    http: reqwest::Client,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
}

impl Downloads {
    pub fn new(dir: PathBuf, library: Arc<ModelLibrary>, http: reqwest::Client) -> Arc<Downloads> {
        Arc::new(Downloads { dir, library, http, jobs: Mutex::new(HashMap::new()) })
    }

    fn partial_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.partial"))
    }

    /// Starts downloading `entry`, or returns the download already under way.
    pub fn start(self: &Arc<Self>, entry: &CatalogEntry) -> Arc<Job> {
        let mut jobs = self.jobs.lock().unwrap();
        if let Some(job) = jobs.get(&entry.sha256) {
            if !job.progress().finished() {
                return job.clone();
            }
        }
        let job = Arc::new(Job { entry: entry.clone(), progress: watch::Sender::new(Progress::Starting), cancel: watch::Sender::new(false) });
        jobs.insert(entry.sha256.clone(), job.clone());
        let downloads = self.clone();
        let running = job.clone();
        tokio::spawn(async move { downloads.run(running).await });
        job
    }

    pub fn get(&self, sha256: &str) -> Option<Arc<Job>> {
        self.jobs.lock().unwrap().get(sha256).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Job>> {
        let mut jobs: Vec<_> = self.jobs.lock().unwrap().values().cloned().collect();
        jobs.sort_by(|a, b| a.entry.name.cmp(&b.entry.name));
        jobs
    }

    /// Stops a download and deletes what it had fetched.
    pub fn cancel(&self, sha256: &str) -> bool {
        match self.get(sha256) {
            Some(job) if !job.progress().finished() => {
                job.cancel.send_replace(true);
                true
            }
            _ => false,
        }
    }

    /// Continues the downloads a restart or reboot interrupted.
    pub fn resume_interrupted(self: &Arc<Self>, catalog: &[CatalogEntry]) {
        for entry in catalog {
            if self.partial_path(&entry.sha256).exists() {
                tracing::info!(model = %entry.name, "resuming an interrupted download");
                self.start(entry);
            }
        }
    }

    async fn run(self: Arc<Self>, job: Arc<Job>) {
        let mut cancel = job.cancel.subscribe();
        let outcome = tokio::select! {
            result = self.fetch(&job) => result,
            _ = cancel.wait_for(|c| *c) => Err(anyhow::anyhow!("cancelled")),
        };
        let partial = self.partial_path(&job.entry.sha256);
        let progress = match outcome {
            Ok(()) => Progress::Done { name: job.entry.name.clone() },
            Err(_) if *job.cancel.borrow() => {
                let _ = std::fs::remove_file(&partial);
                Progress::Cancelled
            }
            Err(e) => {
                tracing::warn!(model = %job.entry.name, "download failed: {e:#}");
                Progress::Failed { error: format!("{e:#}") }
            }
        };
        job.progress.send_replace(progress);
    }

    async fn fetch(&self, job: &Job) -> Result<()> {
        let entry = &job.entry;
        if self.library.get(&entry.name)?.is_some_and(|e| e.sha256 == entry.sha256) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let partial = self.partial_path(&entry.sha256);
        let mut done = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if done > entry.size {
            done = 0;
        }
        let free = free_bytes(&self.dir)?;
        let needed = entry.size - done + SPARE;
        if free < needed {
            bail!(
                "{} needs {} free on the data partition and {} is free: remove a model from the library first",
                entry.name,
                format_bytes(needed),
                format_bytes(free)
            );
        }
        let mut hasher = hash_prefix(&partial, done).await?;
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&partial)
            .await
            .with_context(|| format!("opening {}", partial.display()))?;
        file.set_len(done).await.with_context(|| format!("truncating {}", partial.display()))?;
        let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
        use tokio::io::AsyncSeekExt;
        file.seek(std::io::SeekFrom::Start(done)).await?;

        let mut failures = 0;
        while done < entry.size {
            let before = done;
            let attempt = self.fetch_from(job, &mut file, &mut hasher, &mut done).await;
            file.flush().await.with_context(|| format!("writing {}", partial.display()))?;
            if let Err(e) = attempt {
                failures = if done > before { 1 } else { failures + 1 };
                if failures >= MAX_FAILURES {
                    return Err(e.context(format!("gave up after {failures} attempts; start the download again to continue from {}", format_bytes(done))));
                }
                tracing::info!(model = %entry.name, done, "download interrupted, resuming: {e:#}");
                job.progress.send_replace(Progress::Retrying { done, total: entry.size, attempt: failures, error: format!("{e:#}") });
                tokio::time::sleep(Duration::from_millis(500 << failures.min(6))).await;
            }
        }
        job.progress.send_replace(Progress::Verifying { total: entry.size });
        let file = file.into_inner();
        file.sync_all().await.with_context(|| format!("syncing {}", partial.display()))?;
        drop(file);
        let digest = hex::encode(hasher.finalize());
        if digest != entry.sha256 {
            let _ = std::fs::remove_file(&partial);
            bail!(
                "the downloaded file's sha256 is {digest}, not the catalog's {}: it was damaged on the way or changed at the source; nothing was added to the library, and the download can be started again",
                entry.sha256
            );
        }
        let library = self.library.clone();
        let (name, sha256) = (entry.name.clone(), entry.sha256.clone());
        tokio::task::spawn_blocking(move || library.adopt_verified(&partial, &name, &sha256)).await.context("adding the model")??;
        Ok(())
    }

    /// One request for the bytes from `done` on, appended to `file` as they arrive.
    async fn fetch_from(
        &self,
        job: &Job,
        file: &mut tokio::io::BufWriter<tokio::fs::File>,
        hasher: &mut Sha256,
        done: &mut u64,
    ) -> Result<()> {
        let entry = &job.entry;
        let mut request = self.http.get(&entry.url).timeout(Duration::from_secs(24 * 3600));
        if *done > 0 {
            request = request.header(header::RANGE, format!("bytes={done}-"));
        }
        let response = request.send().await.with_context(|| format!("requesting {}", entry.url))?;
        match response.status() {
            StatusCode::PARTIAL_CONTENT => {
                let range = response.headers().get(header::CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or_default();
                if !range.starts_with(&format!("bytes {done}-")) {
                    bail!("{} answered the range from {done} with '{range}'", entry.url);
                }
            }
            StatusCode::OK if *done > 0 => {
                // The server ignores ranges: start over.
                tracing::info!(url = %entry.url, "the server does not resume; starting over");
                use tokio::io::AsyncSeekExt;
                file.flush().await?;
                file.get_mut().set_len(0).await?;
                file.seek(std::io::SeekFrom::Start(0)).await?;
                *hasher = Sha256::new();
                *done = 0;
            }
            StatusCode::OK => {}
            status => bail!("{} answered {status}", entry.url),
        }
        let mut stream = response.bytes_stream();
        let mut last_report = Instant::now();
        let (mut rate_from, mut rate_bytes, mut rate) = (Instant::now(), *done, 0);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("reading {}", entry.url))?;
            if *done + chunk.len() as u64 > entry.size {
                bail!("{} sends more than the catalog's {} bytes: the catalog entry is wrong or the file changed", entry.url, entry.size);
            }
            file.write_all(&chunk).await.context("writing the download")?;
            hasher.update(&chunk);
            *done += chunk.len() as u64;
            if last_report.elapsed() >= Duration::from_millis(200) || *done == entry.size {
                let window = rate_from.elapsed();
                if window >= Duration::from_secs(1) {
                    rate = ((*done - rate_bytes) as f64 / window.as_secs_f64()) as u64;
                    (rate_from, rate_bytes) = (Instant::now(), *done);
                }
                job.progress.send_replace(Progress::Downloading { done: *done, total: entry.size, bytes_per_sec: rate });
                last_report = Instant::now();
            }
        }
        if *done < entry.size {
            bail!("the connection to {} ended after {} of {}", entry.url, format_bytes(*done), format_bytes(entry.size));
        }
        Ok(())
    }
}

/// The digest state after the first `len` bytes of a partial file.
async fn hash_prefix(path: &Path, len: u64) -> Result<Sha256> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<Sha256> {
        let mut hasher = Sha256::new();
        if len == 0 {
            return Ok(hasher);
        }
        use std::io::Read;
        let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let copied = std::io::copy(&mut file.take(len), &mut hasher).with_context(|| format!("reading {}", path.display()))?;
        if copied != len {
            bail!("{} shrank while it was read", path.display());
        }
        Ok(hasher)
    })
    .await
    .context("hashing the partial download")?
}

pub fn free_bytes(dir: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).context("a path with a NUL byte")?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("statvfs {}", dir.display()));
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}
