//! Model downloads (a catalog model, or a model pulled from Hugging Face): resumable, verified,
//! cancellable, and all-or-nothing.
//!
//! A model is one file or several (a split model's parts, a vision projector). Each file is
//! written to `downloads/<sha256>.partial` on the data partition. After an interruption it
//! continues with an HTTP range request from where the file ends (also after a reboot: partial
//! files of catalog models are resumed at start-up). The sha256 is computed on the way and
//! checked against the sha256 the catalog or the Hub gives at the end; only then is the file
//! fsynced and moved into the library's blobs. The model gets its name only once every file is
//! there, so a model in the library is always whole and verified. A mismatch deletes the
//! partial file; files already verified are kept, so a retry fetches only what is missing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use reqwest::{header, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::hub::RemoteFile;
use crate::library::{ModelFile, ModelLibrary, NewModel};
use hellas_model::plan::format_bytes;

/// Free space left over after a download, for logs and the system.
const SPARE: u64 = 256 << 20;
/// Consecutive failed attempts (no byte gained) before a download gives up.
const MAX_FAILURES: u32 = 6;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Progress {
    Starting,
    /// `file`: the one being fetched now; `done` and `total` count all of the model's files.
    Downloading { file: String, done: u64, total: u64, bytes_per_sec: u64 },
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

/// A model to fetch: its files, each checked against its sha256, then named in the library.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pull {
    /// The name it gets in the library.
    pub name: String,
    pub title: String,
    /// Its GGUF file, or a split model's parts in order.
    pub parts: Vec<RemoteFile>,
    pub projector: Option<RemoteFile>,
    /// Where it comes from, pinned, for the library.
    pub source: Option<String>,
}

impl Pull {
    /// The first file's sha256, which names the download.
    pub fn id(&self) -> &str {
        &self.parts[0].sha256
    }

    pub fn size(&self) -> u64 {
        self.files().map(|f| f.size).sum()
    }

    fn files(&self) -> impl Iterator<Item = &RemoteFile> {
        self.parts.iter().chain(&self.projector)
    }

    /// A model resolved on Hugging Face, to be named `name` in the library.
    pub fn from_hub(resolved: &crate::hub::Resolved, name: String) -> Pull {
        Pull {
            name,
            title: resolved.reference.to_string(),
            parts: resolved.parts.clone(),
            projector: resolved.projector.clone(),
            source: Some(resolved.pinned()),
        }
    }
}

pub struct Job {
    pub pull: Pull,
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

