//! API fuzzing: schemathesis (PyPI) generates requests from the served OpenAPI spec and sends
//! them to the real binary, as the admin and as a tenant API key. No request may get a 5xx,
//! and every response must match the spec (status, content type, body schema). Bounded: a fixed
//! seed and a small example count per operation; run longer by hand with, e.g.,
//! `schemathesis run http://127.0.0.1:8080/v1/openapi.json -H 'Authorization: Bearer …' -n 500`.

use crate::support::{ADMIN_TOKEN, Herald, realtime_tenant};

/// The schemathesis CLI from `HERALD_TEST_SCHEMATHESIS` (set by `cargo xtask test`).
fn schemathesis() -> Option<std::path::PathBuf> {
    crate::support::tool_from_env("HERALD_TEST_SCHEMATHESIS", "API fuzzing (schemathesis from PyPI)")
}

async fn fuzz(cli: &std::path::Path, h: &Herald, credential: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(cli)
        .current_dir(dir.path())
        .arg("run")
        .arg(format!("{}/v1/openapi.json", h.base))
        .args(["-H", &format!("Authorization: Bearer {credential}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--phases", "examples,fuzzing", "-n", "15", "--seed", "20261201", "--request-timeout", "10"])
        // poem-openapi describes an event stream as an array of events, which schemathesis
        // checks as one JSON document; the stats stream has its own tests (stats.rs).
        .args(["--exclude-path", "/v1/stats/stream"])
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("schemathesis runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found failures:\n{text}\n--- node log ---\n{}", h.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_get_no_5xx_and_answers_match_the_spec() {
    let Some(cli) = schemathesis() else { return };
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    fuzz(&cli, &h, ADMIN_TOKEN).await;
    fuzz(&cli, &h, t.key.token.as_deref().unwrap()).await;
}
