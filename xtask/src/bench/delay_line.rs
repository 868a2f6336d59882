//! A TCP relay on loopback that holds every byte for a fixed time in each direction: a link
//! with that one-way latency (a LAN with a switch hop, Wi-Fi) in front of a local server, for
//! the cluster bench's slow path. Bandwidth is loopback's; only latency is added.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Listens on a free loopback port and relays each connection to `to`, `delay` late each way.
/// The relay lives as long as the process (the bench's).
pub fn start(to: u16, delay: Duration) -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the delay line's port")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else { continue };
            for (from, into) in [(&client, &server), (&server, &client)] {
                let (Ok(from), Ok(into)) = (from.try_clone(), into.try_clone()) else { continue };
                pump(from, into, delay);
            }
        }
    });
    Ok(port)
}

/// Copies `from` into `into`, each chunk sent `delay` after it arrived.
fn pump(mut from: TcpStream, mut into: TcpStream, delay: Duration) {
    let _ = from.set_nodelay(true);
    let _ = into.set_nodelay(true);
    let (chunks, due) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 1 << 16];
        while let Ok(n) = from.read(&mut buffer) {
            if n == 0 || chunks.send((Instant::now() + delay, buffer[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        while let Ok((at, chunk)) = due.recv() {
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            if into.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = into.shutdown(Shutdown::Write);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_arrive_whole_and_late() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let echo_port = echo.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = echo.accept().unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).unwrap();
            s.write_all(&b).unwrap();
        });
        let port = start(echo_port, Duration::from_millis(20)).unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let started = Instant::now();
        c.write_all(b"hello").unwrap();
        let mut back = [0u8; 5];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"hello");
        assert!(started.elapsed() >= Duration::from_millis(40), "one round trip is two delays: {:?}", started.elapsed());
    }
}
