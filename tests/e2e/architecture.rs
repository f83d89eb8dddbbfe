//! The architecture invariants of ARCHITECTURE.md that Cargo can enforce, checked on the
//! manifests: which crate may depend on the HTTP server, the database layer and NATS.

use std::collections::BTreeSet;
use std::path::Path;

/// The dependency names of a crate's `[dependencies]` (not dev-dependencies).
fn dependencies(krate: &str) -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(krate).join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let manifest: toml::Table = text.parse().expect("manifest parses");
    manifest
        .get("dependencies")
        .and_then(|d| d.as_table())
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default()
}

const HTTP: &[&str] = &["poem", "poem-openapi", "hyper", "axum"];
const DATABASE: &[&str] = &["sea-orm", "sea-orm-migration", "sqlx", "herald-migrations"];
const NATS: &[&str] = &["async-nats"];

fn uses(krate: &str, forbidden: &[&str]) -> Vec<String> {
    dependencies(krate).into_iter().filter(|d| forbidden.contains(&d.as_str())).collect()
}

#[test]
fn the_core_knows_no_http_server_database_or_broker() {
    for forbidden in [HTTP, DATABASE, NATS] {
        assert_eq!(uses("core", forbidden), Vec::<String>::new(), "herald-core must not depend on these");
    }
    // Domain types derive HTTP schemas only behind their `openapi` feature.
    assert_eq!(uses("types", DATABASE), Vec::<String>::new());
    assert_eq!(uses("types", NATS), Vec::<String>::new());
    let types =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("types/Cargo.toml")).unwrap();
    assert!(
        types.contains("poem-openapi = { workspace = true, optional = true }"),
        "poem-openapi stays optional"
    );
}

#[test]
fn only_the_store_imports_the_database_and_only_the_nats_crate_imports_nats() {
    assert_eq!(uses("nats", DATABASE), Vec::<String>::new());
    assert_eq!(uses("nats", HTTP), Vec::<String>::new());
    assert_eq!(uses("store", NATS), Vec::<String>::new());
    assert_eq!(uses("store", HTTP), Vec::<String>::new());
    assert_eq!(uses(".", DATABASE), Vec::<String>::new(), "the server goes through herald-store");
    assert_eq!(uses(".", NATS), Vec::<String>::new(), "the server goes through herald-nats");
    assert_eq!(uses("store", DATABASE), vec!["herald-migrations".to_owned(), "sea-orm".to_owned()]);
    assert_eq!(uses("nats", NATS), vec!["async-nats".to_owned()]);
    // The receivers' helper stands alone.
    for forbidden in [HTTP, DATABASE, NATS] {
        assert_eq!(uses("webhooks", forbidden), Vec::<String>::new());
    }
    assert!(
        dependencies("webhooks").iter().all(|d| !d.starts_with("herald")),
        "herald-webhooks stands alone"
    );
}

#[test]
fn every_error_code_is_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let docs = ["docs/api.md", "docs/protocol.md"]
        .iter()
        .map(|p| std::fs::read_to_string(root.join(p)).expect("docs"))
        .collect::<String>();
    let missing: Vec<&str> = herald_core::error::Code::ALL
        .iter()
        .map(|c| c.as_str())
        .filter(|c| !docs.contains(&format!("`{c}`")))
        .collect();
    assert!(missing.is_empty(), "error codes not in docs/api.md or docs/protocol.md: {missing:?}");
}
