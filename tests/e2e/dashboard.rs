//! The admin dashboard in a real browser, against the real binary serving the built dashboard
//! (`admin-ui/dist`) at `/admin`. The browser work is in `tests/browser/dashboard.mjs`
//! (playwright-core driving the system Chromium); each scenario there asserts what a person
//! would see and saves screenshots under `tests/artifacts/dashboard/`. What only the test can
//! see (what a webhook receiver got) the scenario asks for on its stdout, and is answered on
//! its stdin.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use herald_webhooks::{DEFAULT_TOLERANCE_SECONDS, Secret, verify};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::support::{ADMIN_TOKEN, Answer, Herald, Receiver, Start, browser_tooling};

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

/// Starts a node serving the dashboard and runs one scenario of dashboard.mjs against it, with
/// `receiver` (when given) as the scenario's webhook receiver.
async fn drive(scenario: &str, mut env: Vec<(String, String)>, receiver: Option<&Receiver>) {
    let Some((chromium, browser_dir)) = browser_tooling() else { return };
    let Some(dist) = dashboard_dir() else { return };
    env.push(("HERALD_ADMIN_DIR".into(), dist.display().to_string()));
    let h = Herald::start(Start { admin_token: Some(ADMIN_TOKEN.into()), env, ..Default::default() }).await;
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/artifacts/dashboard");
    std::fs::create_dir_all(&shots).expect("artifacts dir");
    let mut child = tokio::process::Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .arg(&h.base)
        .arg(ADMIN_TOKEN)
        .arg(&shots)
        .arg(scenario)
        .args(receiver.map(|r| r.url.clone()))
        .env("HERALD_TEST_CHROMIUM", chromium)
        .current_dir(&browser_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let mut errors = child.stderr.take().expect("piped stderr");
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = errors.read_to_string(&mut text).await;
        text
    });
    let mut stdout = String::new();
    let run = async {
        while let Some(line) = lines.next_line().await.expect("read the scenario's output") {
            stdout.push_str(&line);
            stdout.push('\n');
            let question = serde_json::from_str::<Value>(&line).ok().and_then(|v| v.get("ask").cloned());
            if let Some(question) = question {
                let reply = answer(&question, receiver).await;
                // A scenario that has exited no longer reads: its status tells.
                let _ = stdin.write_all(format!("{reply}\n").as_bytes()).await;
            }
        }
        child.wait().await.expect("node runs")
    };
    let status = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the dashboard scenario finishes in time");
    let stderr = stderr.await.unwrap_or_default();
    assert!(
        status.success() && stdout.lines().any(|l| l.contains(r#""step":"done""#)),
        "dashboard scenario `{scenario}` failed ({status}):\n{stdout}\n{stderr}\nserver log:\n{}",
        h.log()
    );
}

/// Answers a scenario's question about its receiver:
/// - `{"script": [410, …]}`: the receiver answers the next requests with these statuses;
/// - `{"received": "webhook.test", "count": n, "secrets": ["whsec_…", …]}`: waits until the
///   receiver got `n` requests of that event type and answers, for each in order, its
///   `webhook-id` and which of `secrets` verify its signature (`verified`, one per secret).
///
/// A question that cannot be answered gets `{"error": …}`, which fails the scenario.
async fn answer(question: &Value, receiver: Option<&Receiver>) -> Value {
    let Some(receiver) = receiver else { return json!({"error": "this scenario has no receiver"}) };
    if let Some(statuses) = question["script"].as_array() {
        let answers: Vec<Answer> =
            statuses.iter().filter_map(Value::as_u64).map(|s| Answer::Status(s as u16)).collect();
        receiver.script(&answers);
        return json!({"ok": true});
    }
    let Some(kind) = question["received"].as_str() else {
        return json!({"error": format!("not a question: {question}")});
    };
    let count = question["count"].as_u64().unwrap_or(1) as usize;
    let secrets: Vec<Secret> = question["secrets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| Secret::parse(s.as_str().unwrap_or_default()).expect("a webhook secret"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = receiver.of_type(kind);
        if got.len() >= count {
            let now = chrono::Utc::now().timestamp();
            let requests: Vec<Value> = got
                .iter()
                .map(|r| {
                    let verified: Vec<bool> = secrets
                        .iter()
                        .map(|s| {
                            let one = std::slice::from_ref(s);
                            verify(one, |name| r.header(name), &r.body, now, DEFAULT_TOLERANCE_SECONDS)
                                .is_ok()
                        })
                        .collect();
                    json!({"webhook_id": r.header("webhook-id"), "verified": verified})
                })
                .collect();
            return json!({"count": got.len(), "requests": requests});
        }
        if Instant::now() > deadline {
            return json!({
                "error": format!("the receiver got {} {kind} requests in 20 s, expected {count}", got.len())
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Log in; create a tenant, a namespace, a channel and an API key (secret shown once); live tail
/// with REST and form publishes; WebSocket clients raise the live count; presence; token
/// minting; audit log; suspension drops the clients (4003) and the count; a tenant key sees its
/// tenant only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser() {
    drive("main", Vec::new(), None).await;
}

/// An expired admin session sends the dashboard back to the login page, with a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_returns_to_login_when_the_session_expires() {
    drive("expiry", vec![("HERALD_ADMIN_SESSION_TTL_SECONDS".into(), "6".into())], None).await;
}

/// A tenant's Webhooks page, against a real local receiver (the node may call loopback
/// addresses): a private address is refused on the URL field; a webhook is created and its
/// secret shown once; a test event reaches the receiver signed with that secret and the
/// delivery log shows it succeeded; a replay reaches it again with the same webhook-id; a 410
/// Gone answer disables the webhook, with its reason on the page; enabled again, the failed
/// delivery is replayed; disable/enable; a rotated secret is shown once and signs the next
/// request; the webhook is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_manages_webhooks_and_their_deliveries() {
    let receiver = Receiver::start().await;
    let env = vec![("HERALD_OUTBOUND_ALLOWED_NETWORKS".into(), "127.0.0.0/8".into())];
    drive("webhooks", env, Some(&receiver)).await;
}
