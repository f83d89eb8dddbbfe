//! Herald's webhook signatures (crate `herald-webhooks`) against the maintained Standard
//! Webhooks libraries a receiver would use: PyPI `standardwebhooks` and npm `standardwebhooks`.
//! Each verifies what Herald signs, refuses it altered or replayed outside the tolerance, and
//! Herald's verifier accepts what the Python library signs. The recipes are the ones in
//! docs/hooks.md.

use herald_webhooks::{DEFAULT_TOLERANCE_SECONDS, Secret, sign_headers, verify};

/// Runs a script with the receiver's library; returns its stdout (it prints ok or the error).
async fn run(program: &std::path::Path, args: &[&str], env: &[(&str, String)]) -> String {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.expect("the receiver's runtime starts");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

const PYTHON_VERIFY: &str = r#"
import json, os
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
wh = Webhook(os.environ["SECRET"])
headers = json.loads(os.environ["HEADERS"])
try:
    wh.verify(os.environ["BODY"], headers)
    print("ok")
except WebhookVerificationError as e:
    print("refused:", e)
"#;

const PYTHON_SIGN: &str = r#"
import os
from datetime import datetime, timezone
from standardwebhooks.webhooks import Webhook
print(Webhook(os.environ["SECRET"]).sign(os.environ["ID"], datetime.fromtimestamp(int(os.environ["TS"]), tz=timezone.utc), os.environ["BODY"]))
"#;

const NODE_VERIFY: &str = r#"
const { Webhook } = require("standardwebhooks");
const wh = new Webhook(process.env.SECRET);
try {
  wh.verify(process.env.BODY, JSON.parse(process.env.HEADERS));
  console.log("ok");
} catch (e) {
  console.log("refused: " + e.message);
}
"#;

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn headers_json(headers: &[(&'static str, String); 3]) -> String {
    serde_json::Value::Object(
        headers.iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone()))).collect(),
    )
    .to_string()
}

/// What a receiver library says of: a fresh request, the same with an altered body, and the same
/// signed ten minutes ago (a replay).
async fn receiver_verdicts(verify: impl AsyncFn(String, String, String) -> String) {
    let secret = Secret::generate();
    let body = r#"{"events":[{"type":"channel.occupied","channel":"chat:lobby"}]}"#;
    let fresh = sign_headers(&[Secret::generate(), secret.clone()], "evt_01", now(), body.as_bytes());
    assert_eq!(
        verify(secret.to_string(), headers_json(&fresh), body.into()).await,
        "ok",
        "rotation: either secret"
    );
    let altered = verify(secret.to_string(), headers_json(&fresh), body.replace("lobby", "vault")).await;
    assert!(altered.starts_with("refused"), "{altered}");
    let old = sign_headers(std::slice::from_ref(&secret), "evt_01", now() - 600, body.as_bytes());
    let replayed = verify(secret.to_string(), headers_json(&old), body.into()).await;
    assert!(replayed.starts_with("refused"), "{replayed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_standardwebhooks_verifies_herald_signatures_and_herald_verifies_its_own() {
    let Some(python) =
        crate::support::tool_from_env("HERALD_TEST_WEBHOOKS_PYTHON", "webhook signature interop (Python)")
    else {
        return;
    };
    receiver_verdicts(async |secret, headers, body| {
        run(&python, &["-c", PYTHON_VERIFY], &[("SECRET", secret), ("HEADERS", headers), ("BODY", body)])
            .await
    })
    .await;
    // And the other way: Herald's verifier accepts the library's signature.
    let secret = Secret::generate();
    let (id, ts, body) = ("evt_py", now(), r#"{"from":"python"}"#);
    let signature = run(
        &python,
        &["-c", PYTHON_SIGN],
        &[("SECRET", secret.to_string()), ("ID", id.into()), ("TS", ts.to_string()), ("BODY", body.into())],
    )
    .await;
    let ts_text = ts.to_string();
    let header = |name: &str| match name {
        "webhook-id" => Some(id),
        "webhook-timestamp" => Some(ts_text.as_str()),
        "webhook-signature" => Some(signature.as_str()),
        _ => None,
    };
    assert_eq!(verify(&[secret], header, body.as_bytes(), now(), DEFAULT_TOLERANCE_SECONDS), Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_standardwebhooks_verifies_herald_signatures() {
    if crate::support::tool_from_env("HERALD_TEST_CHROMIUM", "webhook signature interop (Node.js)").is_none()
    {
        return; // The npm packages of tests/browser are installed with the browser tooling.
    }
    let modules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser/node_modules");
    assert!(
        modules.join("standardwebhooks").exists(),
        "npm standardwebhooks is not installed in tests/browser"
    );
    let node = std::path::PathBuf::from("node");
    receiver_verdicts(async |secret, headers, body| {
        run(
            &node,
            &["-e", NODE_VERIFY],
            &[
                ("SECRET", secret),
                ("HEADERS", headers),
                ("BODY", body),
                ("NODE_PATH", modules.display().to_string()),
            ],
        )
        .await
    })
    .await;
}
