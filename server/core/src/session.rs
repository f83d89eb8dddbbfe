//! One client connection's protocol state, independent of the transport: authentication,
//! capability checks, subscriptions and command handling. Replies go into the connection's
//! outbox; the transport writes them out.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::value::RawValue;

use herald_types::names;
use herald_types::tokens::{self, Action, ClientClaims, Grants};

use crate::backend::NewMessage;
use crate::channel::{Channel, PublishOutcome, StreamPosition, SubscribeError, SubscribeOutcome, Subscriber};
use crate::client_auth::{self, TokenError};
use crate::directory::TenantSnapshot;
use crate::error::{Code, Error};
use crate::hub::{Connection, Hub};
use crate::outbox::{Outbox, Outgoing};
use crate::protocol::{self, Command, Request, ServerFrame};
use crate::{Disconnect, Transport};

/// What the transport should do after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum CommandOutcome {
    Continue,
    Close(Disconnect),
}

pub struct Session {
    pub hub: Arc<Hub>,
    pub conn: Arc<Connection>,
    tenant: Arc<TenantSnapshot>,
    /// What the token allows, compacted (the user is `conn.user`, the token id `conn.token`).
    grants: Grants,
    /// Unix time at which the token (or the proxy's grant) expires.
    expires_at: i64,
    /// Keyed by the channel's own name, so a subscription allocates no second copy of it.
    subscriptions: HashMap<Arc<str>, Arc<Channel>>,
    /// Authenticated by the tenant's connect proxy rather than a token.
    via_proxy: bool,
}

/// How long a proxy-authenticated connection lasts when the proxy names no expiry.
const PROXY_DEFAULT_TTL_SECONDS: i64 = 3600;
/// How long a refresh that failed under an allow policy extends a connection.
const PROXY_REFRESH_GRACE_SECONDS: i64 = 60;

/// Whether a browser page at `origin` may connect for `tenant`. Requests without an `Origin`
/// header come from non-browser clients and are not restricted.
pub fn origin_allowed(tenant: &TenantSnapshot, origin: Option<&str>) -> bool {
    let Some(origin) = origin else { return true };
    let origin = origin.to_ascii_lowercase();
    tenant.tenant.allowed_origins.iter().any(|allowed| {
        if allowed == "*" || *allowed == origin {
            return true;
        }
        // `https://*.example.com` matches subdomains of example.com over https.
        if let Some((scheme, host)) = allowed.split_once("://*.") {
            return origin
                .strip_prefix(scheme)
                .and_then(|rest| rest.strip_prefix("://"))
                .is_some_and(|rest| rest.ends_with(&format!(".{host}")));
        }
        false
    })
}

impl Session {
    /// Verifies the token, checks the origin and registers the connection.
    pub async fn open(
        hub: Arc<Hub>,
        token: &str,
        expected_tenant: Option<&str>,
        transport: Transport,
        origin: Option<&str>,
    ) -> Result<Session, Disconnect> {
        let verified = client_auth::verify(&hub.directory, token, expected_tenant)
            .await
            .map_err(TokenError::disconnect)?;
        Self::admit(hub, verified, transport, origin, false)
    }

