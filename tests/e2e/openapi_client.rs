//! The committed OpenAPI spec is usable: the publisher examples of `docs/examples`, with
//! clients generated from it by maintained generators (openapi-python-client; openapi-typescript
//! with openapi-fetch), publish, read history, and a WebSocket subscriber receives the message.

use serde_json::json;

use crate::support::{Herald, realtime_tenant};

/// The Python interpreter of an environment with `openapi-python-client` installed, from
/// `HERALD_TEST_OPENAPI_PYTHON` (set by `cargo xtask test`).
fn generator_python() -> Option<std::path::PathBuf> {
    crate::support::tool_from_env(
        "HERALD_TEST_OPENAPI_PYTHON",
        "the generated-client test (openapi-python-client from PyPI)",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_python_client_publishes_to_a_websocket_subscriber() {
    let Some(python) = generator_python() else { return };
    let generator = python.parent().unwrap().join("openapi-python-client");
    let dir = tempfile::tempdir().unwrap();
    let spec = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi/herald.json");
    let out = std::process::Command::new(&generator)
        .args(["generate", "--meta", "none", "--output-path"])
        .arg(dir.path().join("herald_client"))
        .arg("--path")
        .arg(&spec)
        .output()
        .expect("openapi-python-client runs");
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{log}");
    assert!(
        !log.contains("will not be generated") && !log.contains("Unable to process"),
        "every operation generates:\n{log}"
    );

    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    let mut ws = h.ws(&t.token("u", json!({"news": ["subscribe"]})).await).await;
    ws.subscribe("news").await;

    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/publish-python/publish.py");
    let key = t.key.token.clone().unwrap();
    let run = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&h.base)
        .arg(&key)
        .env("PYTHONPATH", dir.path())
        .output()
        .await
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&run.stdout).expect("the example prints JSON");
    assert_eq!(printed["position"], 1, "{printed}");
    assert_eq!(printed["in_history"], true, "history holds the message");

    let received = ws.recv().await;
    assert_eq!(received["type"], "pub");
    assert_eq!(received["data"], json!({"from": "python", "n": [1, 2]}));
    assert_eq!(received["event"], "generated");
    assert_eq!(received["epoch"], printed["epoch"]);
}

/// The TypeScript publisher example (`docs/examples/publish-typescript`): types generated from
/// the spec by openapi-typescript, requests by openapi-fetch; `cargo xtask test` generates,
/// type-checks and bundles it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_typescript_client_publishes_to_a_websocket_subscriber() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/publish-typescript");
    let script = dir.join("dist/publish.js");
    if !script.exists() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "{} is missing: cargo xtask test builds it (npm)",
            script.display()
        );
        eprintln!("skipping the TypeScript publisher test: cargo xtask test builds it (needs npm)");
        return;
    }
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    let mut ws = h.ws(&t.token("u", json!({"news": ["subscribe"]})).await).await;
    ws.subscribe("news").await;
    let key = t.key.token.clone().unwrap();
    let run =
        tokio::process::Command::new("node").arg(&script).arg(&h.base).arg(&key).output().await.unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&run.stdout).expect("the example prints JSON");
    assert_eq!(
        (printed["position"].as_u64(), printed["in_history"].as_bool()),
        (Some(1), Some(true)),
        "{printed}"
    );
    let received = ws.recv().await;
    assert_eq!(received["data"], json!({"from": "typescript", "n": [1, 2]}));
    assert_eq!(received["event"], "generated");
    assert_eq!(received["epoch"], printed["epoch"]);

    // A refusal comes back as the problem document, typed.
    let bad = tokio::process::Command::new("node")
        .arg(&script)
        .arg(&h.base)
        .arg("hk_wrong")
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("refused: invalid_credentials"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
