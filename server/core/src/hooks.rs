//! Events for tenants' webhooks, as the delivery core produces them.
//!
//! Per-connection events (`connection.open` / `close`) and client publishes come from the node
//! that holds the connection, so each happens once in the cluster by construction. Channel
//! lifecycle (`channel.occupied` / `vacated`) and presence (`presence.join` / `leave`) come
//! from a cluster-wide [`View`] that one node at a time diffs ([`Detector`]): the single-node
//! backend builds it from its own channels; the NATS backend from the presence registry, on
//! the node that holds the detector lease. A `leave` or `vacated` waits for the grace window,
//! so a client that drops and comes back within it produces nothing.
//!
//! The core only emits: [`HookSink`] (implemented by the server) filters, queues durably and
//! delivers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_types::model::WebhookEvent;

/// One event, before it is matched to webhooks.
#[derive(Debug, Clone)]
pub struct HookEvent {
    pub tenant: Arc<str>,
    pub kind: WebhookEvent,
    /// The channel, for channel events (they carry a per-channel sequence).
    pub channel: Option<Arc<str>>,
    /// The event's `data` object.
    pub data: serde_json::Value,
    pub at: chrono::DateTime<chrono::Utc>,
    /// For `message.published`: whether it came through the REST API rather than a client.
    pub from_api: bool,
}

impl HookEvent {
    pub fn new(
        tenant: &str,
        kind: WebhookEvent,
        channel: Option<&str>,
        data: serde_json::Value,
    ) -> HookEvent {
        HookEvent {
            tenant: Arc::from(tenant),
            kind,
            channel: channel.map(Arc::from),
            data,
            at: chrono::Utc::now(),
            from_api: false,
        }
    }
}

/// Where the core hands events. Must not block: it is called on connection and publish paths.
pub trait HookSink: Send + Sync {
    /// Whether anything may want this kind of event of this tenant (a cheap, cached check, so
    /// the core does not build events no webhook asked for).
    fn wants(&self, tenant: &str, kind: WebhookEvent, from_api: bool) -> bool;
    fn emit(&self, event: HookEvent);
    /// The tenant's configuration changed (its webhooks may have).
    fn tenant_changed(&self, tenant: &str);
    /// Whether a webhook of the tenant may want channel or presence events (cheap, cached):
    /// the detector's view leaves out the channels of tenants that want none.
    fn wants_presence(&self, tenant: &str) -> bool;
}

/// The cluster-wide queue of webhook deliveries to attempt (a JetStream work-queue stream in
/// cluster mode; a single node needs none and polls its store). It carries only the ids of
/// deliveries already stored: the store holds what is sent and its log; the queue decides
/// which node attempts a delivery when, and hands it to another node when the one holding it
/// dies (its ticket is neither finished nor postponed in time).
#[async_trait::async_trait]
pub trait WorkQueue: Send + Sync {
    /// Queues stored deliveries for an attempt now.
    async fn push(&self, ids: &[String]) -> Result<(), String>;
    /// Up to `max` deliveries due now, waiting at most `wait` for the first.
    async fn pull(&self, max: usize, wait: Duration) -> Result<Vec<Job>, String>;
}

/// A delivery handed out by a [`WorkQueue`], to be finished or postponed.
pub struct Job {
    pub delivery: String,
    pub ticket: Box<dyn Ticket>,
}

#[async_trait::async_trait]
pub trait Ticket: Send + Sync {
    /// Nothing more to do for the delivery: the queue forgets it.
    async fn done(self: Box<Self>);
    /// Hand it out again (to any node) after `delay`.
    async fn later(self: Box<Self>, delay: Duration);
}

/// A channel as the detector sees it, cluster-wide.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelView {
    pub subscribers: u64,
    /// Users subscribed, for channels with the `presence` option.
    pub users: BTreeSet<String>,
}

/// Every channel with subscribers, by (tenant, channel).
pub type View = BTreeMap<(String, String), ChannelView>;

#[derive(Default)]
struct Tracked {
    /// `occupied` was sent and `vacated` not yet.
    occupied: bool,
    vacate_at: Option<Instant>,
    /// Users whose `join` was sent, with the deadline of a pending `leave`.
    users: BTreeMap<String, Option<Instant>>,
}

/// Turns successive views into occupied/vacated and join/leave events, with a grace window
/// before `vacated` and `leave`.
pub struct Detector {
    grace: Duration,
    tracked: BTreeMap<(String, String), Tracked>,
}

impl Detector {
    pub fn new(grace: Duration) -> Detector {
        Detector { grace, tracked: BTreeMap::new() }
    }

    /// Takes `view` as what has already been announced (a node that takes the detector over
    /// starts from the cluster's state, without events).
    pub fn adopt(&mut self, view: &View) {
        self.tracked = view
            .iter()
            .map(|(key, ch)| {
                let users = ch.users.iter().map(|u| (u.clone(), None)).collect();
                (key.clone(), Tracked { occupied: true, vacate_at: None, users })
            })
            .collect();
    }

