//! Webhooks: matching the core's events to a tenant's endpoints, queueing them durably, and
//! delivering them signed, with retries, caps and a circuit breaker.
//!
//! 1. The core calls [`Hooks`] as its [`HookSink`]: `wants` answers from a per-tenant cache of
//!    which event types any enabled webhook takes; `emit` hands the event to a bounded channel
//!    (full: the event is dropped and counted, the caller never waits).
//! 2. The queueing task matches each event to webhooks, numbers channel events with the
//!    channel's event sequence (stored, so it keeps increasing across restarts and nodes),
//!    builds the body once per event, and stores one delivery per webhook in the database
//!    (up to `webhook_max_queued_per_tenant`). From here on the event survives restarts.
//! 3. The dispatcher claims due deliveries (each claim is one conditional update, so one node
//!    sends each attempt; a claim that outlives its node expires and another node takes it),
//!    signs them (Standard Webhooks, every live secret), and POSTs them through the guarded
//!    outbound client. 2xx: done. 410 Gone: the webhook is disabled. Anything else: the next
//!    attempt waits a random time up to `initial × 2^(attempt-1)` (full jitter, capped at the
//!    maximum delay) until the retry period ends; then the delivery is recorded as failed.
//!    Consecutive failures open the webhook's breaker: its deliveries wait without requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use herald_core::crypto::MasterKey;
use herald_core::hooks::{HookEvent, HookSink, Ticket, WorkQueue};
use herald_store::{AttemptResult, Claim, Store};
use herald_types::model::{Delivery, DeliveryStatus, Webhook, WebhookEvent};
use rand::Rng;

use crate::config::WebhookSettings;
use crate::outbound::{Outbound, OutboundError, OutboundPolicy};

/// Events waiting to be queued, per node; beyond it events are dropped and counted.
const EVENT_BUFFER: usize = 10_000;
/// How long cached webhook lists are trusted (changes on this node apply at once; on other
/// nodes through the tenant-change broadcast, or after this at the latest).
const CACHE_TTL: Duration = Duration::from_secs(10);
/// Deliveries claimed per dispatcher round at most.
const CLAIM_BATCH: u64 = 64;
/// Bytes of an endpoint's answer kept in the delivery log.
pub const EXCERPT_BYTES: usize = 1024;

/// How often a node in cluster mode sweeps the database for deliveries the queue lost (a push
/// that failed while NATS was away, or the queue's stream full).
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// How long past due a delivery must be for that sweep to take it (beyond the claim's lease).
const SWEEP_OVERDUE: Duration = Duration::from_secs(60);

/// The event types the presence detector produces, as a mask.
const PRESENCE_EVENTS: u16 = WebhookEvent::ChannelOccupied.bit()
    | WebhookEvent::ChannelVacated.bit()
    | WebhookEvent::PresenceJoin.bit()
    | WebhookEvent::PresenceLeave.bit();

/// A delivery's id and when it is due again (`None`: finished).
type Next = (String, Option<DateTime<Utc>>);

/// A tenant's enabled webhooks, as the sink matches events to them.
struct TenantHooks {
    webhooks: Vec<Arc<Webhook>>,
    /// Event types any enabled webhook takes (client publishes).
    mask: u16,
    /// Whether any takes REST publishes as `message.published`.
    api_publishes: bool,
    loaded: Instant,
}

/// Counters for `/metrics` and the stats API.
#[derive(Default)]
pub struct HookCounters {
    pub events_queued: AtomicU64,
    pub events_dropped: AtomicU64,
    pub attempts: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub breaker_opened: AtomicU64,
}

struct Breaker {
    /// When the latest failure was (a breaker untouched for an hour is forgotten).
    last: Instant,
    failures: u32,
    open_until: Option<Instant>,
    open_for: Duration,
}