    /// Authenticates a client that has no token through the tenant's `connect` proxy: it gets
    /// `request` (transport, forwarded headers, the client's address) and answers the user,
    /// and optionally `capabilities`, `info` and `expires_at` (Unix seconds). A tenant without
    /// a connect proxy refuses with `missing_credentials`.
    pub async fn open_via_proxy(
        hub: Arc<Hub>,
        tenant_id: &str,
        transport: Transport,
        origin: Option<&str>,
        request: serde_json::Value,
    ) -> Result<Session, Disconnect> {
        let refused = Disconnect::AuthFailed;
        let tenant = match hub.directory.tenant(tenant_id).await {
            Ok(Some(t)) => t,
            Ok(None) => return Err(refused(Code::UnknownTenant)),
            Err(_) => return Err(refused(Code::AuthUnavailable)),
        };
        if !tenant.has_connect_proxy() {
            return Err(refused(Code::MissingCredentials));
        }
        if tenant.tenant.status == herald_types::model::TenantStatus::Suspended {
            return Err(Disconnect::TenantSuspended);
        }
        if !origin_allowed(&tenant, origin) {
            return Err(Disconnect::OriginNotAllowed);
        }
        let result = match hub.consult(&tenant, herald_types::model::ProxyKind::Connect, || request).await {
            Ok(Some(result)) => result,
            // Failed under an allow policy: without a token there is nobody to allow.
            Ok(None) | Err(Error::ProxyUnavailable(_)) => return Err(refused(Code::ProxyUnavailable)),
            Err(_) => return Err(refused(Code::ProxyDenied)),
        };
        let claims = proxy_claims(tenant_id, &result).ok_or(refused(Code::ProxyUnavailable))?;
        if tenant.is_revoked(None, &claims.sub, claims.iat) {
            return Err(Disconnect::TokenRevoked);
        }
        let verified = client_auth::Verified { tenant, claims };
        Self::admit(hub, verified, transport, origin, true)
    }

    fn admit(
        hub: Arc<Hub>,
        verified: client_auth::Verified,
        transport: Transport,
        origin: Option<&str>,
        via_proxy: bool,
    ) -> Result<Session, Disconnect> {
        if !origin_allowed(&verified.tenant, origin) {
            return Err(Disconnect::OriginNotAllowed);
        }
        let conn = Arc::new(Connection {
            id: hub.next_conn_id(),
            tenant: Arc::from(verified.tenant.id()),
            user: Arc::from(verified.claims.sub.as_str()),
            token: std::sync::Mutex::new((verified.claims.jti.clone(), verified.claims.iat)),
            info: verified
                .claims
                .info
                .as_ref()
                .and_then(|i| serde_json::value::to_raw_value(i).ok())
                .map(Arc::from),
            transport,
            outbox: Arc::new(Outbox::new(hub.settings.outbox)),
            counters: hub.stats.tenant(verified.tenant.id()),
            connected_at: chrono::Utc::now(),
        });
        hub.register(conn.clone(), &verified.tenant)?;
        Ok(Session {
            hub,
            conn,
            tenant: verified.tenant,
            grants: Grants::from(&verified.claims.capabilities),
            expires_at: verified.claims.exp,
            subscriptions: HashMap::new(),
            via_proxy,
        })
    }

    /// For a connection the connect proxy authenticated: asks the `refresh` proxy to extend
    /// it as it expires. Answers whether it may stay (with `expires_at` moved on).
    pub async fn refresh_via_proxy(&mut self) -> bool {
        if !self.via_proxy {
            return false;
        }
        let Ok(tenant) = self.tenant().await else { return false };
        let Some(proxy) = tenant.proxy.clone() else { return false };
        if proxy.settings.refresh_url.is_none() {
            return false;
        }
        let body = serde_json::json!({
            "user": &*self.conn.user,
            "client": self.client_id(),
            "transport": self.conn.transport.as_str(),
            "expires_at": self.expires_at,
        });
        let now = chrono::Utc::now().timestamp();
        let exp = match self.hub.consult(&tenant, herald_types::model::ProxyKind::Refresh, || body).await {
            Ok(Some(result)) => match result.get("expires_at").and_then(serde_json::Value::as_i64) {
                Some(exp) if exp > now => exp.min(now + i64::from(tokens::MAX_TOKEN_TTL_SECONDS)),
                _ => return false,
            },
            // The refresh proxy failed under an allow policy: a short extension.
            Ok(None) => now + PROXY_REFRESH_GRACE_SECONDS,
            Err(_) => return false,
        };
        self.expires_at = exp;
        self.reply(protocol::frame(&ServerFrame::Refreshed { id: None, expires_at: exp }));
        true
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.conn.outbox
    }

