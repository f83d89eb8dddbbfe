//! The committed OpenAPI spec is usable: a client generated from it by a maintained generator
//! (openapi-python-client) publishes, and a WebSocket subscriber receives the message.

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

    let script = r#"
import sys
from herald_client import AuthenticatedClient
from herald_client.api.messages import publish, history
from herald_client.models import PublishRequest, Published, HistoryPage

client = AuthenticatedClient(base_url=sys.argv[1], token=sys.argv[2])
result = publish.sync(tenant="acme", channel="news", client=client,
                      body=PublishRequest(data={"from": "python", "n": [1, 2]}, event="generated"))
assert isinstance(result, Published), result
page = history.sync(tenant="acme", channel="news", client=client)
assert isinstance(page, HistoryPage), page
print(result.position, result.epoch, len(page.publications))
"#;
    let key = t.key.token.clone().unwrap();
    let run = tokio::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&h.base)
        .arg(&key)
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    let fields: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(fields[0], "1");
    assert_eq!(fields[2], "1", "history holds the message");

    let received = ws.recv().await;
    assert_eq!(received["type"], "pub");
    assert_eq!(received["data"], json!({"from": "python", "n": [1, 2]}));
    assert_eq!(received["event"], "generated");
    assert_eq!(received["epoch"], fields[1]);
}