pub struct Hooks {
    store: Store,
    master: MasterKey,
    node_id: String,
    pub settings: WebhookSettings,
    outbound: Outbound,
    cache: RwLock<HashMap<Arc<str>, Arc<TenantHooks>>>,
    events: tokio::sync::mpsc::Sender<HookEvent>,
    wake: tokio::sync::Notify,
    in_flight: Arc<tokio::sync::Semaphore>,
    tenant_in_flight: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    breakers: Mutex<HashMap<String, Breaker>>,
    /// The cluster's work queue (cluster mode); without one the node polls its store.
    queue: Option<Arc<dyn WorkQueue>>,
    pub counters: HookCounters,
}

impl Hooks {
    /// Starts the queueing, dispatching and pruning tasks.
    pub fn start(
        store: Store,
        master: MasterKey,
        node_id: String,
        settings: WebhookSettings,
        allowed_networks: Vec<ipnet::IpNet>,
        queue: Option<Arc<dyn WorkQueue>>,
        run: bool,
    ) -> Arc<Hooks> {
        let (tx, rx) = tokio::sync::mpsc::channel(EVENT_BUFFER);
        let outbound = Outbound::new(OutboundPolicy {
            allowed_networks,
            connect_timeout: settings.timeout.min(Duration::from_secs(5)),
            timeout: settings.timeout,
            max_response_bytes: EXCERPT_BYTES,
        });
        let hooks = Arc::new(Hooks {
            store,
            master,
            node_id,
            in_flight: Arc::new(tokio::sync::Semaphore::new(settings.max_in_flight)),
            settings,
            outbound,
            cache: RwLock::default(),
            events: tx,
            wake: tokio::sync::Notify::new(),
            tenant_in_flight: Mutex::default(),
            breakers: Mutex::default(),
            queue: queue.clone(),
            counters: HookCounters::default(),
        });
        if run {
            tokio::spawn(hooks.clone().queue_loop(rx));
            match queue {
                // The queue hands out deliveries; the store is swept only for what it lost.
                Some(queue) => {
                    tokio::spawn(hooks.clone().pull_loop(queue));
                    tokio::spawn(hooks.clone().claim_loop(SWEEP_EVERY, SWEEP_OVERDUE));
                }
                None => {
                    tokio::spawn(hooks.clone().claim_loop(Duration::from_millis(250), Duration::ZERO));
                }
            }
            tokio::spawn(hooks.clone().prune_loop());
        }
        hooks
    }

    pub fn outbound(&self) -> &Outbound {
        &self.outbound
    }

    /// A webhook's secrets that sign now: the current one, and the previous one during a
    /// rotation.
    fn secrets(&self, w: &Webhook, now: DateTime<Utc>) -> Vec<herald_webhooks::Secret> {
        let mut sealed = vec![w.secret_sealed.as_str()];
        if let (Some(previous), Some(until)) = (&w.previous_secret_sealed, w.previous_until)
            && until > now
        {
            sealed.push(previous);
        }
        sealed.into_iter().filter_map(|s| unseal_secret(&self.master, s)).collect()
    }

    /// Whether an enabled webhook of the tenant takes `kind` (loads and caches its webhooks).
    pub async fn takes(&self, tenant: &str, kind: WebhookEvent) -> bool {
        self.tenant_hooks(&Arc::from(tenant)).await.is_some_and(|t| t.mask & kind.bit() != 0)
    }

    /// Forgets the cached webhooks of a tenant (they changed).
    pub fn forget(&self, tenant: &str) {
        self.cache.write().expect("hook cache").remove(tenant);
    }

