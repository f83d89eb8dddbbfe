//! Runs `herald-bench smoke` (and a tiny `cluster` run) against the `herald` binary of the same
//! build profile, so the bench tool keeps compiling and working. Its figures are printed, never
//! asserted beyond "every message arrived".

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

/// `target/<profile>/herald`: this test runs from `target/<profile>/deps/`.
fn herald_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps/<test>");
    let herald = profile_dir.join("herald");
    assert!(
        herald.exists(),
        "{} does not exist: build the server first with `cargo build -p herald-server` \
         (or run the whole workspace's tests, which builds it)",
        herald.display()
    );
    herald
}

/// Runs `herald-bench <args> --spawn <herald> --json <file>`, asserts it succeeded and returns
/// the figures it wrote.
fn run_bench<S: AsRef<OsStr>>(args: &[S]) -> serde_json::Value {
    let json = tempfile::NamedTempFile::new().expect("temp file");
    let out = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args(args)
        .arg("--spawn")
        .arg(herald_binary())
        .arg("--json")
        .arg(json.path())
        .output()
        .expect("herald-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "herald-bench failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    serde_json::from_str(&std::fs::read_to_string(json.path()).expect("JSON written")).expect("valid JSON")
}

#[test]
fn smoke_mode_runs_against_herald_and_the_baseline() {
    let figures = run_bench(&["smoke"]);
    let scenarios: Vec<&str> = figures["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .filter_map(|s| s["scenario"].as_str())
        .collect();
    assert_eq!(scenarios, ["idle", "fanout", "channels"]);
}

/// `cluster --nats-server <HERALD_TEST_NATS_SERVER> <extra>`, or `None` (with a notice) when
/// no NATS server is given.
fn cluster_args(extra: &[&str]) -> Option<Vec<std::ffi::OsString>> {
    let Some(nats) = std::env::var_os("HERALD_TEST_NATS_SERVER") else {
        eprintln!("skipping the cluster smoke run: set HERALD_TEST_NATS_SERVER or run cargo xtask test");
        return None;
    };
    let mut args: Vec<std::ffi::OsString> = vec!["cluster".into(), "--nats-server".into(), nats];
    args.extend(extra.iter().map(Into::into));
    Some(args)
}

/// `herald-bench cluster` with tiny numbers: NATS and three nodes start, every subscriber gets
/// every message, everything is stopped; then the same against one node (`--against-single`),
/// reported beside it. Needs `HERALD_TEST_NATS_SERVER` (`cargo xtask test`
/// sets it).
#[test]
fn cluster_mode_runs_three_nodes_over_nats() {
    let Some(args) = cluster_args(&[
        "--subscribers",
        "30",
        "--rate",
        "20",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--drain-timeout",
        "5",
        "--max-in-flight",
        "4",
        "--against-single",
    ]) else {
        return;
    };
    let figures = run_bench(&args);
    let scenario = &figures["scenarios"][0];
    let run = &scenario["herald"];
    assert_eq!(run["subscribers_open"], 30, "{run}");
    assert!(run["deliveries"].as_u64().is_some_and(|d| d > 0), "{run}");
    assert_eq!(run["missing"], 0, "lost messages: {run}");
    // Node 1's stores, read from its metrics.
    assert!(run["stored_messages"].as_u64().is_some_and(|n| n > 0), "{run}");
    // The same plan against one node of the same binary, and the gap between them.
    let single = &scenario["baseline"];
    assert_eq!(single["server"], "herald", "{single}");
    assert_eq!(single["subscribers_open"], 30, "{single}");
    assert_eq!(single["missing"], 0, "lost messages: {single}");
    assert!(scenario["ratios"]["cluster_p99_minus_single_node_ms"].is_f64(), "{scenario}");
    assert!(scenario["ratios"]["cluster_other_nodes_p99_minus_single_node_ms"].is_f64(), "{scenario}");
}

/// The cluster scenario's scale options with tiny numbers: mixed transports over two nodes,
/// several channels and users, presence channels, and a churn window; every transport's
/// connections open, the churning ones cycle, nothing is lost.
#[test]
fn cluster_mode_mixes_transports_users_and_churn() {
    let Some(args) = cluster_args(&[
        "--nodes",
        "2",
        "--subscribers",
        "40",
        "--mix",
        "ws=50,sse=30,long-poll=20",
        "--channels",
        "4",
        "--users",
        "5",
        "--presence",
        "--churn",
        "10",
        "--churn-seconds",
        "1",
        "--churn-hold-ms",
        "100",
        "--settle",
        "0.2",
        "--rate",
        "20",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--drain-timeout",
        "5",
    ]) else {
        return;
    };
    let figures = run_bench(&args);
    let run = &figures["scenarios"][0]["herald"];
    let opened: Vec<(&str, u64)> = run["transports"]
        .as_array()
        .expect("transports")
        .iter()
        .map(|t| (t["transport"].as_str().unwrap(), t["opened"].as_u64().unwrap()))
        .collect();
    assert_eq!(opened, [("ws", 20), ("sse", 12), ("long_poll", 8)], "{run}");
    assert_eq!(run["subscribers_open"], 40, "{run}");
    assert!(run["churn"]["cycles"].as_u64().is_some_and(|c| c >= 5), "{run}");
    assert_eq!(run["churn"]["failed"], 0, "{run}");
    assert!(run["deliveries"].as_u64().is_some_and(|d| d > 0), "{run}");
    assert_eq!(run["missing"], 0, "lost messages: {run}");
}