    /// The events between what was announced and `view`, at `now`.
    pub fn observe(&mut self, view: &View, now: Instant) -> Vec<HookEvent> {
        let mut out = Vec::new();
        let grace = self.grace;
        for ((tenant, channel), ch) in view {
            let t = self.tracked.entry((tenant.clone(), channel.clone())).or_default();
            if ch.subscribers > 0 {
                t.vacate_at = None;
                if !t.occupied {
                    t.occupied = true;
                    out.push(HookEvent::new(
                        tenant,
                        WebhookEvent::ChannelOccupied,
                        Some(channel),
                        serde_json::json!({"channel": channel}),
                    ));
                }
            }
            for user in &ch.users {
                match t.users.get_mut(user) {
                    Some(pending) => *pending = None,
                    None => {
                        t.users.insert(user.clone(), None);
                        out.push(HookEvent::new(
                            tenant,
                            WebhookEvent::PresenceJoin,
                            Some(channel),
                            serde_json::json!({"channel": channel, "user": user}),
                        ));
                    }
                }
            }
        }
        for ((tenant, channel), t) in self.tracked.iter_mut() {
            let current = view.get(&(tenant.clone(), channel.clone()));
            let mut left = Vec::new();
            for (user, pending) in t.users.iter_mut() {
                if current.is_some_and(|c| c.users.contains(user)) {
                    continue;
                }
                let deadline = *pending.get_or_insert(now + grace);
                if deadline <= now {
                    left.push(user.clone());
                }
            }
            for user in left {
                t.users.remove(&user);
                out.push(HookEvent::new(
                    tenant,
                    WebhookEvent::PresenceLeave,
                    Some(channel),
                    serde_json::json!({"channel": channel, "user": user}),
                ));
            }
            if t.occupied && current.is_none_or(|c| c.subscribers == 0) {
                let deadline = *t.vacate_at.get_or_insert(now + grace);
                if deadline <= now {
                    t.occupied = false;
                    t.vacate_at = None;
                    out.push(HookEvent::new(
                        tenant,
                        WebhookEvent::ChannelVacated,
                        Some(channel),
                        serde_json::json!({"channel": channel}),
                    ));
                }
            }
        }
        self.tracked.retain(|_, t| t.occupied || !t.users.is_empty());
        out
    }

    /// Whether a `leave` or `vacated` is waiting for its grace window.
    pub fn has_pending(&self) -> bool {
        self.tracked.values().any(|t| t.vacate_at.is_some() || t.users.values().any(Option::is_some))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(entries: &[(&str, u64, &[&str])]) -> View {
        entries
            .iter()
            .map(|(ch, n, users)| {
                (
                    ("t".to_owned(), (*ch).to_owned()),
                    ChannelView { subscribers: *n, users: users.iter().map(|u| (*u).to_owned()).collect() },
                )
            })
            .collect()
    }

    fn kinds(events: &[HookEvent]) -> Vec<(&'static str, String)> {
        events.iter().map(|e| (e.kind.as_str(), e.data.to_string())).collect()
    }

    #[test]
    fn a_channel_life_gives_one_occupied_and_one_vacated_after_the_grace() {
        let start = Instant::now();
        let grace = Duration::from_secs(2);
        let mut d = Detector::new(grace);
        let e = d.observe(&view(&[("a", 1, &["u1"])]), start);
        assert_eq!(
            kinds(&e),
            [
                ("channel.occupied", r#"{"channel":"a"}"#.to_owned()),
                ("presence.join", r#"{"channel":"a","user":"u1"}"#.to_owned())
            ]
        );
        assert!(d.observe(&view(&[("a", 2, &["u1"])]), start).is_empty());
        // Gone; inside the grace nothing happens, and coming back cancels it.
        assert!(d.observe(&View::new(), start + Duration::from_secs(1)).is_empty());
        assert!(d.has_pending());
        assert!(d.observe(&view(&[("a", 1, &["u1"])]), start + Duration::from_secs(2)).is_empty());
        assert!(!d.has_pending());
        assert!(d.observe(&View::new(), start + Duration::from_secs(3)).is_empty());
        let e = d.observe(&View::new(), start + Duration::from_secs(5));
        assert_eq!(
            kinds(&e),
            [
                ("presence.leave", r#"{"channel":"a","user":"u1"}"#.to_owned()),
                ("channel.vacated", r#"{"channel":"a"}"#.to_owned())
            ]
        );
        assert!(d.observe(&View::new(), start + Duration::from_secs(9)).is_empty());
    }

    #[test]
    fn adopting_a_view_announces_nothing_already_there() {
        let now = Instant::now();
        let mut d = Detector::new(Duration::ZERO);
        d.adopt(&view(&[("a", 1, &["u1"])]));
        assert!(d.observe(&view(&[("a", 1, &["u1"])]), now).is_empty());
        let e = d.observe(&view(&[("a", 1, &["u2"])]), now);
        assert_eq!(e.len(), 2, "{:?}", kinds(&e));
    }
}
