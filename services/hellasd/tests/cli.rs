//! The hellasd command line on real and broken model files.

mod support;

use std::fs;

use support::{hellasd, run, SMOLLM};

fn state_args(dir: &std::path::Path) -> Vec<String> {
    vec!["--state-dir".into(), dir.display().to_string()]
}

#[test]
fn truncated_and_garbage_gguf_are_refused_with_the_offset_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let real = fs::read(support::model(SMOLLM)).unwrap();
    let truncated = dir.path().join("truncated.gguf");
    fs::write(&truncated, &real[..4096]).unwrap();
    let garbage = dir.path().join("garbage.gguf");
    fs::write(&garbage, b"GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff").unwrap();
    let state = dir.path().join("state");

    for (file, expect) in [(&truncated, "offset"), (&garbage, "offset")] {
        let out = run(hellasd().args(state_args(&state)).args(["models", "add"]).arg(file).args(["--name", "broken"]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(file.file_name().unwrap().to_str().unwrap()), "{stderr}");
        assert!(stderr.contains(expect), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");

        let out = run(hellasd().args(["plan"]).arg(file));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(expect), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let list = run(hellasd().args(state_args(&state)).args(["models", "list"]));
    assert!(list.status.success());
    assert!(list.stdout.is_empty(), "{}", String::from_utf8_lossy(&list.stdout));
    let blobs = state.join("models/blobs");
    assert!(!blobs.exists() || fs::read_dir(&blobs).unwrap().count() == 0, "a broken model left a file behind");
}

#[test]
fn models_add_list_rm() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let add = |name: &str| run(hellasd().args(state_args(&state)).args(["models", "add"]).arg(support::model(SMOLLM)).args(["--name", name]));
    let out = add("smollm2:135m-q4_1");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"));
    assert!(state.join("models/blobs/b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53.gguf").exists());
    // A second name for the same file shares the blob.
    assert!(add("smol:alias").status.success());
    let dup = add("smol:alias");
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already"));
    let bad = add("../escape");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid model name"));

    let list = String::from_utf8(run(hellasd().args(state_args(&state)).args(["models", "list"])).stdout).unwrap();
    assert!(list.contains("smollm2:135m-q4_1") && list.contains("smol:alias"), "{list}");
    assert!(list.lines().all(|l| l.ends_with(" completion")), "each says what it can do: {list}");

    let blob = state.join("models/blobs/b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53.gguf");
    assert!(run(hellasd().args(state_args(&state)).args(["models", "rm", "smol:alias"])).status.success());
    assert!(blob.exists(), "the blob is still used by the other name");
    assert!(run(hellasd().args(state_args(&state)).args(["models", "rm", "smollm2:135m-q4_1"])).status.success());
    assert!(!blob.exists(), "the last name's blob is removed");
    assert!(!run(hellasd().args(state_args(&state)).args(["models", "rm", "smollm2:135m-q4_1"])).status.success());
}

#[test]
fn unknown_configuration_keys_are_refused_with_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    fs::write(&config, "[engine]\nctx = 4096\nparalel = 2\n").unwrap();
    let out = run(hellasd().arg("--config").arg(&config).args(["keys", "list"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("bad.toml") && stderr.contains("paralel"), "{stderr}");
}