    /// Wakes the dispatcher (a delivery became due: replay, test event).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    async fn tenant_hooks(&self, tenant: &Arc<str>) -> Option<Arc<TenantHooks>> {
        if let Some(t) = self.cache.read().expect("hook cache").get(tenant)
            && t.loaded.elapsed() < CACHE_TTL
        {
            return Some(t.clone());
        }
        let webhooks = match self.store.list_webhooks(tenant, None, self.settings.max_per_tenant).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(error = %e, tenant = &**tenant, "cannot load webhooks");
                return None;
            }
        };
        let webhooks: Vec<Arc<Webhook>> = webhooks.into_iter().filter(|w| w.enabled).map(Arc::new).collect();
        let mask = webhooks.iter().fold(0, |m, w| m | WebhookEvent::mask(&w.events));
        let api_publishes = webhooks
            .iter()
            .any(|w| w.include_api_publishes && w.events.contains(&WebhookEvent::MessagePublished));
        let entry = Arc::new(TenantHooks { webhooks, mask, api_publishes, loaded: Instant::now() });
        self.cache.write().expect("hook cache").insert(tenant.clone(), entry.clone());
        Some(entry)
    }

    /// Matches a batch of events to webhooks and stores the deliveries.
    async fn queue(&self, events: Vec<HookEvent>) {
        let mut by_tenant: HashMap<Arc<str>, Vec<HookEvent>> = HashMap::new();
        for e in events {
            by_tenant.entry(e.tenant.clone()).or_default().push(e);
        }
        for (tenant, events) in by_tenant {
            let Some(hooks) = self.tenant_hooks(&tenant).await else {
                self.counters.events_dropped.fetch_add(events.len() as u64, Ordering::Relaxed);
                continue;
            };
            let matched: Vec<(HookEvent, Vec<Arc<Webhook>>)> = events
                .into_iter()
                .map(|e| {
                    let targets: Vec<Arc<Webhook>> = hooks
                        .webhooks
                        .iter()
                        .filter(|w| w.events.contains(&e.kind) && (!e.from_api || w.include_api_publishes))
                        .cloned()
                        .collect();
                    (e, targets)
                })
                .filter(|(_, targets)| !targets.is_empty())
                .collect();
            // Channel events get consecutive sequence numbers per channel.
            let mut counts: HashMap<Arc<str>, u64> = HashMap::new();
            for (e, _) in &matched {
                if let Some(ch) = &e.channel {
                    *counts.entry(ch.clone()).or_default() += 1;
                }
            }
            let mut next: HashMap<Arc<str>, u64> = HashMap::new();
            for (ch, n) in counts {
                match self.store.next_event_sequence(&tenant, &ch, n).await {
                    Ok(first) => {
                        next.insert(ch, first);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot number channel events"),
                }
            }
            let now = herald_store::now();
            let give_up_at = now + chrono::Duration::from_std(self.settings.retry_period).unwrap_or_default();
            let mut deliveries = Vec::new();
            for (e, targets) in matched {
                let sequence = e.channel.as_ref().and_then(|ch| {
                    let n = next.get_mut(ch)?;
                    *n += 1;
                    Some(*n - 1)
                });
                let event_id = format!("evt_{}", uuid::Uuid::now_v7().simple());
                let body = envelope(&event_id, e.kind, &tenant, e.at, sequence, &e.data);
                for w in targets {
                    deliveries.push(new_delivery(&w, &event_id, e.kind, body.clone(), now, give_up_at));
                }
            }
            let total = deliveries.len();
            match self
                .store
                .enqueue_deliveries(&tenant, &deliveries, self.settings.max_queued_per_tenant)
                .await
            {
                Ok(queued) => {
                    self.counters.events_queued.fetch_add(queued as u64, Ordering::Relaxed);
                    if queued < total {
                        self.counters.events_dropped.fetch_add((total - queued) as u64, Ordering::Relaxed);
                        tracing::warn!(
                            tenant = &*tenant,
                            dropped = total - queued,
                            "webhook queue of the tenant is full (webhook_max_queued_per_tenant); events dropped"
                        );
                    }
                    if queued > 0 {
                        let ids: Vec<String> = deliveries.iter().take(queued).map(|d| d.id.clone()).collect();
                        self.queued(ids).await;
                    }
                }
                Err(e) => {
                    self.counters.events_dropped.fetch_add(total as u64, Ordering::Relaxed);
                    tracing::error!(error = %e, "cannot queue webhook deliveries; events dropped");
                }
            }
        }
    }

    /// Queues a `webhook.test` event for one webhook.
    pub async fn send_test(&self, w: &Webhook) -> Result<Delivery, herald_store::StoreError> {
        let now = herald_store::now();
        let event_id = format!("evt_{}", uuid::Uuid::now_v7().simple());
        let data = serde_json::json!({"webhook": w.id, "message": "a test event from Herald"});
        let body = envelope(&event_id, WebhookEvent::WebhookTest, &w.tenant_id, Utc::now(), None, &data);
        let give_up_at = now + chrono::Duration::from_std(self.settings.retry_period).unwrap_or_default();
        let d = new_delivery(w, &event_id, WebhookEvent::WebhookTest, body, now, give_up_at);
        self.store.enqueue_deliveries(&w.tenant_id, std::slice::from_ref(&d), u64::MAX).await?;
        self.counters.events_queued.fetch_add(1, Ordering::Relaxed);
        self.queued(vec![d.id.clone()]).await;
        Ok(d)
    }

    /// Hands deliveries just stored (or replayed) to the dispatcher: the cluster's queue, or
    /// this node's claim loop. A push that fails leaves them to the sweep.
    pub async fn queued(&self, ids: Vec<String>) {
        match &self.queue {
            Some(queue) => {
                if let Err(e) = queue.push(&ids).await {
                    tracing::warn!(
                        error = %e,
                        deliveries = ids.len(),
                        "cannot queue webhook deliveries in JetStream; the database sweep sends them within a minute"
                    );
                }
            }
            None => self.wake(),
        }
    }

    async fn queue_loop(self: Arc<Self>, mut rx: tokio::sync::mpsc::Receiver<HookEvent>) {
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, 512).await > 0 {
            self.queue(std::mem::take(&mut batch)).await;
        }
    }

    /// Claims due deliveries from the store every `period` (at once when woken) and attempts
    /// them. Alone, it is a single node's dispatcher; beside a cluster queue it only takes
    /// deliveries more than `overdue` past due, which the queue lost.
    async fn claim_loop(self: Arc<Self>, period: Duration, overdue: Duration) {
        loop {
            tokio::select! {
                _ = self.wake.notified(), if overdue.is_zero() => {}
                _ = tokio::time::sleep(period) => {}
            }
            let free = self.in_flight.available_permits() as u64;
            if free == 0 {
                continue;
            }
            let now = herald_store::now();
            // A claim outlives the request's timeout, so it never expires under a live attempt.
            let lease = chrono::Duration::from_std(self.lease()).unwrap_or_default();
            let due = now - chrono::Duration::from_std(overdue).unwrap_or_default();
            let claimed = match self
                .store
                .claim_due_deliveries(&self.node_id, due, now + lease, free.min(CLAIM_BATCH))
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim webhook deliveries");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if !overdue.is_zero() && !claimed.is_empty() {
                tracing::info!(deliveries = claimed.len(), "sending webhook deliveries the queue had lost");
            }
            let many = claimed.len() as u64 == free.min(CLAIM_BATCH);
            for group in self.requests(claimed).await {
                let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                    for d in &group {
                        self.postpone(d, Duration::from_millis(100), None).await;
                    }
                    continue;
                };
                let hooks = self.clone();
                tokio::spawn(async move {
                    hooks.attempt(group).await;
                    drop(permit);
                });
            }
            if many {
                self.wake(); // More may be due.
            }
        }
    }

    /// Cluster mode: attempts the deliveries the cluster's queue hands this node. Each is
    /// claimed in the store first (so an attempt never runs twice at once, whatever the queue
    /// redelivers); afterwards its message is finished, or postponed until it is due again.
    async fn pull_loop(self: Arc<Self>, queue: Arc<dyn WorkQueue>) {
        loop {
            // Pull only what this node can send now.
            let Ok(first) = self.in_flight.clone().acquire_owned().await else { return };
            let free = self.in_flight.available_permits() + 1;
            let jobs = match queue.pull(free.min(CLAIM_BATCH as usize), Duration::from_secs(1)).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot pull webhook deliveries from JetStream");
                    drop(first);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            drop(first);
            if jobs.is_empty() {
                continue;
            }
            let now = herald_store::now();
            let until = now + chrono::Duration::from_std(self.lease()).unwrap_or_default();
            let mut claimed = Vec::new();
            let mut tickets: HashMap<String, Box<dyn Ticket>> = HashMap::new();
            let ids: Vec<String> = jobs.iter().map(|j| j.delivery.clone()).collect();
            let mut waiting: HashMap<String, Box<dyn Ticket>> =
                jobs.into_iter().map(|j| (j.delivery, j.ticket)).collect();
            match self.store.claim_deliveries(&ids, &self.node_id, now, until).await {
                Ok(claims) => {
                    for (id, claim) in claims {
                        let Some(ticket) = waiting.remove(&id) else { continue };
                        match claim {
                            Claim::Claimed(d) => {
                                tickets.insert(id, ticket);
                                claimed.push(*d);
                            }
                            Claim::NotBefore(at) => ticket.later(delay_until(at)).await,
                            Claim::Finished => ticket.done().await,
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot claim webhook deliveries"),
            }
            // Not answered (the store failed): again in a moment. (An id pulled twice keeps one
            // ticket; the other returns after the ack wait and is then found finished.)
            for (_, ticket) in waiting {
                ticket.later(Duration::from_secs(1)).await;
            }
            for group in self.requests(claimed).await {
                let held: Vec<(String, Box<dyn Ticket>)> =
                    group.iter().filter_map(|d| tickets.remove(&d.id).map(|t| (d.id.clone(), t))).collect();
                let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                    for d in &group {
                        self.postpone(d, Duration::from_millis(100), None).await;
                    }
                    for (_, ticket) in held {
                        ticket.later(Duration::from_millis(100)).await;
                    }
                    continue;
                };
                let hooks = self.clone();
                tokio::spawn(async move {
                    let next: HashMap<String, Option<DateTime<Utc>>> =
                        hooks.attempt(group).await.into_iter().collect();
                    drop(permit);
                    for (id, ticket) in held {
                        match next.get(&id) {
                            Some(Some(at)) => ticket.later(delay_until(*at)).await,
                            _ => ticket.done().await,
                        }
                    }
                });
            }
        }
    }

    /// How long a claim holds: past the request's timeout (twice, for the time to record the
    /// outcome), so it never expires under a live attempt; a node that died holding it frees it
    /// this long after the claim.
    fn lease(&self) -> Duration {
        Self::lease_for(&self.settings)
    }

    pub fn lease_for(settings: &WebhookSettings) -> Duration {
        settings.timeout * 2 + Duration::from_secs(5)
    }

    /// Claimed deliveries as requests: one each, or for a batching webhook up to its
    /// `batch_max_events` together.
    async fn requests(&self, claimed: Vec<Delivery>) -> Vec<Vec<Delivery>> {
        let mut by_webhook: HashMap<(String, String), Vec<Delivery>> = HashMap::new();
        for d in claimed {
            by_webhook.entry((d.tenant_id.clone(), d.webhook_id.clone())).or_default().push(d);
        }
        let mut out = Vec::new();
        for ((tenant, webhook), deliveries) in by_webhook {
            let size = match self.tenant_hooks(&Arc::from(tenant.as_str())).await {
                Some(t) => {
                    t.webhooks.iter().find(|w| w.id == webhook).map_or(1, |w| w.batch_max_events.max(1))
                }
                None => 1,
            } as usize;
            let mut deliveries = deliveries.into_iter().peekable();
            while deliveries.peek().is_some() {
                out.push(deliveries.by_ref().take(size).collect());
            }
        }
        out
    }

    /// Puts a claimed delivery back without an attempt; answers when it is due again.
    async fn postpone(&self, d: &Delivery, by: Duration, why: Option<&str>) -> Next {
        let at = herald_store::now();
        let next = at + chrono::Duration::from_std(by).unwrap_or_default();
        let result = AttemptResult {
            at,
            status: DeliveryStatus::Pending,
            next_attempt_at: Some(next),
            counts: false,
            response_status: None,
            latency_ms: None,
            response_excerpt: None,
            error: why.map(str::to_owned),
        };
        if let Err(e) = self.store.finish_attempt(&d.id, &self.node_id, &result).await {
            tracing::warn!(error = %e, "cannot postpone a webhook delivery");
        }
        (d.id.clone(), Some(next))
    }

    /// Records an attempt; answers when the delivery is due again (`None`: finished).
    async fn finish(&self, d: &Delivery, result: AttemptResult) -> Next {
        if let Err(e) = self.store.finish_attempt(&d.id, &self.node_id, &result).await {
            tracing::warn!(error = %e, "cannot record a webhook attempt");
        }
        let next = if result.status == DeliveryStatus::Pending { result.next_attempt_at } else { None };
        (d.id.clone(), next)
    }

    /// How long an open breaker still holds a webhook back.
    fn breaker_wait(&self, webhook: &str) -> Option<Duration> {
        let breakers = self.breakers.lock().expect("breakers");
        let until = breakers.get(webhook)?.open_until?;
        until.checked_duration_since(Instant::now())
    }

    fn record_outcome(&self, webhook: &str, ok: bool) {
        let mut breakers = self.breakers.lock().expect("breakers");
        if ok {
            breakers.remove(webhook);
            return;
        }
        let b = breakers.entry(webhook.to_owned()).or_insert(Breaker {
            last: Instant::now(),
            failures: 0,
            open_until: None,
            open_for: self.settings.breaker_open,
        });
        b.failures += 1;
        b.last = Instant::now();
        if b.failures >= self.settings.breaker_failures {
            // Open (again): while half-open a single failure re-opens it for twice as long.
            if b.open_until.is_some() {
                b.open_for = (b.open_for * 2).min(Duration::from_secs(600));
            }
            b.open_until = Some(Instant::now() + b.open_for);
            self.counters.breaker_opened.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Full jitter: a random wait up to `initial × 2^(attempt-1)`, capped.
    pub fn retry_delay(settings: &WebhookSettings, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let cap = settings.retry_initial.saturating_mul(1u32 << exp).min(settings.retry_max_delay);
        let ms = cap.as_millis() as u64;
        Duration::from_millis(if ms == 0 { 0 } else { rand::thread_rng().gen_range(0..=ms) })
    }

    /// Attempts a group of claimed deliveries (one request); answers when each is due again.
    async fn attempt(&self, group: Vec<Delivery>) -> Vec<Next> {
        let mut out = Vec::with_capacity(group.len());
        let Some(first) = group.first() else { return out };
        let (tenant_id, webhook_id) = (first.tenant_id.clone(), first.webhook_id.clone());
        let webhook = match self.store.webhook(&tenant_id, &webhook_id).await {
            Ok(Some(w)) => w,
            Ok(None) => return out, // Deleted with its deliveries.
            Err(e) => {
                tracing::warn!(error = %e, "cannot load a webhook");
                for d in &group {
                    out.push(self.postpone(d, Duration::from_secs(1), None).await);
                }
                return out;
            }
        };
        let now = herald_store::now();
        if !webhook.enabled {
            let result = AttemptResult {
                at: now,
                status: DeliveryStatus::Failed,
                next_attempt_at: None,
                counts: false,
                response_status: None,
                latency_ms: None,
                response_excerpt: None,
                error: Some("the webhook is disabled".into()),
            };
            for d in &group {
                out.push(self.finish(d, result.clone()).await);
            }
            return out;
        }
        if let Some(wait) = self.breaker_wait(&webhook.id) {
            for d in &group {
                out.push(
                    self.postpone(d, wait, Some("circuit breaker open: the endpoint keeps failing")).await,
                );
            }
            return out;
        }
        let tenant_slots = self
            .tenant_in_flight
            .lock()
            .expect("tenant slots")
            .entry(tenant_id.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.settings.max_in_flight_per_tenant)))
            .clone();
        let Ok(_slot) = tenant_slots.try_acquire_owned() else {
            for d in &group {
                out.push(self.postpone(d, Duration::from_millis(200), None).await);
            }
            return out;
        };
        // A batching webhook takes the deliveries waiting with these into the same request.
        let mut group = group;
        if webhook.batch_max_events as usize > group.len() {
            let until = herald_store::now() + chrono::Duration::from_std(self.lease()).unwrap_or_default();
            let more = u64::from(webhook.batch_max_events) - group.len() as u64;
            match self.store.claim_companions(&webhook.id, &self.node_id, until, more).await {
                Ok(companions) => group.extend(companions),
                Err(e) => tracing::warn!(error = %e, "cannot gather a webhook batch"),
            }
        }
        let body = if webhook.batch_max_events > 1 {
            let events: Vec<&str> = group.iter().map(|d| d.body.as_str()).collect();
            format!("{{\"events\":[{}]}}", events.join(","))
        } else {
            group[0].body.clone()
        };
        let secrets = self.secrets(&webhook, now);
        if secrets.is_empty() {
            tracing::error!(webhook = webhook.id, "cannot unseal the webhook's secret");
        }
        let headers =
            herald_webhooks::sign_headers(&secrets, &group[0].event_id, now.timestamp(), body.as_bytes());
        self.counters.attempts.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let outcome = self.outbound.post(&webhook.url, &headers, body.into_bytes()).await;
        herald_core::metrics::metrics().webhook_requests.observe(started.elapsed().as_secs_f64());
        let at = herald_store::now();
        let mut result = AttemptResult {
            at,
            status: DeliveryStatus::Failed,
            next_attempt_at: None,
            counts: true,
            response_status: None,
            latency_ms: None,
            response_excerpt: None,
            error: None,
        };
        let retry = match &outcome {
            Ok(r) => {
                result.response_status = Some(r.status);
                result.latency_ms = Some(u32::try_from(r.latency.as_millis()).unwrap_or(u32::MAX));
                result.response_excerpt = Some(String::from_utf8_lossy(&r.excerpt).into_owned());
                match r.status {
                    200..=299 => {
                        result.status = DeliveryStatus::Succeeded;
                        false
                    }
                    410 => {
                        result.error = Some("the endpoint answered 410 Gone: webhook disabled".into());
                        false
                    }
                    s => {
                        result.error = Some(format!("the endpoint answered {s}"));
                        true
                    }
                }
            }
            Err(OutboundError::Forbidden(what)) => {
                // The operator's policy refuses it; retrying cannot help.
                result.error =
                    Some(format!("{what} is not a public address; outbound calls may not reach it"));
                false
            }
            Err(e) => {
                result.error = Some(e.to_string());
                true
            }
        };
        let ok = result.status == DeliveryStatus::Succeeded;
        self.record_outcome(&webhook.id, ok);
        for d in &group {
            let mut mine = result.clone();
            if ok {
                self.counters.succeeded.fetch_add(1, Ordering::Relaxed);
            } else if retry {
                let delay = Self::retry_delay(&self.settings, d.attempts.saturating_add(1));
                let next = at + chrono::Duration::from_std(delay).unwrap_or_default();
                if next < d.give_up_at {
                    mine.status = DeliveryStatus::Pending;
                    mine.next_attempt_at = Some(next);
                    self.counters.retried.fetch_add(1, Ordering::Relaxed);
                } else {
                    mine.error = mine.error.map(|e| format!("{e}; retry period over"));
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
            }
            out.push(self.finish(d, mine).await);
        }
        let gone = matches!(&outcome, Ok(r) if r.status == 410);
        if gone {
            let why = format!("the endpoint answered 410 Gone at {}", at.to_rfc3339());
            if let Err(e) = self.store.disable_webhook(&webhook.id, &why, at).await {
                tracing::warn!(error = %e, "cannot disable a webhook");
            }
            let _ =
                self.store.fail_queued_deliveries(&webhook.id, "the webhook was disabled (410 Gone)").await;
            self.forget(&webhook.tenant_id);
            tracing::info!(webhook = webhook.id, "webhook disabled: its endpoint answered 410 Gone");
        }
        out
    }

    async fn prune_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            if let Err(e) = self.store.prune_deliveries(self.settings.deliveries_kept).await {
                tracing::warn!(error = %e, "cannot prune webhook deliveries");
            }
            // Per-tenant slots nobody holds, and breakers of webhooks that stopped failing
            // (or were deleted), so neither map outgrows the webhooks in use.
            self.tenant_in_flight.lock().expect("tenant slots").retain(|_, s| Arc::strong_count(s) > 1);
            let stale = Duration::from_secs(3600);
            self.breakers
                .lock()
                .expect("breakers")
                .retain(|_, b| b.last.elapsed() < stale || b.open_until.is_some_and(|u| u > Instant::now()));
        }
    }
}

