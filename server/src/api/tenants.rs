use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;

use super::{JsonBody, PageParams, Tag, audit, load_tenant};
use crate::auth::BearerAuth;
use crate::error::{ApiError, ApiResult, Code};
use crate::state::SharedState;
use herald_store::now;
use herald_types::model::{Tenant, TenantLimits, TenantStatus};
use herald_types::names;

#[derive(Default)]
pub struct TenantsApi;

#[derive(Object, Deserialize)]
#[oai(skip_serializing_if_is_none)]
#[serde(deny_unknown_fields)]
#[oai(deny_unknown_fields)]
struct CreateTenant {
    /// URL slug: lowercase letters, digits and '-', at most 63 characters.
    id: String,
    /// Display name.
    name: String,
    /// Web origins browser clients may connect from (`https://app.example.com`,
    /// `https://*.example.com`, or `*`).
    #[serde(default)]
    allowed_origins: Option<Vec<String>>,
    #[serde(default)]
    limits: Option<TenantLimits>,
}

/// A JSON merge patch (RFC 7396): fields left out keep their value; inside `limits`, `null`
/// removes a limit, and `"limits": null` removes them all. `status: suspended` closes the
/// tenant's connections and refuses its API keys; `active` resumes it.
#[derive(Object, Deserialize)]
#[oai(skip_serializing_if_is_none)]
#[serde(deny_unknown_fields)]
#[oai(deny_unknown_fields)]
struct UpdateTenant {
    name: Option<String>,
    // No field doc here: it would wrap the enum reference in `allOf`, which some client
    // generators cannot handle. The struct doc explains `status`.
    status: Option<TenantStatus>,
    allowed_origins: Option<Vec<String>>,
    limits: Option<TenantLimits>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct TenantView {
    id: String,
    name: String,
    status: TenantStatus,
    allowed_origins: Vec<String>,
    limits: TenantLimits,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Tenant> for TenantView {
    fn from(t: Tenant) -> Self {
        TenantView {
            id: t.id,
            name: t.name,
            status: t.status,
            allowed_origins: t.allowed_origins,
            limits: t.limits,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct TenantPage {
    items: Vec<TenantView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    next_cursor: Option<String>,
}

#[derive(ApiResponse)]
pub enum Created<T: poem_openapi::types::ToJSON> {
    /// Created.
    #[oai(status = 201)]
    Created(Json<T>),
}

#[derive(ApiResponse)]
pub enum Deleted {
    /// Deleted.
    #[oai(status = 204)]
    Deleted,
}

pub const MAX_ORIGINS: usize = 100;

/// Normalises and checks allowed origins.
fn validate_origins(origins: Vec<String>) -> ApiResult<Vec<String>> {
    if origins.len() > MAX_ORIGINS {
        return Err(ApiError::invalid("allowed_origins", format!("at most {MAX_ORIGINS} origins"))
            .with_limit(MAX_ORIGINS as u64));
    }
    let mut out = Vec::with_capacity(origins.len());
    for (i, origin) in origins.into_iter().enumerate() {
        let field = format!("allowed_origins[{i}]");
        let origin = origin.trim().to_ascii_lowercase();
        if origin == "*" {
            out.push(origin);
            continue;
        }
        let rest = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .ok_or_else(|| ApiError::invalid(&field, "must start with http:// or https:// (or be `*`)"))?;
        let host = rest.strip_prefix("*.").unwrap_or(rest);
        let (host, port) = match host.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        };
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
        if !host_ok || !port_ok {
            return Err(ApiError::invalid(
                &field,
                "must be an origin like https://app.example.com[:port], without a path",
            ));
        }
        out.push(origin);
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|o| seen.insert(o.clone()));
    Ok(out)
}

fn validate_limits(limits: &TenantLimits) -> ApiResult<()> {
    let fields = [
        ("limits.max_connections", limits.max_connections),
        ("limits.max_publishes_per_second", limits.max_publishes_per_second),
        ("limits.max_message_bytes", limits.max_message_bytes),
        ("limits.max_channels", limits.max_channels),
        ("limits.max_subscriptions_per_connection", limits.max_subscriptions_per_connection),
    ];
    for (field, value) in fields {
        if value == Some(0) {
            return Err(ApiError::invalid(field, "must be at least 1 (null means no limit)"));
        }
    }
    if let Some(v) = limits.max_message_bytes
        && v > herald_types::model::MAX_MESSAGE_BYTES
    {
        return Err(ApiError::invalid(
            "limits.max_message_bytes",
            format!("must be at most {}", herald_types::model::MAX_MESSAGE_BYTES),
        ));
    }
    Ok(())
}

/// Applies an RFC 7396 merge patch to a serialisable value and parses the result back.
/// A `null` patch resets the value to its default.
pub fn merge_patch<T: serde::Serialize + serde::de::DeserializeOwned + Default>(
    current: &T,
    patch: &serde_json::Value,
    field: &str,
) -> ApiResult<T> {
    if patch.is_null() {
        return Ok(T::default());
    }
    fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
        if let serde_json::Value::Object(p) = patch {
            if !target.is_object() {
                *target = serde_json::Value::Object(Default::default());
            }
            let t = target.as_object_mut().expect("made an object above");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                }
            }
        } else {
            *target = patch.clone();
        }
    }
    let mut value = serde_json::to_value(current).expect("domain values serialise");
    merge(&mut value, patch);
    serde_json::from_value(value)
        .map_err(|e| ApiError::new(Code::InvalidType, e.to_string()).with_field(field))
}

#[OpenApi(tag = "Tag::Tenants")]
impl TenantsApi {
    /// Create a tenant
    ///
    /// Admin only.
    #[oai(path = "/v1/tenants", method = "post", operation_id = "createTenant")]
    async fn create(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        body: JsonBody<CreateTenant>,
    ) -> ApiResult<Created<TenantView>> {
        auth.0.require_admin()?;
        let req = body.value;
        names::tenant_id(&req.id).map_err(|e| ApiError::invalid("id", e.0))?;
        names::display_name(&req.name).map_err(|e| ApiError::invalid("name", e.0))?;
        let allowed_origins = validate_origins(req.allowed_origins.unwrap_or_default())?;
        let limits = req.limits.unwrap_or_default();
        validate_limits(&limits)?;
        let at = now();
        let tenant = Tenant {
            id: req.id,
            name: req.name.trim().to_owned(),
            status: TenantStatus::Active,
            allowed_origins,
            limits,
            created_at: at,
            updated_at: at,
        };
        state.store.create_tenant(&tenant).await.map_err(|e| match e {
            herald_store::StoreError::Conflict => {
                ApiError::new(Code::TenantExists, format!("tenant `{}` already exists", tenant.id))
                    .with_field("id")
            }
            other => other.into(),
        })?;
        // This node forgets having looked the id up before it existed (other nodes within the
        // 2 s that they remember a miss).
        state.hub.directory.invalidate(&tenant.id);
        audit(
            &state,
            &auth.0,
            "tenant.create",
            Some(&tenant.id),
            &tenant.id,
            serde_json::json!({"name": tenant.name}),
        )
        .await;
        Ok(Created::Created(Json(tenant.into())))
    }