    /// Unix time at which the token expires.
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }

    pub fn user(&self) -> &str {
        &self.conn.user
    }

    pub fn tenant_id(&self) -> &str {
        &self.conn.tenant
    }

    /// The channel object of a current subscription.
    pub fn subscribed_channel(&self, name: &str) -> Option<&Arc<Channel>> {
        self.subscriptions.get(name)
    }

    pub fn connected_frame(&self, id: Option<&RawValue>) -> Outgoing {
        Outgoing::Frame(protocol::frame(&ServerFrame::Connected {
            id,
            client: self.conn.id.to_string(),
            user: &self.conn.user,
            node: &self.hub.settings.node_id,
            ping_interval_ms: self.hub.settings.ping_interval.as_millis() as u64,
            expires_at: self.expires_at,
        }))
    }

    fn reply(&self, frame: tokio_tungstenite::tungstenite::Utf8Bytes) {
        let _ = self.conn.outbox.push(Outgoing::Frame(frame));
    }

    /// An `error` frame for a refused command: the same code as the REST API's for the same
    /// condition ([`Error::code`]).
    fn reply_error(&self, id: Option<&RawValue>, channel: Option<&str>, err: &Error) {
        let message = err.detail();
        crate::metrics::metrics().refused(err.code());
        self.reply(protocol::frame(&ServerFrame::Error {
            id,
            code: err.code().as_str(),
            message: &message,
            channel,
            field: err.field(),
            limit: err.limit(),
        }));
    }

    fn reply_code(&self, id: Option<&RawValue>, code: Code, message: &str) {
        crate::metrics::metrics().refused(code);
        self.reply(protocol::frame(&ServerFrame::error(id, None, code.as_str(), message)));
    }

    /// The tenant's current configuration (cached by the directory).
    async fn tenant(&mut self) -> Result<Arc<TenantSnapshot>, Error> {
        let t = self.hub.directory.tenant(&self.conn.tenant).await?.ok_or(Error::TenantNotFound)?;
        self.tenant = t.clone();
        Ok(t)
    }

    fn allows(&self, channel: &str, action: Action) -> bool {
        self.grants.allows(channel, action)
    }

    /// Subscribes to `channel`, optionally resuming. The confirmation, replayed messages and
    /// live messages reach the outbox in that order.
    pub async fn subscribe(
        &mut self,
        id: Option<&RawValue>,
        channel: &str,
        since: Option<StreamPosition>,
    ) -> Result<SubscribeOutcome, Error> {
        names::channel(channel).map_err(|e| Error::InvalidChannel(e.0))?;
        if self.subscriptions.contains_key(channel) {
            return Err(Error::AlreadySubscribed);
        }
        let tenant = self.tenant().await?;
        let max = tenant
            .tenant
            .limits
            .max_subscriptions_per_connection
            .unwrap_or(self.hub.settings.max_subscriptions_per_connection);
        if self.subscriptions.len() >= max as usize {
            return Err(Error::TooManySubscriptions { limit: u64::from(max) });
        }
        let mut consulted: Option<Option<serde_json::Map<String, serde_json::Value>>> = None;
        loop {
            let ch = self.hub.channel(&tenant, channel).await?;
            let options = ch.options();
            if options.private && !self.allows(channel, Action::Subscribe) {
                return Err(Error::PermissionDenied { action: "subscribe" });
            }
            let mut info = self.conn.info.clone();
            let body = || {
                serde_json::json!({
                    "user": &*self.conn.user,
                    "client": self.client_id(),
                    "transport": self.conn.transport.as_str(),
                    "channel": channel,
                })
            };
            // Asked once: the channel may be retired while the proxy thinks, and the retry
            // below must not ask again.
            if consulted.is_none() {
                consulted =
                    Some(self.hub.consult(&tenant, herald_types::model::ProxyKind::Subscribe, body).await?);
            }
            if let Some(Some(result)) = &consulted
                && let Some(extra) = result.get("info")
            {
                // Presence info for this subscription, as the proxy gave it.
                let raw = serde_json::value::to_raw_value(extra)
                    .map_err(|_| Error::ProxyUnavailable("bad info".into()))?;
                if raw.get().len() > tokens::MAX_INFO_BYTES {
                    return Err(Error::ProxyUnavailable(format!(
                        "info over {} bytes",
                        tokens::MAX_INFO_BYTES
                    )));
                }
                info = Some(Arc::from(raw));
            }
            let subscriber =
                Subscriber { outbox: self.conn.outbox.clone(), user: self.conn.user.clone(), info };
            let reply_id: Option<Box<RawValue>> = id.map(ToOwned::to_owned);
            let reply_channel = channel.to_owned();
            let reply: crate::channel::ReplyBuilder = Box::new(move |outcome: &SubscribeOutcome| {
                vec![Outgoing::Frame(protocol::frame(&ServerFrame::Subscribed {
                    id: reply_id.as_deref(),
                    channel: &reply_channel,
                    epoch: &outcome.epoch,
                    position: outcome.position,
                    recovered: outcome.recovered,
                }))]
            });
            let result = self.hub.subscribe(&ch, self.conn.id, subscriber, since.clone(), reply).await;
            match result {
                Ok(outcome) => {
                    self.hub.stats.subscribed(&self.conn.counters, 1);
                    if options.presence && options.join_leave {
                        let join = protocol::frame(&ServerFrame::Join {
                            channel,
                            client: self.client_id(),
                            user: &self.conn.user,
                        });
                        self.hub.broadcast_event(&ch, join, self.conn.id, false);
                    }
                    self.subscriptions.insert(ch.name.clone(), ch);
                    return Ok(outcome);
                }
                Err(SubscribeError::Retired) => continue,
                Err(other) => return Err(other.into_error()),
            }
        }
    }

    /// The client id others see in presence and join/leave events: unique in the cluster.
    fn client_id(&self) -> String {
        self.hub.client_id(self.conn.id)
    }

    /// Ends one subscription. The channel may already have dropped this subscriber (slow
    /// consumer); the session still owns the count and the leave event.
    fn leave(&self, name: &str, ch: &Arc<Channel>) {
        self.hub.unsubscribe(ch, self.conn.id);
        self.hub.stats.subscribed(&self.conn.counters, -1);
        let options = ch.options();
        if options.presence && options.join_leave {
            let leave = protocol::frame(&ServerFrame::Leave {
                channel: name,
                client: self.client_id(),
                user: &self.conn.user,
            });
            self.hub.broadcast_event(ch, leave, self.conn.id, true);
        }
    }

    pub fn unsubscribe(&mut self, channel: &str) -> bool {
        match self.subscriptions.remove(channel) {
            Some(ch) => {
                self.leave(channel, &ch);
                true
            }
            None => false,
        }
    }

    /// Handles one parsed command; replies go to the outbox.
    pub async fn handle(&mut self, request: Request) -> CommandOutcome {
        let id = request.id.as_deref();
        match request.command {
            Command::Connect { .. } => {
                self.reply_code(id, Code::AlreadyConnected, "this connection is already authenticated");
            }
            Command::Ping => self.reply(protocol::frame(&ServerFrame::Pong { id })),
            Command::Subscribe { channel, since } => {
                if let Err(e) = self.subscribe(id, &channel, since.map(Into::into)).await {
                    self.reply_error(id, Some(&channel), &e);
                }
            }
            Command::Unsubscribe { channel } => {
                if self.unsubscribe(&channel) {
                    self.reply(protocol::frame(&ServerFrame::Unsubscribed { id, channel: &channel }));
                } else {
                    self.reply_error(id, Some(&channel), &Error::NotSubscribed);
                }
            }
            Command::Publish { channel, data, event, idempotency_key } => {
                match self.publish(&channel, data, event, idempotency_key).await {
                    Ok(o) => self.reply(protocol::frame(&ServerFrame::Published {
                        id,
                        channel: &channel,
                        position: o.position,
                        epoch: &o.epoch,
                        message_id: &o.id,
                        ts: o.timestamp_ms,
                        duplicate: o.duplicate,
                    })),
                    Err(e) => self.reply_error(id, Some(&channel), &e),
                }
            }
            Command::History { channel, since, limit } => {
                if let Err(e) = self.history(id, &channel, since.map(Into::into), limit).await {
                    self.reply_error(id, Some(&channel), &e);
                }
            }
            Command::Presence { channel } => {
                if let Err(e) = self.presence(id, &channel).await {
                    self.reply_error(id, Some(&channel), &e);
                }
            }
            Command::Refresh { token } => return self.refresh(id, &token).await,
        }
        CommandOutcome::Continue
    }

    async fn publish(
        &mut self,
        channel: &str,
        data: Box<RawValue>,
        event: Option<String>,
        idempotency_key: Option<String>,
    ) -> Result<PublishOutcome, Error> {
        names::channel(channel).map_err(|e| Error::InvalidChannel(e.0))?;
        let tenant = self.tenant().await?;
        let options = self.hub.channel_options(&tenant, channel).await?;
        if !options.client_publish {
            return Err(Error::PublishNotAllowed);
        }
        if !self.allows(channel, Action::Publish) {
            return Err(Error::PermissionDenied { action: "publish" });
        }
        let mut data = data;
        let body = || {
            serde_json::json!({
                "user": &*self.conn.user,
                "client": self.client_id(),
                "transport": self.conn.transport.as_str(),
                "channel": channel,
                "event": event,
                "data": serde_json::from_str::<serde_json::Value>(data.get()).unwrap_or_default(),
            })
        };
        if let Some(result) = self.hub.consult(&tenant, herald_types::model::ProxyKind::Publish, body).await?
            && let Some(replacement) = result.get("data")
        {
            data = serde_json::value::to_raw_value(replacement)
                .map_err(|_| Error::ProxyUnavailable("bad replacement data".into()))?;
        }
        let by = crate::hub::Publisher::Client { user: &self.conn.user, client: self.conn.id };
        self.hub.publish(&tenant, channel, NewMessage { data, event, idempotency_key }, by).await
    }

    async fn history(
        &mut self,
        id: Option<&RawValue>,
        channel: &str,
        since: Option<StreamPosition>,
        limit: Option<u32>,
    ) -> Result<(), Error> {
        names::channel(channel).map_err(|e| Error::InvalidChannel(e.0))?;
        let tenant = self.tenant().await?;
        let ch = self.hub.channel(&tenant, channel).await?;
        if ch.options().private && !self.allows(channel, Action::History) {
            return Err(Error::PermissionDenied { action: "history" });
        }
        let limit = limit.unwrap_or(100).clamp(1, 1000) as usize;
        let slice = self.hub.history(&ch, since.as_ref(), limit).await?;
        let raws: Vec<Box<RawValue>> = slice
            .publications
            .iter()
            .map(|p| RawValue::from_string(p.frame.as_str().to_owned()).expect("frames are JSON"))
            .collect();
        self.reply(protocol::frame(&ServerFrame::History {
            id,
            channel,
            epoch: &slice.epoch,
            position: slice.position,
            complete: slice.complete,
            publications: raws.iter().map(|r| r.as_ref()).collect(),
        }));
        Ok(())
    }

    async fn presence(&mut self, id: Option<&RawValue>, channel: &str) -> Result<(), Error> {
        names::channel(channel).map_err(|e| Error::InvalidChannel(e.0))?;
        let tenant = self.tenant().await?;
        let options = self.hub.channel_options(&tenant, channel).await?;
        if !options.presence {
            return Err(Error::PresenceDisabled);
        }
        if options.private && !self.allows(channel, Action::Presence) {
            return Err(Error::PermissionDenied { action: "presence" });
        }
        let clients = self.hub.backend().presence.channel(&self.conn.tenant, channel).await?;
        self.reply(protocol::frame(&ServerFrame::Presence {
            id,
            channel,
            clients: clients
                .iter()
                .map(|p| protocol::PresenceEntry {
                    client: &p.client,
                    user: &p.user,
                    info: p.info.as_deref(),
                })
                .collect(),
        }));
        Ok(())
    }

    /// Replaces the token with a fresher one for the same user and tenant.
    async fn refresh(&mut self, id: Option<&RawValue>, token: &str) -> CommandOutcome {
        match client_auth::verify(&self.hub.directory, token, Some(&self.conn.tenant)).await {
            Ok(v) if *v.claims.sub == *self.conn.user => {
                *self.conn.token.lock().expect("token lock") = (v.claims.jti.clone(), v.claims.iat);
                self.grants = Grants::from(&v.claims.capabilities);
                self.expires_at = v.claims.exp;
                self.tenant = v.tenant;
                self.reply(protocol::frame(&ServerFrame::Refreshed { id, expires_at: self.expires_at }));
                CommandOutcome::Continue
            }
            Ok(_) => {
                self.reply_code(id, Code::TokenMismatch, "the new token is for another user");
                CommandOutcome::Continue
            }
            Err(e @ (TokenError::Revoked | TokenError::TenantSuspended)) => {
                CommandOutcome::Close(e.disconnect())
            }
            Err(e) => {
                self.reply_code(id, e.code(), "the new token was refused");
                CommandOutcome::Continue
            }
        }
    }

    /// Leaves every channel and unregisters (the same as dropping the session). Call once when
    /// the transport ends.
    pub fn close(self) {}
}

