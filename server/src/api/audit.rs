use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::{Cursor, Tag, load_tenant};
use crate::auth::BearerAuth;
use crate::error::{ApiError, ApiResult, Code};
use crate::state::SharedState;
use herald_types::model::Scope;

#[derive(Default)]
pub struct AuditApi;

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct AuditEntryView {
    id: i64,
    at: DateTime<Utc>,
    /// `admin`, `admin-session` or `api-key:<id>`.
    actor: String,
    /// e.g. `tenant.create`, `api_key.revoke`.
    action: String,
    tenant: Option<String>,
    target: String,
    details: serde_json::Value,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct AuditPage {
    items: Vec<AuditEntryView>,
    next_cursor: Option<String>,
}

async fn page(
    state: &SharedState,
    tenant: Option<&str>,
    limit: Option<u32>,
    cursor: Option<String>,
) -> ApiResult<Json<AuditPage>> {
    let params = super::PageParams::new(limit, None)?;
    let before =
        match cursor {
            Some(c) => Some(Cursor::decode(&c)?.parse::<i64>().map_err(|_| {
                ApiError::new(Code::InvalidCursor, "cursor is malformed").with_field("cursor")
            })?),
            None => None,
        };
    let mut items = state.store.list_audit(tenant, before, params.fetch()).await?;
    let next_cursor = params.finish(&mut items, |e| e.id.to_string());
    let items = items
        .into_iter()
        .map(|e| AuditEntryView {
            id: e.id,
            at: e.at,
            actor: e.actor,
            action: e.action,
            tenant: e.tenant_id,
            target: e.target,
            details: e.details,
        })
        .collect();
    Ok(Json(AuditPage { items, next_cursor }))
}

#[OpenApi(tag = "Tag::Audit")]
impl AuditApi {
    /// Read the audit log
    ///
    /// Admin only. Newest first, optionally for one tenant.
    #[oai(path = "/v1/audit-log", method = "get", operation_id = "listAuditLog")]
    async fn list(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        /// Only entries about this tenant.
        tenant: Query<Option<String>>,
        /// Page size, 1-200 (default 50).
        limit: Query<Option<u32>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<AuditPage>> {
        auth.0.require_admin()?;
        page(&state, tenant.0.as_deref(), limit.0, cursor.0).await
    }

    /// Read a tenant's audit log
    ///
    /// Scope `keys:write`. Newest first.
    #[oai(path = "/v1/tenants/:tenant/audit-log", method = "get", operation_id = "listTenantAuditLog")]
    async fn list_for_tenant(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        /// Page size, 1-200 (default 50).
        limit: Query<Option<u32>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<AuditPage>> {
        auth.0.require(&tenant, Some(Scope::KeysWrite))?;
        load_tenant(&state, &tenant).await?;
        page(&state, Some(&tenant), limit.0, cursor.0).await
    }
}