    /// What a download under way is fetching, kept until it ends so that a restart resumes it.
    fn pull_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.pull.json"))
    }

    /// Starts fetching `pull`, or returns the download of it already under way.
    pub fn start(self: &Arc<Self>, pull: Pull) -> Arc<Job> {
        let mut jobs = self.jobs.lock().unwrap();
        if let Some(job) = jobs.get(pull.id()) {
            if !job.progress().finished() {
                return job.clone();
            }
        }
        let id = pull.id().to_string();
        if let Err(e) = self.remember(&pull) {
            tracing::warn!(model = %pull.name, "a restart will not resume this download: {e:#}");
        }
        let job = Arc::new(Job { pull, progress: watch::Sender::new(Progress::Starting), cancel: watch::Sender::new(false) });
        jobs.insert(id, job.clone());
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
        jobs.sort_by(|a, b| a.pull.name.cmp(&b.pull.name));
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

    fn remember(&self, pull: &Pull) -> Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        crate::state_file::write_atomically(&self.pull_path(pull.id()), &serde_json::to_vec(pull)?)
    }

    /// Continues the downloads a restart or reboot interrupted: those whose pull file is still
    /// there (it goes when a download ends, however it ends).
    pub fn resume_interrupted(self: &Arc<Self>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for path in entries.flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().ends_with(".pull.json")) {
            match std::fs::read(&path).map_err(anyhow::Error::from).and_then(|bytes| Ok(serde_json::from_slice::<Pull>(&bytes)?)) {
                Ok(pull) => {
                    tracing::info!(model = %pull.name, "resuming an interrupted download");
                    self.start(pull);
                }
                Err(e) => {
                    tracing::warn!("dropping {}, which does not say what to download: {e:#}", path.display());
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }

    async fn run(self: Arc<Self>, job: Arc<Job>) {
        let mut cancel = job.cancel.subscribe();
        let outcome = tokio::select! {
            result = self.fetch(&job) => result,
            _ = cancel.wait_for(|c| *c) => Err(anyhow::anyhow!("cancelled")),
        };
        let progress = match outcome {
            Ok(()) => Progress::Done { name: job.pull.name.clone() },
            Err(_) if *job.cancel.borrow() => {
                for file in job.pull.files() {
                    let _ = std::fs::remove_file(self.partial_path(&file.sha256));
                }
                let fetched: Vec<&str> = job.pull.files().map(|f| f.sha256.as_str()).collect();
                if let Err(e) = self.library.remove_unused(&fetched) {
                    tracing::warn!(model = %job.pull.name, "removing the files of a cancelled download: {e:#}");
                }
                Progress::Cancelled
            }
            Err(e) => {
                tracing::warn!(model = %job.pull.name, "download failed: {e:#}");
                Progress::Failed { error: format!("{e:#}") }
            }
        };
        let _ = std::fs::remove_file(self.pull_path(job.pull.id()));
        job.progress.send_replace(progress);
    }

    async fn fetch(&self, job: &Job) -> Result<()> {
        let pull = &job.pull;
        if self.library.get(&pull.name)?.is_some_and(|e| e.sha256 == pull.id()) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let missing: Vec<&RemoteFile> = pull.files().filter(|f| !self.library.has_blob(&f.sha256)).collect();
        let partial_bytes: u64 = missing.iter().map(|f| std::fs::metadata(self.partial_path(&f.sha256)).map_or(0, |m| m.len().min(f.size))).sum();
        let missing_bytes: u64 = missing.iter().map(|f| f.size).sum();
        let free = free_bytes(&self.dir)?;
        let needed = missing_bytes - partial_bytes + SPARE;
        if free < needed {
            bail!(
                "{} needs {} free on the data partition and {} is free: remove a model from the library first",
                pull.name,
                format_bytes(needed),
                format_bytes(free)
            );
        }
        let total = pull.size();
        let mut base = total - missing_bytes;
        for file in missing {
            self.fetch_file(job, file, base, total).await?;
            base += file.size;
        }
        let model_file = |f: &RemoteFile| ModelFile { file: f.file_name().to_string(), sha256: f.sha256.clone(), size: f.size };
        let model = NewModel {
            name: pull.name.clone(),
            parts: pull.parts.iter().map(model_file).collect(),
            projector: pull.projector.as_ref().map(model_file),
            source: pull.source.clone(),
        };
        let library = self.library.clone();
        tokio::task::spawn_blocking(move || library.add_model(model)).await.context("adding the model")??;
        Ok(())
    }

    /// Fetches one file into the library's blobs, resuming a partial one; `base` bytes of the
    /// model's `total` are fetched already.
    async fn fetch_file(&self, job: &Job, remote: &RemoteFile, base: u64, total: u64) -> Result<()> {
        let partial = self.partial_path(&remote.sha256);
        let mut done = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if done > remote.size {
            done = 0;
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
        while done < remote.size {
            let before = done;
            let attempt = self.fetch_from(job, remote, &mut file, &mut hasher, &mut done, (base, total)).await;
            let attempt = match attempt {
                Ok(()) => file.flush().await.with_context(|| format!("writing {}", partial.display())),
                Err(e) => Err(e),
            };
            if let Err(e) = attempt {
                if is_disk_full(&e) {
                    bail!("the data partition is full after {} of {}: remove a model from the library (or other files) and start the download again; it continues from there", format_bytes(base + done), format_bytes(total));
                }
                failures = if done > before { 1 } else { failures + 1 };
                if failures >= MAX_FAILURES {
                    return Err(e.context(format!("gave up after {failures} attempts; start the download again to continue from {}", format_bytes(base + done))));
                }
                tracing::info!(model = %job.pull.name, file = %remote.path, done, "download interrupted, resuming: {e:#}");
                job.progress.send_replace(Progress::Retrying { done: base + done, total, attempt: failures, error: format!("{e:#}") });
                tokio::time::sleep(Duration::from_millis(500 << failures.min(6))).await;
            }
        }
        job.progress.send_replace(Progress::Verifying { total });
        let file = file.into_inner();
        file.sync_all().await.with_context(|| format!("syncing {}", partial.display()))?;
        drop(file);
        let digest = hex::encode(hasher.finalize());
        if digest != remote.sha256 {
            let _ = std::fs::remove_file(&partial);
            bail!(
                "{}: the downloaded file's sha256 is {digest}, not the {} its source records: it was damaged on the way or changed at the source; nothing was added to the library, and the download can be started again",
                remote.path,
                remote.sha256
            );
        }
        let library = self.library.clone();
        let sha256 = remote.sha256.clone();
        tokio::task::spawn_blocking(move || library.adopt_blob(&partial, &sha256)).await.context("keeping the downloaded file")??;
        Ok(())
    }

    /// One request for the bytes from `done` on, appended to `file` as they arrive.
    async fn fetch_from(
        &self,
        job: &Job,
        entry: &RemoteFile,
        file: &mut tokio::io::BufWriter<tokio::fs::File>,
        hasher: &mut Sha256,
        done: &mut u64,
        (base, total): (u64, u64),
    ) -> Result<()> {
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
                bail!("{} sends more than the {} bytes its source records: the file changed at the source", entry.url, entry.size);
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
                job.progress.send_replace(Progress::Downloading { file: entry.file_name().to_string(), done: base + *done, total, bytes_per_sec: rate });
                last_report = Instant::now();
            }
        }
        if *done < entry.size {
            bail!("the connection to {} ended after {} of {}", entry.url, format_bytes(*done), format_bytes(entry.size));
        }
        Ok(())
    }
}

/// Whether an error comes from a full file system (no retry helps).
fn is_disk_full(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.raw_os_error() == Some(libc::ENOSPC) || io.kind() == std::io::ErrorKind::StorageFull))
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
