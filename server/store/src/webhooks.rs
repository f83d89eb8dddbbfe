//! Webhooks and the durable queue of their deliveries. The queue is the `hook_deliveries`
//! table, shared by every node using the database: a node *claims* a due delivery with one
//! conditional update (so exactly one node sends each attempt) for a lease; a node that dies
//! mid-attempt loses the lease and another node takes the delivery over. Finished deliveries
//! stay as the webhook's delivery log, the newest [`Store::prune_deliveries`] keeps.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Condition, Expr};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set,
};

use herald_types::model::{Delivery, DeliveryStatus, TenantProxy, Webhook, WebhookEvent};

use crate::entities::{hook_deliveries, tenant_proxies, webhooks};
use crate::{Store, StoreError, StoreResult, from_json, to_json};

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub at: DateTime<Utc>,
    pub status: DeliveryStatus,
    /// When to try again (for [`DeliveryStatus::Pending`]).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Whether this was a real attempt (a breaker's postponement is not).
    pub counts: bool,
    pub response_status: Option<u16>,
    pub latency_ms: Option<u32>,
    pub response_excerpt: Option<String>,
    pub error: Option<String>,
}

fn webhook_from(m: webhooks::Model) -> StoreResult<Webhook> {
    Ok(Webhook {
        events: from_json("webhook.events", &m.events)?,
        id: m.id,
        tenant_id: m.tenant_id,
        url: m.url,
        description: m.description,
        enabled: m.enabled,
        include_api_publishes: m.include_api_publishes,
        batch_max_events: u32::try_from(m.batch_max_events).unwrap_or(1).max(1),
        batch_max_ms: u32::try_from(m.batch_max_ms).unwrap_or(0),
        disabled_reason: m.disabled_reason,
        secret_sealed: m.secret_sealed,
        previous_secret_sealed: m.previous_secret_sealed,
        previous_until: m.previous_until,
        created_at: m.created_at,
        updated_at: m.updated_at,
    })
}

fn webhook_model(w: &Webhook) -> webhooks::ActiveModel {
    webhooks::ActiveModel {
        id: Set(w.id.clone()),
        tenant_id: Set(w.tenant_id.clone()),
        url: Set(w.url.clone()),
        description: Set(w.description.clone()),
        events: Set(to_json(&w.events)),
        enabled: Set(w.enabled),
        include_api_publishes: Set(w.include_api_publishes),
        batch_max_events: Set(i64::from(w.batch_max_events)),
        batch_max_ms: Set(i64::from(w.batch_max_ms)),
        disabled_reason: Set(w.disabled_reason.clone()),
        secret_sealed: Set(w.secret_sealed.clone()),
        previous_secret_sealed: Set(w.previous_secret_sealed.clone()),
        previous_until: Set(w.previous_until),
        created_at: Set(w.created_at),
        updated_at: Set(w.updated_at),
    }
}

fn delivery_from(m: hook_deliveries::Model) -> StoreResult<Delivery> {
    let event_type: WebhookEvent = serde_json::from_value(serde_json::Value::String(m.event_type.clone()))
        .map_err(|e| StoreError::Corrupt(format!("delivery.event_type: {e}")))?;
    Ok(Delivery {
        status: DeliveryStatus::parse(&m.status)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery.status: {}", m.status)))?,
        id: m.id,
        tenant_id: m.tenant_id,
        webhook_id: m.webhook_id,
        event_id: m.event_id,
        event_type,
        body: m.body,
        attempts: u32::try_from(m.attempts).unwrap_or(u32::MAX),
        created_at: m.created_at,
        give_up_at: m.give_up_at,
        next_attempt_at: m.next_attempt_at,
        last_attempt_at: m.last_attempt_at,
        response_status: m.response_status.and_then(|s| u16::try_from(s).ok()),
        latency_ms: m.latency_ms.and_then(|s| u32::try_from(s).ok()),
        response_excerpt: m.response_excerpt,
        error: m.error,
    })
}

/// What [`Store::claim_deliveries`] found for one delivery.
#[derive(Debug)]
pub enum Claim {
    /// Claimed: this node attempts it.
    Claimed(Box<Delivery>),
    /// Waiting for a later attempt, or held by another node, until then.
    NotBefore(DateTime<Utc>),
    /// Succeeded, failed for good, or deleted.
    Finished,
}