/// The wait until `at` (at least a moment, so a message is never handed straight back).
fn delay_until(at: DateTime<Utc>) -> Duration {
    (at - herald_store::now()).to_std().unwrap_or_default().max(Duration::from_millis(100))
}

/// A webhook or proxy signing secret, sealed for storage (its `whsec_…` text).
pub fn seal_secret(master: &MasterKey, secret: &herald_webhooks::Secret) -> String {
    master.seal(secret.to_string().as_bytes())
}

/// A secret [`seal_secret`] sealed; `None` when it cannot be unsealed.
pub fn unseal_secret(master: &MasterKey, sealed: &str) -> Option<herald_webhooks::Secret> {
    let text = String::from_utf8(master.unseal(sealed).ok()?).ok()?;
    herald_webhooks::Secret::parse(&text).ok()
}

/// The request body: one event.
fn envelope(
    id: &str,
    kind: WebhookEvent,
    tenant: &str,
    at: DateTime<Utc>,
    sequence: Option<u64>,
    data: &serde_json::Value,
) -> String {
    let mut body = serde_json::json!({
        "id": id,
        "type": kind.as_str(),
        "tenant": tenant,
        "created_at": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
    });
    if let Some(seq) = sequence {
        body["sequence"] = seq.into();
    }
    body.to_string()
}

