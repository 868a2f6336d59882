//! mDNS: this box announces `_hellas._tcp` with its node id, name, release, health and memory
//! budget (announced again when they change), and
//! lists the boxes it hears. What a box announces is only a hint: pairing and every later call
//! check the key, so a false announcement cannot make a box act.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use serde::Serialize;

pub const SERVICE: &str = "_hellas._tcp.local.";

/// What a box announces: this one's, or one heard on the network.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Announcement {
    pub node_id: String,
    pub name: String,
    pub version: String,
    /// `ok`, `updating` or `update-failed`.
    pub health: String,
    pub budget: u64,
    pub address: IpAddr,
    pub port: u16,
}

pub struct Discovery {
    daemon: ServiceDaemon,
    found: Arc<Mutex<HashMap<String, Announcement>>>,
    own: String,
}

impl Discovery {
    pub fn start(own: &Announcement) -> Result<Discovery> {
        let daemon = ServiceDaemon::new().context("starting mDNS")?;
        announce(&daemon, own)?;
        let receiver = daemon.browse(SERVICE).context("browsing _hellas._tcp")?;
        let found: Arc<Mutex<HashMap<String, Announcement>>> = Arc::default();
        let map = found.clone();
        tokio::spawn(async move {
            while let Ok(event) = receiver.recv_async().await {
                match event {
                    ServiceEvent::ServiceResolved(info) => {
                        let Some(node_id) = info.get_property_val_str("id").map(str::to_string)
                        else {
                            continue;
                        };
                        let Some(address) = info
                            .get_addresses_v4()
                            .into_iter()
                            .next()
                            .map(|a| IpAddr::V4(*a))
                            .or_else(|| info.get_addresses().iter().next().copied())
                        else {
                            continue;
                        };
                        let entry = Announcement {
                            name: info
                                .get_property_val_str("name")
                                .unwrap_or(&node_id)
                                .to_string(),
                            health: info.get_property_val_str("health").unwrap_or("").to_string(),
                            version: info
                                .get_property_val_str("version")
                                .unwrap_or("")
                                .to_string(),
                            budget: info
                                .get_property_val_str("budget")
                                .and_then(|b| b.parse().ok())
                                .unwrap_or(0),
                            address,
                            port: info.get_port(),
                            node_id: node_id.clone(),
                        };
                        map.lock().unwrap().insert(node_id, entry);
                    }
                    ServiceEvent::ServiceRemoved(_, fullname) => {
                        map.lock()
                            .unwrap()
                            .retain(|id, _| !fullname.starts_with(&format!("{id}.")));
                    }
                    _ => {}
                }
            }
        });
        Ok(Discovery {
            daemon,
            found,
            own: own.node_id.clone(),
        })
    }

    /// Announces `own` again, replacing what was announced (a new release, health or name).
    pub fn announce(&self, own: &Announcement) -> Result<()> {
        announce(&self.daemon, own)
    }

    /// The other boxes heard on the network, by name.
    pub fn found(&self) -> Vec<Announcement> {
        let mut found: Vec<Announcement> = self
            .found
            .lock()
            .unwrap()
            .values()
            .filter(|d| d.node_id != self.own)
            .cloned()
            .collect();
        found.sort_by(|a, b| a.name.cmp(&b.name));
        found
    }

    pub fn get(&self, node_id: &str) -> Option<Announcement> {
        self.found.lock().unwrap().get(node_id).cloned()
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        let _ = self.daemon.shutdown();
    }
}

fn announce(daemon: &ServiceDaemon, own: &Announcement) -> Result<()> {
    let budget = own.budget.to_string();
    let properties = [
        ("id", own.node_id.as_str()),
        ("name", own.name.as_str()),
        ("version", own.version.as_str()),
        ("health", own.health.as_str()),
        ("budget", budget.as_str()),
    ];
    // Its own host name, not the box name avahi already answers for, so the two responders
    // never contend for one name.
    let host = format!("hellas-{}.local.", own.node_id);
    let info = ServiceInfo::new(SERVICE, &own.node_id, &host, own.address, own.port, &properties[..])
        .context("building the mDNS announcement")?;
    daemon.register(info).context("announcing _hellas._tcp")
}
