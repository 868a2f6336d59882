//! The nftables table `inet hellas`, which lets only paired peers reach the RPC worker.
//!
//! ggml-rpc-server has no authentication at all, so the port is the fence: its table accepts the
//! paired peers' addresses and drops everything else, loopback included. The whole table is
//! replaced in one nft transaction, so there is no moment with the port open and no rule of
//! another table is touched.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

pub fn ruleset(rpc_port: u16, peers: &[IpAddr]) -> String {
    let list = |v4: bool| {
        let addresses: Vec<String> = peers
            .iter()
            .filter(|a| a.is_ipv4() == v4)
            .map(|a| a.to_string())
            .collect();
        if addresses.is_empty() {
            String::new()
        } else {
            format!("\n\t\telements = {{ {} }}", addresses.join(", "))
        }
    };
    format!(
        "table inet hellas {{}}\ndelete table inet hellas\n\
         table inet hellas {{\n\
         \tset peers4 {{\n\t\ttype ipv4_addr{v4}\n\t}}\n\
         \tset peers6 {{\n\t\ttype ipv6_addr{v6}\n\t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\ttcp dport {rpc_port} ip saddr @peers4 accept\n\
         \t\ttcp dport {rpc_port} ip6 saddr @peers6 accept\n\
         \t\ttcp dport {rpc_port} drop\n\
         \t}}\n}}\n",
        v4 = list(true),
        v6 = list(false),
    )
}

/// Replaces the table with one that admits `peers` to `rpc_port`.
pub fn apply(nft: &Path, rpc_port: u16, peers: &[IpAddr]) -> Result<()> {
    let rules = ruleset(rpc_port, peers);
    let mut child = Command::new(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} (set cluster.nft, or cluster.firewall = false where another firewall guards the RPC port)", nft.display()))?;
    child
        .stdin
        .take()
        .context("nft's stdin")?
        .write_all(rules.as_bytes())
        .context("writing the ruleset to nft")?;
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!(
            "{} -f - failed ({}): {}",
            nft.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_only_the_peers() {
        let rules = ruleset(
            50052,
            &[
                "10.0.0.2".parse().unwrap(),
                "fe80::1".parse().unwrap(),
                "10.0.0.3".parse().unwrap(),
            ],
        );
        assert!(
            rules.contains("elements = { 10.0.0.2, 10.0.0.3 }"),
            "{rules}"
        );
        assert!(rules.contains("elements = { fe80::1 }"), "{rules}");
        assert!(rules.contains("tcp dport 50052 drop"), "{rules}");
        let none = ruleset(50052, &[]);
        assert!(!none.contains("elements"), "{none}");
        assert!(none.starts_with("table inet hellas {}\ndelete table inet hellas\n"));
    }
}
