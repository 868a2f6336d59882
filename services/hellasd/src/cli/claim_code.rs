//! `hellasd claim-code`: this boot's claim code, made at boot by hellas-claim-code.service.

use anyhow::Result;

use crate::config::Config;
use crate::owner::{owner_store, ClaimFiles};
use crate::web_certificate::WebCertificate;

pub fn run(config: &Config, ensure: bool) -> Result<()> {
    let owner = owner_store(&config.state_dir).load()?;
    if owner.owner.is_some() {
        println!("this box is claimed already: log in at https://{}.local/", owner.settings.box_name);
        return Ok(());
    }
    // Made here, as the daemon's user, before hellasd starts: the console shows its fingerprint
    // from the first boot on.
    let certificate = WebCertificate::load_or_create(&config.state_dir, &owner.settings.box_name)?;
    let claim = ClaimFiles::new(&config.web.runtime_dir).with_fingerprint(Some(certificate.fingerprint()));
    let code = if ensure { Some(claim.ensure(owner.claim_code.as_deref())?) } else { claim.current()? };
    match code {
        Some(code) => println!("Hellas claim code: {code} (open http://{}.local/ to set up this box)", owner.settings.box_name),
        None => anyhow::bail!("no claim code yet this boot: is hellasd running? (`systemctl status hellasd`)"),
    }
    Ok(())
}
