//! `hellasd set-password`: the owner's password from standard input; claims an unclaimed box.

use anyhow::{Context, Result};

use crate::config::Config;
use crate::owner::{owner_store, ClaimFiles};

pub fn run(config: &Config) -> Result<()> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']);
    let store = owner_store(&config.state_dir);
    if store.is_claimed()? {
        store.set_password(password)?;
        println!("the owner's password was changed");
    } else {
        store.claim(password)?;
        let name = store.load()?.settings.box_name;
        // Root only reads the certificate: it is made as the daemon's user, who must read it.
        let fingerprint = crate::web_certificate::WebCertificate::load(&config.state_dir)?.map(|c| c.fingerprint());
        ClaimFiles::new(&config.web.runtime_dir).with_fingerprint(fingerprint).claimed(&name)?;
        println!("the box is claimed; the owner logs in at http://{name}.local/");
    }
    Ok(())
}
