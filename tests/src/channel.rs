//! A release channel served to a guest over HTTP on 127.0.0.1 (the guest reaches it through
//! QEMU's user network at 10.0.2.2). It serves one directory at a time, switchable, counts the
//! bytes it sent of each file and can slow a file down, so that a test can cut the power while
//! the guest is writing that file into its inactive slot.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

#[derive(Default)]
struct Shared {
    dir: PathBuf,
    /// Bytes sent, by file name.
    sent: HashMap<String, u64>,
    /// Files whose name ends so are sent at this many bytes a second.
    throttle: Option<(String, u64)>,
}

pub struct ChannelServer {
    port: u16,
    shared: Arc<Mutex<Shared>>,
}

impl ChannelServer {
    pub fn start(dir: &Path) -> Result<ChannelServer> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the channel server")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Mutex::new(Shared { dir: dir.to_path_buf(), ..Shared::default() }));
        let for_thread = shared.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = for_thread.clone();
                thread::spawn(move || {
                    let _ = serve(stream, &shared);
                });
            }
        });
        Ok(ChannelServer { port, shared })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL the guest uses.
    pub fn guest_url(&self) -> String {
        format!("http://10.0.2.2:{}/", self.port)
    }

    pub fn serve_dir(&self, dir: &Path) {
        self.shared.lock().unwrap().dir = dir.to_path_buf();
    }

    pub fn throttle(&self, suffix: Option<(&str, u64)>) {
        self.shared.lock().unwrap().throttle = suffix.map(|(s, rate)| (s.to_string(), rate));
    }

    /// Bytes sent of the file `name`.
    pub fn sent(&self, name: impl Fn(&str) -> bool) -> u64 {
        self.shared.lock().unwrap().sent.iter().filter(|(file, _)| name(file)).map(|(_, n)| n).sum()
    }
}

fn serve(stream: TcpStream, shared: &Mutex<Shared>) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let name = path.trim_start_matches('/').to_string();
    let mut out = stream;
    let (dir, throttle) = {
        let shared = shared.lock().unwrap();
        (shared.dir.clone(), shared.throttle.clone().filter(|(suffix, _)| name.ends_with(suffix.as_str())).map(|(_, rate)| rate))
    };
    let file = (!name.contains("..") && !name.contains('/') && !name.is_empty()).then(|| dir.join(&name)).filter(|f| f.is_file());
    let Some(file) = file else {
        out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    };
    let mut body = std::fs::File::open(&file)?;
    let length = body.metadata()?.len();
    write!(out, "HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")?;
    if method == "HEAD" {
        return Ok(());
    }
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = body.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        out.write_all(&buf[..n])?;
        *shared.lock().unwrap().sent.entry(name.clone()).or_default() += n as u64;
        if let Some(rate) = throttle {
            thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
        }
    }
}
