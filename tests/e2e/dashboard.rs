//! The admin dashboard in a real browser, against the real binary serving the built dashboard
//! (`admin-ui/dist`) at `/admin`. The browser work is in `tests/browser/dashboard.mjs`
//! (playwright-core driving the system Chromium); each scenario there asserts what a person
//! would see and saves screenshots under `tests/artifacts/dashboard/`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::support::{ADMIN_TOKEN, Herald, Start, browser_tooling};

/// The built dashboard, or `None` (with a notice) when it is not built, outside CI.
fn dashboard_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../admin-ui/dist");
    if dir.join("index.html").is_file() && dir.join("pkg/admin_ui_bg.wasm").is_file() {
        return Some(dir.canonicalize().expect("absolute path"));
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but the admin dashboard is not built: run the tests with `cargo xtask test`");
    }
    eprintln!(
        "skipping dashboard test: build the dashboard with `cargo xtask test` (or `cargo xtask dashboard`)"
    );
    None
}

/// Starts a node serving the dashboard and runs one scenario of dashboard.mjs against it.
async fn drive(scenario: &str, mut env: Vec<(String, String)>) {
    let Some((chromium, browser_dir)) = browser_tooling() else { return };
    let Some(dist) = dashboard_dir() else { return };
    env.push(("HERALD_ADMIN_DIR".into(), dist.display().to_string()));
    let h = Herald::start(Start { admin_token: Some(ADMIN_TOKEN.into()), env, ..Default::default() }).await;
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/artifacts/dashboard");
    std::fs::create_dir_all(&shots).expect("artifacts dir");
    let run = tokio::process::Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .arg(&h.base)
        .arg(ADMIN_TOKEN)
        .arg(&shots)
        .arg(scenario)
        .env("HERALD_TEST_CHROMIUM", chromium)
        .current_dir(&browser_dir)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the dashboard scenario finishes in time")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.lines().any(|l| l.contains(r#""step":"done""#)),
        "dashboard scenario `{scenario}` failed ({}):\n{stdout}\n{stderr}\nserver log:\n{}",
        out.status,
        h.log()
    );
}

/// Log in; create a tenant, a namespace, a channel and an API key (secret shown once); live tail
/// with REST and form publishes; WebSocket clients raise the live count; presence; token
/// minting; audit log; suspension drops the clients (4003) and the count; a tenant key sees its
/// tenant only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser() {
    drive("main", Vec::new()).await;
}

/// An expired admin session sends the dashboard back to the login page, with a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_returns_to_login_when_the_session_expires() {
    drive("expiry", vec![("HERALD_ADMIN_SESSION_TTL_SECONDS".into(), "6".into())]).await;
}
