//! The setup hotspot's name server: every name is the box (an A record of the hotspot's
//! address), as on any captive portal, so that a phone's connectivity check (e.g.
//! `connectivitycheck.gstatic.com`, `captive.apple.com`) reaches hellasd, which answers it with
//! the setup page (`web`'s captive redirect) and the phone offers to "sign in to the network".
//! AAAA and other queries get an empty answer, so phones fall back to IPv4 at once.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

/// The DNS header's flags of an answer: QR, opcode 0, AA, RD copied, RA 0, rcode as given.
const ANSWER: u16 = 0x8400;
const NOT_IMPLEMENTED: u16 = 4;
const FORMAT_ERROR: u16 = 1;
const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
/// Answers live briefly: the names are the box only while the hotspot is open.
const TTL_SECS: u32 = 10;

/// Starts answering on `address`:53 in a thread, once the address is there (networkd gives it
/// a moment after the hotspot opens), until `running` is false.
pub fn start(address: Ipv4Addr, running: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        while running.load(Ordering::Relaxed) {
            match UdpSocket::bind(SocketAddr::from((address, 53))) {
                Ok(socket) => {
                    if let Err(e) = serve(&socket, address, &running) {
                        tracing::warn!("{e:#}");
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_secs(1)),
            }
        }
    });
}

fn serve(socket: &UdpSocket, address: Ipv4Addr, running: &AtomicBool) -> Result<()> {
    socket.set_read_timeout(Some(Duration::from_secs(1))).context("setting the name server's timeout")?;
    tracing::info!("the hotspot's name server answers on {address}:53");
    let mut buf = [0u8; 512];
    while running.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((len, peer)) => {
                if let Some(reply) = answer(&buf[..len], address) {
                    let _ = socket.send_to(&reply, peer);
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e).context("the hotspot's name server"),
        }
    }
    Ok(())
}

/// The reply to one query: every A question of class IN is `address`; nothing else is
/// answered. None for what is not a query at all.
pub fn answer(query: &[u8], address: Ipv4Addr) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let id = &query[..2];
    let rd = u16::from(query[2] & 0x01) << 8;
    let opcode = (query[2] >> 3) & 0x0f;
    let questions = u16::from_be_bytes([query[4], query[5]]);
    let header = |rcode: u16, qd: u16, an: u16| {
        let mut h = id.to_vec();
        h.extend((ANSWER | rd | rcode).to_be_bytes());
        h.extend(qd.to_be_bytes());
        h.extend(an.to_be_bytes());
        h.extend([0, 0, 0, 0]);
        h
    };
    if opcode != 0 || questions != 1 {
        return Some(header(NOT_IMPLEMENTED, 0, 0));
    }
    // The one question: its name's labels, then type and class.
    let mut at = 12;
    loop {
        let len = *query.get(at)? as usize;
        if len == 0 {
            at += 1;
            break;
        }
        if len > 63 {
            return Some(header(FORMAT_ERROR, 0, 0));
        }
        at += 1 + len;
    }
    let question = query.get(12..at + 4)?;
    let qtype = u16::from_be_bytes([query[at], query[at + 1]]);
    let qclass = u16::from_be_bytes([query[at + 2], query[at + 3]]);
    let mut reply = header(0, 1, u16::from(qtype == TYPE_A && qclass == CLASS_IN));
    reply.extend(question);
    if qtype == TYPE_A && qclass == CLASS_IN {
        // A pointer to the question's name, then type A, class IN, TTL, the address.
        reply.extend([0xc0, 12]);
        reply.extend(TYPE_A.to_be_bytes());
        reply.extend(CLASS_IN.to_be_bytes());
        reply.extend(TTL_SECS.to_be_bytes());
        reply.extend(4u16.to_be_bytes());
        reply.extend(address.octets());
    }
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend(label.as_bytes());
        }
        q.push(0);
        q.extend(qtype.to_be_bytes());
        q.extend(CLASS_IN.to_be_bytes());
        q
    }

    #[test]
    fn every_name_is_the_box_over_a_real_socket() {
        let box_address = Ipv4Addr::new(10, 42, 0, 1);
        // Port 53 needs root: the wire format is checked on a loopback port instead.
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(&query("connectivitycheck.gstatic.com", TYPE_A), server.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 512];
        let (len, peer) = server.recv_from(&mut buf).unwrap();
        server.send_to(&answer(&buf[..len], box_address).unwrap(), peer).unwrap();
        let (len, _) = client.recv_from(&mut buf).unwrap();
        let reply = &buf[..len];
        assert_eq!(&reply[..2], &[0x12, 0x34], "the query's id");
        assert_eq!(reply[2] & 0x80, 0x80, "an answer");
        assert_eq!(reply[3] & 0x0f, 0, "no error");
        assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), 1, "one answer");
        assert_eq!(&reply[len - 4..], &[10, 42, 0, 1]);
    }

    #[test]
    fn other_questions_get_no_address_and_garbage_no_answer() {
        let box_address = Ipv4Addr::new(10, 42, 0, 1);
        let aaaa = answer(&query("captive.apple.com", 28), box_address).unwrap();
        assert_eq!((aaaa[3] & 0x0f, u16::from_be_bytes([aaaa[6], aaaa[7]])), (0, 0), "AAAA: no error, no answer");
        assert_eq!(answer(&[1, 2, 3], box_address), None);
        let mut truncated = query("a.example", TYPE_A);
        truncated.truncate(16);
        assert_eq!(answer(&truncated, box_address), None);
        let mut reply_to_a_reply = query("a.example", TYPE_A);
        reply_to_a_reply[2] |= 0x80;
        assert_eq!(answer(&reply_to_a_reply, box_address), None, "answers are never answered");
    }
}