/// Ending a session however its task ends — normally, on error, or by a panic unwinding
/// through it — leaves its channels and unregisters its connection, so no ghost stays listed.
impl Drop for Session {
    fn drop(&mut self) {
        for (name, ch) in std::mem::take(&mut self.subscriptions) {
            self.leave(&name, &ch);
        }
        self.hub.unregister(self.conn.id);
    }
}

/// Claims for a connection the connect proxy authenticated, from its `result`: `user`
/// (required, 1-256 bytes), `capabilities`, `info`, `expires_at`. `None` when unusable.
fn proxy_claims(tenant: &str, result: &serde_json::Map<String, serde_json::Value>) -> Option<ClientClaims> {
    let user = result.get("user")?.as_str()?;
    if user.is_empty() || user.len() > 256 || user.chars().any(char::is_control) {
        return None;
    }
    let capabilities: tokens::Capabilities = match result.get("capabilities") {
        Some(v) => serde_json::from_value(v.clone()).ok()?,
        None => Default::default(),
    };
    if capabilities.len() > tokens::MAX_CAPABILITIES
        || capabilities.keys().any(|p| tokens::validate_pattern(p).is_err())
    {
        return None;
    }
    let info = result.get("info").cloned();
    if info.as_ref().is_some_and(|i| i.to_string().len() > tokens::MAX_INFO_BYTES) {
        return None;
    }
    let now = chrono::Utc::now().timestamp();
    let max = now + i64::from(tokens::MAX_TOKEN_TTL_SECONDS);
    let exp = match result.get("expires_at") {
        Some(v) => v.as_i64().filter(|e| *e > now)?.min(max),
        None => now + PROXY_DEFAULT_TTL_SECONDS,
    };
    Some(ClientClaims {
        sub: user.to_owned(),
        tenant: tenant.to_owned(),
        iat: now,
        exp,
        nbf: None,
        jti: String::new(),
        capabilities,
        info,
    })
}
