//! Installing from the stick to the internal disk, as the owner does it on the dashboard:
//! refused unless the disk's name is typed back and the disk is not the one the box runs from;
//! then the copy keeps the owner's data, and with the stick taken out the box boots from the
//! internal disk, the same release, claimed, its key and model in place.

use std::time::Duration;

use hellas_system_tests::vm::Vm;

use super::update::{api_models, wait_status_for};
use super::{check_report, owner_web::OwnerWeb, MODEL, PASSWORD};

const INSTALLED_BOOT_TIMEOUT: Duration = Duration::from_secs(20 * 60);

pub fn install_and_boot_from_the_disk(vm: &mut Vm, web: &mut OwnerWeb, key: &str, version: &str) {
    let (_, _, dashboard) = web.get("/dashboard");
    assert!(dashboard.contains("<option value=\"/dev/vdb\">"), "the dashboard does not offer the internal disk /dev/vdb");
    assert!(!dashboard.contains("<option value=\"/dev/vda\">"), "the dashboard offers the stick the box runs from");
    let (status, _, page) = web.post("/install", &[("disk", "/dev/vdb"), ("keep_data", "on"), ("confirm", "vdb")]);
    assert_eq!(status, 400, "an install whose disk name was not typed back must be refused: {page}");
    web.get("/dashboard");
    let (status, _, page) = web.post("/install", &[("disk", "/dev/vda"), ("confirm", "/dev/vda")]);
    assert_eq!(status, 400, "installing over the disk the box runs from must be refused: {page}");

    web.get("/dashboard");
    let (status, location, page) = web.post("/install", &[("disk", "/dev/vdb"), ("keep_data", "on"), ("confirm", "/dev/vdb")]);
    assert_eq!((status, location.as_deref()), (303, Some("/dashboard")), "installing to /dev/vdb: {page}");
    // Under TCG, copying both root slots and the ESP takes minutes.
    let status = wait_status_for(Duration::from_secs(20 * 60), vm, web, "the install to /dev/vdb", |s| {
        s["phase"]["action"] == "installing to /dev/vdb" || s["last_result"].as_str().is_some_and(|r| r.starts_with("installed to /dev/vdb"))
    });
    assert_ne!(status["phase"]["phase"], "failed", "installing to /dev/vdb failed: {status}\n{}", vm.console_tail(40));

    vm.remove_stick_and_restart().expect("restarting without the stick");
    let report = vm
        .wait_report_where(INSTALLED_BOOT_TIMEOUT, "from the internal disk", 0, |_| true)
        .unwrap_or_else(|e| panic!("{e:#}"));
    println!("booted from the internal disk: {report}");
    check_report(&report, vm);
    assert_eq!(report["image_version"], version, "the internal disk boots another release: {report}");
    web.log_in(PASSWORD);
    let models = api_models(vm, key);
    assert!(models.contains(&MODEL.to_string()), "the kept data lost the model library: {models:?}");
}
