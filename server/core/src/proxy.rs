//! Decisions a tenant delegates to its own endpoints: `connect` (who a token-less client is),
//! `subscribe`, `publish` (allow, deny, or replace the data) and `refresh` (extend a
//! proxy-authenticated connection). The core asks through [`ProxyClient`], which the server
//! implements over HTTP; [`crate::Hub::consult`] applies the tenant's failure policy, so every
//! caller sees the same three outcomes: no proxy or carry on, allowed with a result, refused.

use async_trait::async_trait;
use herald_types::model::{ProxyKind, TenantProxy};

/// What a proxy answered.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Allowed; the `result` object (may be empty).
    Allow(serde_json::Map<String, serde_json::Value>),
    /// Refused, with the reason to tell the client.
    Deny(String),
}

#[async_trait]
pub trait ProxyClient: Send + Sync {
    /// Calls the tenant's endpoint for `kind` with `body`; `Err` is a failure (timeout, error
    /// status, an answer that is neither allow nor deny), with why.
    async fn call(
        &self,
        proxy: &TenantProxy,
        kind: ProxyKind,
        body: serde_json::Value,
    ) -> Result<Verdict, String>;
}
