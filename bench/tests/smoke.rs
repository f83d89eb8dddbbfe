//! Runs `herald-bench smoke` against the `herald` binary of the same build profile, so the
//! bench tool keeps compiling and working. Its figures are printed, never asserted.

use std::path::PathBuf;
use std::process::Command;

/// `target/<profile>/herald`: this test runs from `target/<profile>/deps/`.
fn herald_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps/<test>");
    profile_dir.join("herald")
}

#[test]
fn smoke_mode_runs_against_herald_and_the_baseline() {
    let herald = herald_binary();
    assert!(
        herald.exists(),
        "{} does not exist: build the server first with `cargo build -p herald-server` \
         (or run the whole workspace's tests, which builds it)",
        herald.display()
    );
    let json = tempfile::NamedTempFile::new().expect("temp file");
    let out = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .arg("smoke")
        .arg("--spawn")
        .arg(&herald)
        .arg("--json")
        .arg(json.path())
        .output()
        .expect("herald-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "herald-bench smoke failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let figures: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json.path()).expect("JSON written"))
            .expect("valid JSON");
    let scenarios: Vec<&str> = figures["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .filter_map(|s| s["scenario"].as_str())
        .collect();
    assert_eq!(scenarios, ["idle", "fanout", "channels"]);
}