    /// List tenants
    ///
    /// Admin only. Ordered by id.
    #[oai(path = "/v1/tenants", method = "get", operation_id = "listTenants")]
    async fn list(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        /// Page size, 1-200 (default 50).
        limit: Query<Option<u32>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<TenantPage>> {
        auth.0.require_admin()?;
        let page = PageParams::new(limit.0, cursor.0)?;
        let mut items = state.store.list_tenants(page.after.as_deref(), page.fetch()).await?;
        let next_cursor = page.finish(&mut items, |t| t.id.clone());
        Ok(Json(TenantPage { items: items.into_iter().map(Into::into).collect(), next_cursor }))
    }

    /// Get a tenant
    ///
    /// Admin, or an API key of this tenant.
    #[oai(path = "/v1/tenants/:tenant", method = "get", operation_id = "getTenant")]
    async fn get(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
    ) -> ApiResult<Json<TenantView>> {
        auth.0.require(&tenant, None)?;
        Ok(Json(load_tenant(&state, &tenant).await?.into()))
    }

    /// Update a tenant
    ///
    /// Admin only. Rename, suspend or resume (`status`), change allowed origins or limits.
    #[oai(path = "/v1/tenants/:tenant", method = "patch", operation_id = "updateTenant")]
    async fn update(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        body: JsonBody<UpdateTenant>,
    ) -> ApiResult<Json<TenantView>> {
        auth.0.require_admin()?;
        let mut current = load_tenant(&state, &tenant).await?;
        let raw = body.raw();
        let req = body.value;
        if let Some(name) = req.name {
            names::display_name(&name).map_err(|e| ApiError::invalid("name", e.0))?;
            current.name = name.trim().to_owned();
        }
        if let Some(origins) = req.allowed_origins {
            current.allowed_origins = validate_origins(origins)?;
        }
        if let Some(patch) = raw.get("limits") {
            let limits: TenantLimits = merge_patch(&current.limits, patch, "limits")?;
            validate_limits(&limits)?;
            current.limits = limits;
        }
        let status_change = req.status.filter(|s| *s != current.status);
        if let Some(status) = status_change {
            current.status = status;
        }
        current.updated_at = now();
        state.store.update_tenant(&current).await?;
        let action = match status_change {
            Some(TenantStatus::Suspended) => "tenant.suspend",
            Some(TenantStatus::Active) => "tenant.resume",
            None => "tenant.update",
        };
        audit(&state, &auth.0, action, Some(&current.id), &current.id, raw).await;
        state.hub.tenant_changed(&current.id).await;
        Ok(Json(current.into()))
    }

    /// Delete a tenant
    ///
    /// Admin only. Deletes the tenant with its namespaces, channels and keys.
    #[oai(path = "/v1/tenants/:tenant", method = "delete", operation_id = "deleteTenant")]
    async fn delete(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
    ) -> ApiResult<Deleted> {
        auth.0.require_admin()?;
        if !state.store.delete_tenant(&tenant).await? {
            return Err(crate::auth::tenant_not_found(&tenant));
        }
        audit(&state, &auth.0, "tenant.delete", Some(&tenant), &tenant, serde_json::json!({})).await;
        state.hub.tenant_changed(&tenant).await;
        Ok(Deleted::Deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalised_and_checked() {
        let ok = validate_origins(vec![
            "HTTPS://App.Example.com".into(),
            "http://localhost:3000".into(),
            "https://*.example.com".into(),
            "*".into(),
        ])
        .unwrap();
        assert_eq!(ok[0], "https://app.example.com");
        for bad in ["ftp://x", "https://x/path", "https://", "https://x:0", "https://x:99999", "https://a b"]
        {
            let err = validate_origins(vec!["https://fine.example".into(), bad.into()]).unwrap_err();
            assert_eq!(err.field.as_deref(), Some("allowed_origins[1]"), "{bad}");
        }
    }

    #[test]
    fn merge_patch_sets_and_clears() {
        let current = TenantLimits { max_connections: Some(5), max_channels: Some(3), ..Default::default() };
        let merged: TenantLimits = merge_patch(
            &current,
            &serde_json::json!({"max_connections": 10, "max_channels": null}),
            "limits",
        )
        .unwrap();
        assert_eq!(merged.max_connections, Some(10));
        assert_eq!(merged.max_channels, None);
        assert!(merge_patch::<TenantLimits>(&current, &serde_json::json!({"bogus": 1}), "limits").is_err());
    }
}
