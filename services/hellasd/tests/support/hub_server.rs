//! A stand-in for the Hugging Face Hub on 127.0.0.1: the part of its API the box uses, answered
//! as the Hub answers it. `GET /api/models/{repo}/revision/{rev}` pins a revision to its commit,
//! `GET /api/models/{repo}/tree/{sha}?recursive=true` lists the files (two to a page, linked by
//! `Link: rel="next"`) with their Git LFS sha256 and size, and `GET /{repo}/resolve/{sha}/{path}`
//! redirects to `/cdn/…`, which serves the bytes and honours ranges. A repository it does not
//! know gets 401, as on the Hub. It can be slowed down, and told to break the next downloads of a
//! file (cut the connection part-way, or flip a byte) to prove resume and verification.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{cache_dir, model, run, SMOLLM};

#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Close the connection after sending this many bytes of the body.
    Cut(u64),
    /// Flip the byte at this file offset.
    Corrupt(u64),
}

/// The test repository: SmolLM2 split into three parts, beside files that must be refused.
pub const REPO: &str = "test/SmolLM2-135M-Instruct-GGUF";

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A file in a repository: its bytes on disk and what the Hub records of it.
pub struct HubFile {
    pub path: String,
    pub source: PathBuf,
    /// The LFS sha256 the listing gives; `None` lists it as a plain Git file.
    pub sha256: Option<String>,
}

impl HubFile {
    /// A file listed with its true sha256.
    pub fn lfs(path: &str, source: PathBuf) -> HubFile {
        let digest = hex::encode(Sha256::digest(std::fs::read(&source).unwrap()));
        HubFile { path: path.into(), source, sha256: Some(digest) }
    }
}

#[derive(Default)]
struct Shared {
    repos: HashMap<String, Vec<HubFile>>,
    /// Faults for the next downloads of a file (by path), in order.
    faults: VecDeque<(String, Fault)>,
    /// Byte ranges asked of each file, in order.
    requests: Vec<(String, u64)>,
    /// Bytes per second the CDN sends at most; 0 for as fast as it can.
    rate: u64,
}

pub struct HubServer {
    pub endpoint: String,
    shared: Arc<Mutex<Shared>>,
}

impl HubServer {
    pub fn start() -> HubServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Mutex::new(Shared::default()));
        let state = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = state.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &state);
                });
            }
        });
        HubServer { endpoint, shared }
    }

    pub fn add_repo(&self, repo: &str, files: Vec<HubFile>) {
        self.shared.lock().unwrap().repos.insert(repo.to_string(), files);
    }

    /// Breaks the next download of `path` that reads to the end of the file (header reads ask
    /// for a bounded range and are left alone).
    pub fn fault_next(&self, path: &str, fault: Fault) {
        self.shared.lock().unwrap().faults.push_back((path.to_string(), fault));
    }

    /// Sends files at most this fast, so that a page can show a download under way.
    pub fn throttle(&self, bytes_per_sec: u64) {
        self.shared.lock().unwrap().rate = bytes_per_sec;
    }

    /// The starts of the byte ranges asked of `path` (0 for a whole file).
    pub fn requests(&self, path: &str) -> Vec<u64> {
        self.shared.lock().unwrap().requests.iter().filter(|(p, _)| p == path).map(|(_, start)| *start).collect()
    }
}

