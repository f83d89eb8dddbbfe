//! The `herald` command line: configuration errors, `migrate`, and the committed OpenAPI spec.

use std::process::Command;

fn herald() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    for (k, _) in std::env::vars() {
        if k.starts_with("HERALD_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn fails_naming(cmd: &mut Command, needles: &[&str]) {
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "exit code; stderr: {}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in needles {
        assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    }
}

#[test]
fn bad_configuration_names_the_key_and_its_source() {
    let dir = tempfile::tempdir().unwrap();
    fails_naming(herald().args(["serve", "--listen", "nowhere"]), &["`listen`", "--listen"]);
    fails_naming(
        herald().args(["serve"]).env("HERALD_MAX_BODY_BYTES", "lots"),
        &["`max_body_bytes`", "HERALD_MAX_BODY_BYTES"],
    );
    fails_naming(herald().args(["serve", "--database-url", "mysql://x"]), &["`database_url`"]);
    fails_naming(
        herald().args(["serve"]).env("HERALD_ADMIN_TOKEN", "short"),
        &["`admin_token`", "HERALD_ADMIN_TOKEN"],
    );
    fails_naming(herald().args(["serve"]).env("HERALD_SECRET_KEY", "nope"), &["`secret_key`"]);
    fails_naming(herald().args(["serve", "--log-format", "xml"]), &["`log_format`"]);

    let file = dir.path().join("herald.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:1\"\nlistne = \"typo\"\n").unwrap();
    fails_naming(herald().arg("--config").arg(&file).arg("serve"), &["listne"]);
    std::fs::write(&file, "admin_session_ttl_seconds = 0\n").unwrap();
    fails_naming(
        herald().arg("--config").arg(&file).arg("serve"),
        &["`admin_session_ttl_seconds`", "config file"],
    );
    fails_naming(
        herald().args(["serve"]).env("HERALD_CONFIG", dir.path().join("missing.toml")),
        &["missing.toml"],
    );
}

#[test]
fn migrate_applies_the_schema_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let out = herald().args(["migrate", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("migrations applied"));
    assert!(dir.path().join("herald.db").exists());
    // Running it again is a no-op.
    let again = herald().args(["migrate", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert!(again.status.success());
}

/// The committed `openapi/herald.json` must be what the code generates. On a difference the
/// file is rewritten, so committing it is all that is left to do.
#[test]
fn committed_openapi_spec_is_current() {
    let out = herald().arg("openapi").output().unwrap();
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    let generated = format!("{}\n", generated.trim_end());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi/herald.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        std::fs::write(&path, &generated).unwrap();
        panic!(
            "openapi/herald.json was out of date and has been regenerated (same as \
             `cargo run -p herald-server -- openapi > openapi/herald.json`); review and commit it"
        );
    }
    let spec: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    assert!(spec["paths"]["/v1/tenants"]["post"]["operationId"] == "createTenant");
}

#[tokio::test]
async fn spec_and_docs_are_served() {
    let h = crate::support::Herald::sqlite().await;
    let spec = h.anonymous().get("/v1/openapi.json").await.expect(200);
    assert_eq!(spec["info"]["title"], "Herald");
    let docs = reqwest::get(format!("{}/docs", h.base)).await.unwrap();
    assert_eq!(docs.status(), 200);
    let html = docs.text().await.unwrap();
    assert!(html.contains("swagger"), "Swagger UI is served from the binary");
    assert!(!html.contains("cdn.") && !html.contains("unpkg.com"), "no CDN");
    let health = h.anonymous().get("/healthz").await.expect(200);
    assert_eq!(health["status"], "ok");
    let ready = h.anonymous().get("/readyz").await.expect(200);
    assert_eq!(ready["status"], "ready");
}

/// `docs/configuration.md` cannot drift from the code: one row per key, the environment
/// variable and flag each key really has, and for every numeric setting the default and the
/// range the validator applies.
#[test]
fn the_configuration_reference_matches_the_code() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md")).unwrap();
    let rows: Vec<Vec<String>> = doc
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.trim_matches('|').split(" | ").map(|c| c.trim().to_owned()).collect())
        .collect();
    let documented: Vec<&str> = rows.iter().map(|r| r[0].trim_matches('`')).collect();
    let keys = herald::config::KEYS;
    let missing: Vec<&&str> = keys.iter().filter(|k| !documented.contains(k)).collect();
    let extra: Vec<&&str> = documented.iter().filter(|k| !keys.contains(k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "undocumented keys {missing:?}, documented but unknown {extra:?}"
    );
    assert_eq!(documented.len(), keys.len(), "a key has two rows");

    let help = String::from_utf8(herald().args(["serve", "--help"]).output().unwrap().stdout).unwrap();
    for row in &rows {
        let key = row[0].trim_matches('`');
        assert_eq!(row.len(), 5, "`{key}`: a row has five cells");
        assert_eq!(row[3], format!("`HERALD_{}`", key.to_ascii_uppercase()), "`{key}`: environment variable");
        let flag = format!("--{}", key.replace('_', "-"));
        let has_flag = help.split(|c: char| c.is_whitespace() || c == ',').any(|w| w == flag);
        match row[4].as_str() {
            "—" => assert!(!has_flag, "`{key}` has the flag {flag}, the reference says none"),
            cell => {
                assert_eq!(cell, format!("`{flag}`"), "`{key}`: flag");
                assert!(has_flag, "`{key}`: `herald serve --help` has no {flag}");
            }
        }
        assert!(doc.contains(&format!("**`{key}`**")), "`{key}` has a row but no explanation");
    }
    let numeric = herald::config::numeric_settings();
    // Every row with a numeric range is one the validator reads (none skipped).
    for row in &rows {
        let first = row[2].split_whitespace().next().unwrap_or("");
        let is_range = first.split_once('-').is_some_and(|(a, b)| {
            [a, b].iter().all(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
        });
        if is_range && !row[2].contains("characters") {
            assert!(
                numeric.iter().any(|n| row[0] == format!("`{}`", n.key)),
                "{} is not read as a number",
                row[0]
            );
        }
    }
    assert!(numeric.len() > 30, "{numeric:?}");
    for setting in numeric {
        let row = rows.iter().find(|r| r[0] == format!("`{}`", setting.key)).unwrap();
        assert!(
            row[1].starts_with(&format!("`{}`", setting.default)),
            "`{}`: the default is {}, the reference says {}",
            setting.key,
            setting.default,
            row[1]
        );
        assert!(
            row[2].starts_with(&format!("{}-{}", setting.min, setting.max)),
            "`{}`: the range is {}-{}, the reference says {}",
            setting.key,
            setting.min,
            setting.max,
            row[2]
        );
    }
}
