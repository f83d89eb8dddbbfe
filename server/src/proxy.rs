//! The HTTP side of tenants' proxies ([`herald_core::proxy`]): each decision is a signed POST
//! (Standard Webhooks headers, with the tenant's proxy secret) through the guarded outbound
//! client, answered with `{"result": {…}}` (allow) or `{"deny": {"reason": "…"}}`. Anything
//! else — another status, a timeout, a body that is neither — is a failure, which the hub
//! turns into the tenant's failure policy. Calls run in the connection's own task, bounded by
//! the tenant's `timeout_ms` and by a per-tenant cap on concurrent calls, so a slow proxy
//! delays only the clients waiting on it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use herald_core::crypto::MasterKey;
use herald_core::proxy::{ProxyClient, Verdict};
use herald_types::model::{ProxyKind, TenantProxy};

use crate::outbound::{Outbound, OutboundPolicy};

/// Bytes of a proxy's answer read at most.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Concurrent calls per tenant and node; beyond it a call fails at once.
pub const MAX_CONCURRENT_PER_TENANT: usize = 256;
/// Tenants' call slots kept before idle ones are forgotten.
const MAX_IDLE_SLOTS: usize = 1024;
/// The longest timeout a tenant may set.
pub const MAX_TIMEOUT_MS: u32 = 30_000;

/// Outcomes per kind, for `/metrics`.
#[derive(Default)]
pub struct KindCounters {
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub failed: AtomicU64,
    /// Sum of the latencies of the calls that got an answer (any status), microseconds.
    pub latency_us: AtomicU64,
    /// Calls that got an answer (any status): what `latency_us` sums over.
    pub answered: AtomicU64,
}

pub struct Proxies {
    outbound: Outbound,
    master: MasterKey,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    pub counters: [KindCounters; 4],
}

fn index(kind: ProxyKind) -> usize {
    match kind {
        ProxyKind::Connect => 0,
        ProxyKind::Subscribe => 1,
        ProxyKind::Publish => 2,
        ProxyKind::Refresh => 3,
    }
}

impl Proxies {
    pub fn new(master: MasterKey, allowed_networks: Vec<ipnet::IpNet>) -> Proxies {
        Proxies {
            outbound: Outbound::new(OutboundPolicy {
                allowed_networks,
                connect_timeout: Duration::from_millis(u64::from(MAX_TIMEOUT_MS)),
                timeout: Duration::from_millis(u64::from(MAX_TIMEOUT_MS)),
                max_response_bytes: MAX_ANSWER_BYTES,
            }),
            master,
            slots: Mutex::default(),
            counters: Default::default(),
        }
    }

    pub fn outbound(&self) -> &Outbound {
        &self.outbound
    }

    pub fn counters(&self, kind: ProxyKind) -> &KindCounters {
        &self.counters[index(kind)]
    }

    async fn request(
        &self,
        proxy: &TenantProxy,
        kind: ProxyKind,
        body: serde_json::Value,
    ) -> Result<Verdict, String> {
        let url = proxy.settings.url(kind).ok_or("no endpoint")?;
        let slots = {
            let mut all = self.slots.lock().expect("proxy slots");
            if all.len() > MAX_IDLE_SLOTS {
                // Forget the tenants with no call in flight.
                all.retain(|_, s| Arc::strong_count(s) > 1);
            }
            all.entry(proxy.tenant_id.clone())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_PER_TENANT)))
                .clone()
        };
        let _slot = slots.try_acquire_owned().map_err(|_| "too many proxy calls in flight for the tenant")?;
        let secret = crate::hooks::unseal_secret(&self.master, &proxy.secret_sealed)
            .ok_or("the proxy secret cannot be unsealed")?;
        let mut envelope = serde_json::json!({"kind": kind.as_str(), "tenant": proxy.tenant_id});
        if let (Some(map), serde_json::Value::Object(fields)) = (envelope.as_object_mut(), body) {
            map.extend(fields);
        }
        let bytes = envelope.to_string().into_bytes();
        let id = format!("prx_{}", uuid::Uuid::now_v7().simple());
        let headers = herald_webhooks::sign_headers(&[secret], &id, chrono::Utc::now().timestamp(), &bytes);
        let timeout = Duration::from_millis(u64::from(proxy.settings.timeout_ms));
        let started = std::time::Instant::now();
        let answer = self.outbound.post_within(url, &headers, bytes, Some(timeout)).await;
        herald_core::metrics::metrics().proxy_request(kind.as_str(), started.elapsed());
        let answer = answer.map_err(|e| e.to_string())?;
        let counters = self.counters(kind);
        counters.latency_us.fetch_add(answer.latency.as_micros() as u64, Ordering::Relaxed);
        counters.answered.fetch_add(1, Ordering::Relaxed);
        if !(200..300).contains(&answer.status) {
            return Err(format!("the proxy answered {}", answer.status));
        }
        let parsed: serde_json::Value = serde_json::from_slice(&answer.excerpt)
            .map_err(|_| "the proxy's answer is not JSON (or over 64 KiB)")?;
        if let Some(deny) = parsed.get("deny") {
            let reason = deny.get("reason").and_then(|r| r.as_str()).unwrap_or("denied");
            return Ok(Verdict::Deny(reason.chars().take(200).collect()));
        }
        match parsed.get("result") {
            Some(serde_json::Value::Object(result)) => Ok(Verdict::Allow(result.clone())),
            Some(serde_json::Value::Null) => Ok(Verdict::Allow(Default::default())),
            _ => Err("the proxy's answer has neither `result` nor `deny`".into()),
        }
    }
}

#[async_trait]
impl ProxyClient for Proxies {
    async fn call(
        &self,
        proxy: &TenantProxy,
        kind: ProxyKind,
        body: serde_json::Value,
    ) -> Result<Verdict, String> {
        let outcome = self.request(proxy, kind, body).await;
        let c = self.counters(kind);
        match &outcome {
            Ok(Verdict::Allow(_)) => c.allowed.fetch_add(1, Ordering::Relaxed),
            Ok(Verdict::Deny(_)) => c.denied.fetch_add(1, Ordering::Relaxed),
            Err(_) => c.failed.fetch_add(1, Ordering::Relaxed),
        };
        outcome
    }
}
