//! One xtask binary, as a target directory shared between checkouts leaves it, run in two
//! checkouts: each run must read the checkout it runs in, not the one it was built from.

use std::path::Path;
use std::process::Command;

/// A checkout at `dir` whose image spec has one extra profile, `marker`.
fn checkout(dir: &Path, marker: &str) {
    let spec = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../image/hellas.toml")).unwrap();
    std::fs::create_dir_all(dir.join("image")).unwrap();
    std::fs::create_dir_all(dir.join("services/hellasd")).unwrap();
    std::fs::write(dir.join("Cargo.toml"), "[workspace]\nmembers = [\"xtask\", \"services/hellasd\"]\n").unwrap();
    std::fs::write(dir.join("image/hellas.toml"), format!("{spec}\n[profiles.{marker}]\n")).unwrap();
}

/// What `cargo xtask image --profile none` says when run in `dir`: the spec's known profiles.
fn unknown_profile_error(dir: &Path, cache: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["image", "--profile", "none"])
        .current_dir(dir)
        .env("HELLAS_CACHE", cache)
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn each_checkout_reads_its_own_image_spec() {
    let temp = tempfile::tempdir().unwrap();
    let (a, b) = (temp.path().join("a"), temp.path().join("b"));
    checkout(&a, "only-in-a");
    checkout(&b, "only-in-b");
    // From a subdirectory too, as cargo finds the workspace.
    let in_a = unknown_profile_error(&a.join("services/hellasd"), &temp.path().join("cache"));
    let in_b = unknown_profile_error(&b, &temp.path().join("cache"));
    assert!(in_a.contains("only-in-a") && !in_a.contains("only-in-b"), "{in_a}");
    assert!(in_b.contains("only-in-b") && !in_b.contains("only-in-a"), "{in_b}");
    assert!(!temp.path().join("cache").exists(), "the runs stopped before building anything");
}

#[test]
fn outside_a_checkout_it_says_so() {
    let temp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask")).args(["image"]).current_dir(temp.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not inside a Hellas checkout"), "{err}");
}