fn respond(out: &mut TcpStream, status: &str, headers: &str, body: &[u8]) -> std::io::Result<()> {
    write!(out, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n", body.len())?;
    out.write_all(body)
}

fn serve(stream: TcpStream, state: &Mutex<Shared>) -> std::io::Result<()> {
    let (target, range) = read_request(&stream)?;
    let mut out = stream;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let not_found = |out: &mut TcpStream| respond(out, "401 Unauthorized", "Content-Type: application/json\r\n", br#"{"error":"Repository not found"}"#);
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let shared = state.lock().unwrap();
        let found = shared.repos.keys().find(|repo| rest.starts_with(&format!("{repo}/"))).cloned();
        let Some(repo) = found else { return not_found(&mut out) };
        let rest = &rest[repo.len() + 1..];
        if let Some(revision) = rest.strip_prefix("revision/") {
            if revision != "main" && revision != COMMIT {
                return respond(&mut out, "404 Not Found", "Content-Type: application/json\r\n", br#"{"error":"Invalid rev id"}"#);
            }
            return respond(&mut out, "200 OK", "Content-Type: application/json\r\n", format!(r#"{{"id":"{repo}","sha":"{COMMIT}"}}"#).as_bytes());
        }
        if rest == format!("tree/{COMMIT}") {
            let page: usize = query.split('&').find_map(|kv| kv.strip_prefix("cursor=")).and_then(|c| c.parse().ok()).unwrap_or(0);
            let files = &shared.repos[&repo];
            let entries: Vec<serde_json::Value> = files
                .iter()
                .skip(page * 2)
                .take(2)
                .map(|f| {
                    let size = std::fs::metadata(&f.source).unwrap().len();
                    match &f.sha256 {
                        Some(sha) => serde_json::json!({"type": "file", "oid": "0f0f", "size": size, "path": f.path, "lfs": {"oid": sha, "size": size, "pointerSize": 134}}),
                        None => serde_json::json!({"type": "file", "oid": "0f0f", "size": size, "path": f.path}),
                    }
                })
                .collect();
            let next = if (page + 1) * 2 < files.len() {
                format!("Link: <http://{}/api/models/{repo}/tree/{COMMIT}?recursive=true&cursor={}>; rel=\"next\"\r\n", out.local_addr()?, page + 1)
            } else {
                String::new()
            };
            return respond(&mut out, "200 OK", &format!("Content-Type: application/json\r\n{next}"), serde_json::to_string(&entries).unwrap().as_bytes());
        }
        return respond(&mut out, "404 Not Found", "", b"");
    }
    if let Some(rest) = path.strip_prefix("/cdn/") {
        let (repo, file) = rest.split_once("/-/").unwrap_or((rest, ""));
        let (source, fault, rate) = {
            let mut shared = state.lock().unwrap();
            let Some(found) = shared.repos.get(repo).and_then(|files| files.iter().find(|f| f.path == file)) else {
                return respond(&mut out, "404 Not Found", "", b"");
            };
            let source = found.source.clone();
            shared.requests.push((file.to_string(), range.map_or(0, |r| r.0)));
            let download = range.is_none_or(|r| r.1.is_none());
            let fault = match shared.faults.iter().position(|(p, _)| p == file) {
                Some(at) if download => shared.faults.remove(at).map(|(_, f)| f),
                _ => None,
            };
            (source, fault, shared.rate)
        };
        return send_file(out, &source, range, fault, rate);
    }
    // /{org}/{repo}/resolve/{sha}/{path}: a redirect to the CDN, as the Hub does.
    let shared = state.lock().unwrap();
    let found = shared.repos.keys().find(|repo| path.starts_with(&format!("/{repo}/resolve/{COMMIT}/"))).cloned();
    match found {
        Some(repo) => {
            let file = &path[format!("/{repo}/resolve/{COMMIT}/").len()..];
            respond(&mut out, "302 Found", &format!("Location: /cdn/{repo}/-/{file}\r\n"), b"")
        }
        None => not_found(&mut out),
    }
}

/// The bytes of `path` asked for by `range`, at most `rate` bytes a second, broken by `fault`.
fn send_file(mut out: TcpStream, path: &Path, range: Option<(u64, Option<u64>)>, fault: Option<Fault>, rate: u64) -> std::io::Result<()> {
    let mut data = std::fs::File::open(path)?;
    let size = data.metadata()?.len();
    let (start, end) = match range {
        Some((start, end)) => (start, end.unwrap_or(size - 1).min(size - 1)),
        None => (0, size - 1),
    };
    let head = if range.is_some() {
        format!("HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{end}/{size}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", end - start + 1)
    } else {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n")
    };
    out.write_all(head.as_bytes())?;
    data.seek(SeekFrom::Start(start))?;
    let (mut left, mut sent) = (end - start + 1, 0u64);
    let mut buf = vec![0u8; 256 << 10];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = data.read(&mut buf[..want])?;
        let chunk = &mut buf[..n];
        if let Some(Fault::Corrupt(at)) = fault {
            let offset = start + sent;
            if (offset..offset + n as u64).contains(&at) {
                chunk[(at - offset) as usize] ^= 0xff;
            }
        }
        if let Some(Fault::Cut(after)) = fault {
            if sent + n as u64 >= after {
                out.write_all(&chunk[..(after - sent) as usize])?;
                return Ok(()); // dropping the stream cuts the connection
            }
        }
        out.write_all(chunk)?;
        (sent, left) = (sent + n as u64, left - n as u64);
        if rate > 0 {
            std::thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
        }
    }
    Ok(())
}

/// The target of an HTTP request on `stream` and its `Range: bytes=START-[END]`, if any.
fn read_request(stream: &TcpStream) -> std::io::Result<(String, Option<(u64, Option<u64>)>)> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or_default().to_string();
    let mut range = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
        if let Some(value) = header.to_ascii_lowercase().strip_prefix("range: bytes=") {
            let (start, end) = value.trim().split_once('-').unwrap_or(("0", ""));
            range = Some((start.parse::<u64>().unwrap_or(0), end.parse::<u64>().ok()));
        }
    }
    Ok((target, range))
}

/// A GGUF whose header describes a model of `weights` bytes (70B-like shapes) and whose data is
/// a hole: the planner sees a huge model, the disk holds a few bytes.
pub fn huge_model(path: &Path, weights: u64) {
    use hellas_model::testing::GgufBuilder;
    let builder = GgufBuilder::new()
        .str("general.architecture", "llama")
        .str("general.name", "Huge")
        .u32("llama.block_count", 80)
        .u32("llama.context_length", 131072)
        .u32("llama.embedding_length", 8192)
        .u32("llama.feed_forward_length", 28672)
        .u32("llama.attention.head_count", 64)
        .u32("llama.attention.head_count_kv", 8)
        .u32("llama.vocab_size", 128256)
        // Q4_K: 144 bytes for each block of 256 weights.
        .tensor("blk.0.ffn_up.weight", &[8192, weights / 144 * 256 / 8192], 12, weights);
    let header = builder.build_header();
    let file = std::fs::File::create(path).unwrap();
    (&file).write_all(&header).unwrap();
    file.set_len(header.len() as u64 + builder.data_bytes()).unwrap();
}

/// llama.cpp's gguf-split from the engine tree, run through the tree's own loader.
fn gguf_split(input: &Path, prefix: &Path) {
    let engine = cache_dir().join("engine");
    let tree = engine.join("tree");
    let libs = format!("{}:{}", tree.join("usr/lib/x86_64-linux-gnu/llama").display(), tree.join("usr/lib/x86_64-linux-gnu").display());
    let out = run(Command::new(engine.join("backends/ld-linux-x86-64.so.2"))
        .args(["--library-path", &libs])
        .arg(tree.join("usr/bin/llama-gguf-split"))
        .args(["--split", "--split-max-tensors", "100"])
        .arg(input)
        .arg(prefix));
    assert!(out.status.success(), "gguf-split failed: {}", String::from_utf8_lossy(&out.stderr));
}

pub fn part_name(n: u32) -> String {
    format!("SmolLM2-135M-Instruct-Q4_1-{n:05}-of-00003.gguf")
}

/// A Hub whose repository holds SmolLM2 split in three parts, beside files that must be refused.
pub fn smollm_repo() -> (tempfile::TempDir, HubServer) {
    let dir = tempfile::tempdir().unwrap();
    gguf_split(&model(SMOLLM), &dir.path().join("SmolLM2-135M-Instruct-Q4_1"));
    let part = part_name;
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, vec![7u8; 1 << 20]).unwrap();
    let readme = dir.path().join("README.md");
    std::fs::write(&readme, "# SmolLM2\n").unwrap();
    let hub = HubServer::start();
    let mut files: Vec<HubFile> = (1..=3).map(|n| HubFile::lfs(&part(n), dir.path().join(part(n)))).collect();
    files.push(HubFile { path: "README.md".into(), source: readme, sha256: None });
    files.push(HubFile::lfs("SmolLM2-135M-Instruct-Q8_0.gguf", junk));
    files.push(HubFile { path: "SmolLM2-135M-Instruct-Q3_K_M.gguf".into(), source: model(SMOLLM), sha256: Some("ab".repeat(32)) });
    files.push(HubFile::lfs("Gappy-Q5_0-00001-of-00002.gguf", dir.path().join(part(1))));
    hub.add_repo(REPO, files);

    (dir, hub)
}