fn new_delivery(
    w: &Webhook,
    event_id: &str,
    kind: WebhookEvent,
    body: String,
    now: DateTime<Utc>,
    give_up_at: DateTime<Utc>,
) -> Delivery {
    Delivery {
        id: format!("dlv_{}", uuid::Uuid::now_v7().simple()),
        tenant_id: w.tenant_id.clone(),
        webhook_id: w.id.clone(),
        event_id: event_id.to_owned(),
        event_type: kind,
        body,
        status: DeliveryStatus::Pending,
        attempts: 0,
        created_at: now,
        give_up_at,
        // A batching webhook's event waits for others to share its request.
        next_attempt_at: Some(
            now + chrono::Duration::milliseconds(if w.batch_max_events > 1 {
                i64::from(w.batch_max_ms)
            } else {
                0
            }),
        ),
        last_attempt_at: None,
        response_status: None,
        latency_ms: None,
        response_excerpt: None,
        error: None,
    }
}

impl HookSink for Hooks {
    fn wants(&self, tenant: &str, kind: WebhookEvent, from_api: bool) -> bool {
        match self.cache.read().expect("hook cache").get(tenant) {
            // Unknown or stale: let the queueing task look (and cache) it.
            Some(t) if t.loaded.elapsed() < CACHE_TTL => {
                t.mask & kind.bit() != 0 && (!from_api || t.api_publishes)
            }
            _ => true,
        }
    }

    fn emit(&self, event: HookEvent) {
        if self.events.try_send(event).is_err() {
            self.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn tenant_changed(&self, tenant: &str) {
        self.forget(tenant);
    }

    fn wants_presence(&self, tenant: &str) -> bool {
        match self.cache.read().expect("hook cache").get(tenant) {
            Some(t) => t.mask & PRESENCE_EVENTS != 0,
            // Unknown: include it (the queueing task caches it with its first event).
            None => true,
        }
    }
}