/// Deliveries a node may claim now: due pending ones, and those whose claim expired.
fn claimable(now: DateTime<Utc>) -> Condition {
    use hook_deliveries::Column as C;
    Condition::any()
        .add(Condition::all().add(C::Status.eq("pending")).add(C::NextAttemptAt.lte(now)))
        .add(Condition::all().add(C::Status.eq("sending")).add(C::ClaimedUntil.lt(now)))
}

impl Store {
    pub async fn tenant_proxy(&self, tenant: &str) -> StoreResult<Option<TenantProxy>> {
        tenant_proxies::Entity::find_by_id(tenant.to_owned())
            .one(&self.db)
            .await?
            .map(|m| {
                Ok(TenantProxy {
                    settings: from_json("proxy.settings", &m.settings)?,
                    tenant_id: m.tenant_id,
                    secret_sealed: m.secret_sealed,
                    updated_at: m.updated_at,
                })
            })
            .transpose()
    }

    /// Creates or replaces a tenant's proxy configuration.
    pub async fn put_tenant_proxy(&self, p: &TenantProxy) -> StoreResult<()> {
        let model = tenant_proxies::ActiveModel {
            tenant_id: Set(p.tenant_id.clone()),
            settings: Set(to_json(&p.settings)),
            secret_sealed: Set(p.secret_sealed.clone()),
            updated_at: Set(p.updated_at),
        };
        tenant_proxies::Entity::insert(model)
            .on_conflict(
                sea_orm::sea_query::OnConflict::column(tenant_proxies::Column::TenantId)
                    .update_columns([
                        tenant_proxies::Column::Settings,
                        tenant_proxies::Column::SecretSealed,
                        tenant_proxies::Column::UpdatedAt,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    pub async fn delete_tenant_proxy(&self, tenant: &str) -> StoreResult<bool> {
        Ok(tenant_proxies::Entity::delete_by_id(tenant.to_owned()).exec(&self.db).await?.rows_affected > 0)
    }

    pub async fn create_webhook(&self, w: &Webhook) -> StoreResult<()> {
        webhooks::Entity::insert(webhook_model(w))
            .exec_without_returning(&self.db)
            .await
            .map_err(crate::conflict_or_db)?;
        Ok(())
    }

    pub async fn webhook(&self, tenant: &str, id: &str) -> StoreResult<Option<Webhook>> {
        webhooks::Entity::find_by_id(id.to_owned())
            .filter(webhooks::Column::TenantId.eq(tenant))
            .one(&self.db)
            .await?
            .map(webhook_from)
            .transpose()
    }

    /// A page of a tenant's webhooks, ordered by id (creation).
    pub async fn list_webhooks(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: u64,
    ) -> StoreResult<Vec<Webhook>> {
        let mut query = webhooks::Entity::find()
            .filter(webhooks::Column::TenantId.eq(tenant))
            .order_by_asc(webhooks::Column::Id)
            .limit(limit);
        if let Some(after) = after {
            query = query.filter(webhooks::Column::Id.gt(after));
        }
        query.all(&self.db).await?.into_iter().map(webhook_from).collect()
    }

    pub async fn count_webhooks(&self, tenant: &str) -> StoreResult<u64> {
        Ok(webhooks::Entity::find().filter(webhooks::Column::TenantId.eq(tenant)).count(&self.db).await?)
    }

    pub async fn update_webhook(&self, w: &Webhook) -> StoreResult<()> {
        let mut model = webhook_model(w);
        model.created_at = sea_orm::NotSet;
        model.update(&self.db).await?;
        Ok(())
    }

    /// Deletes the webhook and its deliveries (queued ones are never sent).
    pub async fn delete_webhook(&self, tenant: &str, id: &str) -> StoreResult<bool> {
        hook_deliveries::Entity::delete_many()
            .filter(hook_deliveries::Column::WebhookId.eq(id))
            .filter(hook_deliveries::Column::TenantId.eq(tenant))
            .exec(&self.db)
            .await?;
        let done = webhooks::Entity::delete_many()
            .filter(webhooks::Column::Id.eq(id))
            .filter(webhooks::Column::TenantId.eq(tenant))
            .exec(&self.db)
            .await?;
        Ok(done.rows_affected > 0)
    }

    /// Deliveries of a tenant that are waiting or being sent.
    pub async fn count_queued_deliveries(&self, tenant: &str) -> StoreResult<u64> {
        Ok(hook_deliveries::Entity::find()
            .filter(hook_deliveries::Column::TenantId.eq(tenant))
            .filter(hook_deliveries::Column::Status.is_in(["pending", "sending"]))
            .count(&self.db)
            .await?)
    }

    /// Queues deliveries of one tenant, as many as fit under `max_queued` (counting those
    /// already queued); answers how many were queued, the first ones of `items`.
    pub async fn enqueue_deliveries(
        &self,
        tenant: &str,
        items: &[Delivery],
        max_queued: u64,
    ) -> StoreResult<usize> {
        if items.is_empty() {
            return Ok(0);
        }
        let queued = self.count_queued_deliveries(tenant).await?;
        let room = usize::try_from(max_queued.saturating_sub(queued)).unwrap_or(usize::MAX).min(items.len());
        if room == 0 {
            return Ok(0);
        }
        let models = items[..room].iter().map(|d| hook_deliveries::ActiveModel {
            id: Set(d.id.clone()),
            tenant_id: Set(d.tenant_id.clone()),
            webhook_id: Set(d.webhook_id.clone()),
            event_id: Set(d.event_id.clone()),
            event_type: Set(d.event_type.as_str().to_owned()),
            body: Set(d.body.clone()),
            status: Set(d.status.as_str().to_owned()),
            attempts: Set(i64::from(d.attempts)),
            created_at: Set(d.created_at),
            give_up_at: Set(d.give_up_at),
            next_attempt_at: Set(d.next_attempt_at),
            claimed_by: Set(None),
            claimed_until: Set(None),
            last_attempt_at: Set(None),
            response_status: Set(None),
            latency_ms: Set(None),
            response_excerpt: Set(None),
            error: Set(None),
        });
        hook_deliveries::Entity::insert_many(models).exec_without_returning(&self.db).await?;
        Ok(room)
    }

    /// Reserves `n` consecutive event sequence numbers of a channel; answers the first.
    pub async fn next_event_sequence(&self, tenant: &str, channel: &str, n: u64) -> StoreResult<u64> {
        let backend = self.db.get_database_backend();
        let p = |i: usize| match backend {
            sea_orm::DatabaseBackend::Postgres => format!("${i}"),
            _ => format!("?{i}"),
        };
        let sql = format!(
            "INSERT INTO hook_sequences (tenant_id, channel, seq) VALUES ({}, {}, {}) \
             ON CONFLICT (tenant_id, channel) DO UPDATE SET seq = hook_sequences.seq + {} RETURNING seq",
            p(1),
            p(2),
            p(3),
            p(3)
        );
        let n = i64::try_from(n.max(1)).unwrap_or(i64::MAX);
        let row = self
            .db
            .query_one(sea_orm::Statement::from_sql_and_values(
                backend,
                sql,
                vec![tenant.into(), channel.into(), n.into()],
            ))
            .await?
            .ok_or_else(|| StoreError::Corrupt("sequence upsert returned nothing".into()))?;
        let last: i64 = row.try_get_by_index(0)?;
        Ok(u64::try_from(last - n + 1).unwrap_or(1))
    }

    /// Claims up to `limit` due deliveries for `node` until `until`. Each claim is one
    /// conditional update, so two nodes never hold the same delivery.
    pub async fn claim_due_deliveries(
        &self,
        node: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u64,
    ) -> StoreResult<Vec<Delivery>> {
        self.claim(|| claimable(now), hook_deliveries::Column::NextAttemptAt, node, until, limit).await
    }

    /// Claims the deliveries `ids` (handed out by the cluster's work queue) for `node` until
    /// `until`, those that are due; for each of the others says when it will be, or that it is
    /// finished or gone. One claim pass and one read for the lot.
    pub async fn claim_deliveries(
        &self,
        ids: &[String],
        node: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> StoreResult<Vec<(String, Claim)>> {
        use hook_deliveries::Column as C;
        let these = || Condition::all().add(claimable(now)).add(C::Id.is_in(ids.to_vec()));
        let claimed = self.claim(these, C::Id, node, until, ids.len() as u64).await?;
        let rest: Vec<String> =
            ids.iter().filter(|id| !claimed.iter().any(|d| &d.id == *id)).cloned().collect();
        let rows: HashMap<String, hook_deliveries::Model> = if rest.is_empty() {
            HashMap::new()
        } else {
            hook_deliveries::Entity::find()
                .filter(C::Id.is_in(rest.clone()))
                .all(&self.db)
                .await?
                .into_iter()
                .map(|m| (m.id.clone(), m))
                .collect()
        };
        let mut out: Vec<(String, Claim)> =
            claimed.into_iter().map(|d| (d.id.clone(), Claim::Claimed(Box::new(d)))).collect();
        for id in rest {
            let claim = match rows.get(&id) {
                Some(row) if row.status == "pending" => Claim::NotBefore(row.next_attempt_at.unwrap_or(now)),
                Some(row) if row.status == "sending" => Claim::NotBefore(row.claimed_until.unwrap_or(now)),
                _ => Claim::Finished,
            };
            out.push((id, claim));
        }
        Ok(out)
    }

    /// Claims up to `limit` deliveries matching `condition` (oldest by `order` first) for
    /// `node` until `until`: each with one update that repeats the condition, so a delivery
    /// another node claimed meanwhile is skipped.
    async fn claim(
        &self,
        condition: impl Fn() -> Condition,
        order: hook_deliveries::Column,
        node: &str,
        until: DateTime<Utc>,
        limit: u64,
    ) -> StoreResult<Vec<Delivery>> {
        use hook_deliveries::Column as C;
        let candidates: Vec<String> = hook_deliveries::Entity::find()
            .select_only()
            .column(C::Id)
            .filter(condition())
            .order_by_asc(order)
            .limit(limit)
            .into_tuple()
            .all(&self.db)
            .await?;
        let mut claimed = Vec::new();
        for id in candidates {
            let done = hook_deliveries::Entity::update_many()
                .col_expr(C::Status, Expr::value("sending"))
                .col_expr(C::ClaimedBy, Expr::value(node))
                .col_expr(C::ClaimedUntil, Expr::value(until))
                .filter(C::Id.eq(id.clone()))
                .filter(condition())
                .exec(&self.db)
                .await?;
            if done.rows_affected == 1 {
                claimed.push(id);
            }
        }
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        hook_deliveries::Entity::find()
            .filter(C::Id.is_in(claimed))
            .order_by_asc(C::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(delivery_from)
            .collect()
    }

    /// Claims up to `limit` more deliveries of a webhook that wait for their first attempt
    /// (due or not), to share a batched request with one this node already holds.
    pub async fn claim_companions(
        &self,
        webhook: &str,
        node: &str,
        until: DateTime<Utc>,
        limit: u64,
    ) -> StoreResult<Vec<Delivery>> {
        use hook_deliveries::Column as C;
        let waiting = || {
            Condition::all()
                .add(C::WebhookId.eq(webhook))
                .add(C::Status.eq("pending"))
                .add(C::Attempts.eq(0i64))
        };
        self.claim(waiting, C::Id, node, until, limit).await
    }

    /// Records an attempt of a delivery this node holds (and releases the claim).
    pub async fn finish_attempt(&self, id: &str, node: &str, r: &AttemptResult) -> StoreResult<()> {
        use hook_deliveries::Column as C;
        let mut update = hook_deliveries::Entity::update_many()
            .col_expr(C::Status, Expr::value(r.status.as_str()))
            .col_expr(C::NextAttemptAt, Expr::value(r.next_attempt_at))
            .col_expr(C::ClaimedBy, Expr::value(Option::<String>::None))
            .col_expr(C::ClaimedUntil, Expr::value(Option::<DateTime<Utc>>::None));
        if r.counts {
            update = update
                .col_expr(C::Attempts, Expr::col(C::Attempts).add(1))
                .col_expr(C::LastAttemptAt, Expr::value(r.at))
                .col_expr(C::ResponseStatus, Expr::value(r.response_status.map(i64::from)))
                .col_expr(C::LatencyMs, Expr::value(r.latency_ms.map(i64::from)))
                .col_expr(C::ResponseExcerpt, Expr::value(r.response_excerpt.clone()))
                .col_expr(C::Error, Expr::value(r.error.clone()));
        } else if r.error.is_some() {
            update = update.col_expr(C::Error, Expr::value(r.error.clone()));
        }
        update.filter(C::Id.eq(id)).filter(C::ClaimedBy.eq(node)).exec(&self.db).await?;
        Ok(())
    }

    /// A webhook's deliveries, newest first; `before` is the last id of the previous page.
    pub async fn list_deliveries(
        &self,
        tenant: &str,
        webhook: &str,
        before: Option<&str>,
        limit: u64,
    ) -> StoreResult<Vec<Delivery>> {
        use hook_deliveries::Column as C;
        let mut query = hook_deliveries::Entity::find()
            .filter(C::TenantId.eq(tenant))
            .filter(C::WebhookId.eq(webhook))
            .order_by_desc(C::Id)
            .limit(limit);
        if let Some(before) = before {
            query = query.filter(C::Id.lt(before));
        }
        query.all(&self.db).await?.into_iter().map(delivery_from).collect()
    }

    pub async fn delivery(&self, tenant: &str, webhook: &str, id: &str) -> StoreResult<Option<Delivery>> {
        use hook_deliveries::Column as C;
        hook_deliveries::Entity::find_by_id(id.to_owned())
            .filter(C::TenantId.eq(tenant))
            .filter(C::WebhookId.eq(webhook))
            .one(&self.db)
            .await?
            .map(delivery_from)
            .transpose()
    }

    /// Sends a finished delivery again (same event id and body), retrying until `give_up_at`.
    /// Answers false when it is still queued.
    pub async fn replay_delivery(
        &self,
        tenant: &str,
        id: &str,
        now: DateTime<Utc>,
        give_up_at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        use hook_deliveries::Column as C;
        let done = hook_deliveries::Entity::update_many()
            .col_expr(C::Status, Expr::value("pending"))
            .col_expr(C::Attempts, Expr::value(0i64))
            .col_expr(C::NextAttemptAt, Expr::value(now))
            .col_expr(C::GiveUpAt, Expr::value(give_up_at))
            .filter(C::Id.eq(id))
            .filter(C::TenantId.eq(tenant))
            .filter(C::Status.is_in(["succeeded", "failed"]))
            .exec(&self.db)
            .await?;
        Ok(done.rows_affected == 1)
    }

    /// Marks every queued delivery of a webhook failed (it was disabled).
    pub async fn fail_queued_deliveries(&self, webhook: &str, why: &str) -> StoreResult<u64> {
        use hook_deliveries::Column as C;
        let done = hook_deliveries::Entity::update_many()
            .col_expr(C::Status, Expr::value("failed"))
            .col_expr(C::NextAttemptAt, Expr::value(Option::<DateTime<Utc>>::None))
            .col_expr(C::Error, Expr::value(why))
            .filter(C::WebhookId.eq(webhook))
            .filter(C::Status.eq("pending"))
            .exec(&self.db)
            .await?;
        Ok(done.rows_affected)
    }

    /// Disables a webhook on Herald's own account (e.g. after 410 Gone).
    pub async fn disable_webhook(&self, id: &str, why: &str, at: DateTime<Utc>) -> StoreResult<()> {
        let Some(model) = webhooks::Entity::find_by_id(id.to_owned()).one(&self.db).await? else {
            return Ok(());
        };
        let mut model = model.into_active_model();
        model.enabled = Set(false);
        model.disabled_reason = Set(Some(why.to_owned()));
        model.updated_at = Set(at);
        model.update(&self.db).await?;
        Ok(())
    }

    /// Keeps the newest `keep` finished deliveries of each webhook; answers how many went.
    pub async fn prune_deliveries(&self, keep: u64) -> StoreResult<u64> {
        use hook_deliveries::Column as C;
        let ids: Vec<String> = webhooks::Entity::find()
            .select_only()
            .column(webhooks::Column::Id)
            .into_tuple()
            .all(&self.db)
            .await?;
        let mut removed = 0;
        for webhook in ids {
            let edge: Option<String> = hook_deliveries::Entity::find()
                .select_only()
                .column(C::Id)
                .filter(C::WebhookId.eq(webhook.clone()))
                .filter(C::Status.is_in(["succeeded", "failed"]))
                .order_by_desc(C::Id)
                .offset(keep)
                .limit(1)
                .into_tuple()
                .one(&self.db)
                .await?;
            if let Some(edge) = edge {
                removed += hook_deliveries::Entity::delete_many()
                    .filter(C::WebhookId.eq(webhook))
                    .filter(C::Status.is_in(["succeeded", "failed"]))
                    .filter(C::Id.lte(edge))
                    .exec(&self.db)
                    .await?
                    .rows_affected;
            }
        }
        Ok(removed)
    }
}
