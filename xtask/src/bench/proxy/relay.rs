//! A bare relay: the least any proxy in front of llama-server does. Its threads each take a
//! connection, read the request (headers and a `Content-Length` body), send it to the engine on
//! a connection of their own, and copy the answer back as it arrives, parsing nothing. What its
//! threads spend per request is the floor on the machine the bench runs on for a proxy that
//! passes every streamed token through user space, as hellasd does: the system calls and the
//! wake-up each token costs there.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// A relay on a loopback port, in front of `upstream`.
pub struct Relay {
    pub port: u16,
    /// Each thread's entry in /proc, to read its CPU time from.
    threads: Arc<Mutex<Vec<String>>>,
    stopping: Arc<AtomicBool>,
    workers: usize,
}

impl Relay {
    /// Starts `workers` threads, one per connection served at once.
    pub fn start(upstream: SocketAddr, workers: usize) -> Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the bare relay to a loopback port")?;
        let port = listener.local_addr()?.port();
        let listener = Arc::new(listener);
        let threads = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        for _ in 0..workers {
            let (listener, threads, stopping) = (listener.clone(), threads.clone(), stopping.clone());
            thread::Builder::new().name("bare-relay".into()).spawn(move || {
                // Where this thread's entry is not found, `cpu` says so.
                let me = std::fs::read_link("/proc/thread-self")
                    .map_or_else(|e| format!("thread-self (unreadable: {e})"), |me| me.to_string_lossy().into_owned());
                threads.lock().unwrap().push(me);
                while let Ok((client, _)) = listener.accept() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    // A failed request shows on the client's side, as a failure of this side.
                    let _ = relay(client, upstream);
                }
            })?;
        }
        while threads.lock().unwrap().len() < workers {
            thread::sleep(Duration::from_millis(1));
        }
        Ok(Relay { port, threads, stopping, workers })
    }

    /// The CPU time its threads have used so far.
    pub fn cpu(&self) -> Result<Duration> {
        let mut nanos = 0;
        for thread in self.threads.lock().unwrap().iter() {
            // The first field of schedstat: time spent on the CPU, in nanoseconds.
            let path = format!("/proc/{thread}/schedstat");
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            let on_cpu: u64 = text.split_whitespace().next().and_then(|n| n.parse().ok()).with_context(|| format!("{path} reads {text:?}"))?;
            nanos += on_cpu;
        }
        Ok(Duration::from_nanos(nanos))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        for _ in 0..self.workers {
            let _ = TcpStream::connect(("127.0.0.1", self.port));
        }
    }
}

/// Serves one request on `client`.
fn relay(mut client: TcpStream, upstream: SocketAddr) -> Result<()> {
    client.set_nodelay(true)?;
    let mut request = Vec::with_capacity(4096);
    let mut buffer = vec![0; 64 << 10];
    let head_end = loop {
        if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let read = client.read(&mut buffer)?;
        if read == 0 {
            bail!("the client closed the connection before its request ended");
        }
        request.extend_from_slice(&buffer[..read]);
    };
    let head = String::from_utf8_lossy(&request[..head_end]);
    let length = head
        .lines()
        .find_map(|line| line.split_once(':').filter(|(name, _)| name.eq_ignore_ascii_case("content-length")))
        .map(|(_, value)| value.trim().parse::<usize>())
        .transpose()?
        .unwrap_or(0);
    while request.len() < head_end + length {
        let read = client.read(&mut buffer)?;
        if read == 0 {
            bail!("the client closed the connection before its request body ended");
        }
        request.extend_from_slice(&buffer[..read]);
    }
    // One request per connection, so the engine's end of the answer is the end of the stream.
    let request_line = request.windows(2).position(|w| w == b"\r\n").expect("a request line") + 2;
    request.splice(request_line..request_line, *b"Connection: close\r\n");
    let mut engine = TcpStream::connect(upstream)?;
    engine.set_nodelay(true)?;
    engine.write_all(&request)?;
    loop {
        let read = engine.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        match client.write_all(&buffer[..read]) {
            // The client has read what it wanted ([DONE]) and gone.
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => break,
            written => written?,
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}
