//! An HTTP file server on 127.0.0.1 standing in for a model's download source: it answers
//! range requests as real hosts do, and can be told to break the next downloads (cut the
//! connection part-way, or corrupt a byte) to prove resume and verification.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Close the connection after sending this many bytes of the body.
    Cut(u64),
    /// Flip one byte at this file offset.
    Corrupt(u64),
}

#[derive(Default)]
struct Shared {
    faults: VecDeque<Fault>,
    /// (range start, range end) of every request for the body, as asked.
    requests: Vec<(u64, Option<u64>)>,
}

pub struct ModelServer {
    pub url: String,
    shared: Arc<Mutex<Shared>>,
}

impl ModelServer {
    /// Serves `file` at `<url>` at most `bytes_per_sec` fast.
    pub fn start(file: PathBuf, bytes_per_sec: u64) -> ModelServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let url = format!("http://{}/{name}", listener.local_addr().unwrap());
        let shared = Arc::new(Mutex::new(Shared::default()));
        let state = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (file, state) = (file.clone(), state.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &file, &state, bytes_per_sec);
                });
            }
        });
        ModelServer { url, shared }
    }

    /// Breaks the next download that reads the whole rest of the file (header reads of a few
    /// MiB are left alone).
    pub fn fault_next(&self, fault: Fault) {
        self.shared.lock().unwrap().faults.push_back(fault);
    }

    pub fn requests(&self) -> Vec<(u64, Option<u64>)> {
        self.shared.lock().unwrap().requests.clone()
    }
}

fn serve(stream: TcpStream, path: &PathBuf, state: &Mutex<Shared>, bytes_per_sec: u64) -> std::io::Result<()> {
    let (wanted, range) = read_request(&stream)?;
    let name = path.file_name().unwrap().to_string_lossy();
    let mut out = stream;
    if wanted != format!("/{name}") {
        return out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let (start, end) = match range {
        Some((start, end)) => (start, end.unwrap_or(size - 1).min(size - 1)),
        None => (0, size - 1),
    };
    let fault = {
        let mut shared = state.lock().unwrap();
        shared.requests.push(range.map_or((0, None), |(s, e)| (s, e)));
        // Only downloads (to the end of the file) get the faults.
        if end == size - 1 && end - start > 16 << 20 { shared.faults.pop_front() } else { None }
    };
    let head = if range.is_some() {
        format!("HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{end}/{size}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", end - start + 1)
    } else {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n")
    };
    out.write_all(head.as_bytes())?;
    file.seek(SeekFrom::Start(start))?;
    let mut left = end - start + 1;
    let mut sent = 0u64;
    let mut buf = vec![0u8; 256 << 10];
    let pause = Duration::from_secs_f64(buf.len() as f64 / bytes_per_sec as f64);
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = file.read(&mut buf[..want])?;
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
        sent += n as u64;
        left -= n as u64;
        std::thread::sleep(pause);
    }
    Ok(())
}

/// The target of an HTTP request on `stream` and its `Range: bytes=START-[END]`, if any.
pub fn read_request(stream: &TcpStream) -> std::io::Result<(String, Option<(u64, Option<u64>)>)> {
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
