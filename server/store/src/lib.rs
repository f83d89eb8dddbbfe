//! Persistence. [`Store`] speaks domain types (`herald_types::model`) and hides sea-orm; the
//! same code runs on SQLite and PostgreSQL. It is the core's [`ConfigSource`].
//!
//! Architecture invariant: this crate is the only one that imports sea-orm (the migrations
//! crate aside); entities stay private to it.

mod entities;
mod webhooks;

pub use webhooks::{AttemptResult, Claim};

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr,
    EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set, SqlErr,
};

use async_trait::async_trait;
use herald_core::directory::ConfigSource;
use herald_types::model::*;

use entities::*;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists")]
    Conflict,
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl From<StoreError> for herald_core::StoreError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => herald_core::StoreError::Conflict,
            StoreError::Db(e) => herald_core::StoreError::Db(e.to_string()),
            StoreError::Corrupt(why) => herald_core::StoreError::Corrupt(why),
        }
    }
}

#[async_trait]
impl ConfigSource for Store {
    async fn tenant(&self, id: &str) -> Result<Option<Tenant>, herald_core::StoreError> {
        Ok(Store::tenant(self, id).await?)
    }

    async fn namespaces(&self, tenant: &str, limit: u64) -> Result<Vec<Namespace>, herald_core::StoreError> {
        Ok(self.list_namespaces(tenant, None, limit).await?)
    }

    async fn signing_keys(
        &self,
        tenant: &str,
        limit: u64,
    ) -> Result<Vec<SigningKey>, herald_core::StoreError> {
        Ok(self.list_signing_keys(tenant, None, limit).await?)
    }

    async fn revoked_tokens(
        &self,
        tenant: &str,
        limit: u64,
    ) -> Result<Vec<RevokedToken>, herald_core::StoreError> {
        Ok(self.list_revoked_tokens(tenant, None, limit).await?)
    }

    async fn user_revocations(
        &self,
        tenant: &str,
        limit: u64,
    ) -> Result<Vec<UserRevocation>, herald_core::StoreError> {
        Ok(self.list_user_revocations(tenant, None, limit).await?)
    }

    async fn channel(&self, tenant: &str, name: &str) -> Result<Option<Channel>, herald_core::StoreError> {
        Ok(Store::channel(self, tenant, name).await?)
    }

    async fn api_key_by_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>, herald_core::StoreError> {
        Ok(Store::api_key_by_hash(self, secret_hash).await?)
    }

    async fn proxy(&self, tenant: &str) -> Result<Option<TenantProxy>, herald_core::StoreError> {
        Ok(self.tenant_proxy(tenant).await?)
    }
}

/// Converts a unique-key violation into [`StoreError::Conflict`].
pub(crate) fn conflict_or_db(err: DbErr) -> StoreError {
    match err.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => StoreError::Conflict,
        _ => StoreError::Db(err),
    }
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("domain values serialise")
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// The current time at the precision every backend stores (PostgreSQL keeps microseconds).
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

#[derive(Clone)]
pub struct Store {
    pub(crate) db: DatabaseConnection,
}

impl Store {
    /// Connects and runs pending migrations.
    pub async fn connect(url: &str) -> StoreResult<Store> {
        let mut options = ConnectOptions::new(url.to_owned());
        options
            .sqlx_logging(false)
            .connect_timeout(Duration::from_secs(10))
            .acquire_timeout(Duration::from_secs(10));
        if url.starts_with("sqlite:") {
            // One writer at a time is SQLite's model; WAL lets readers proceed meanwhile, and
            // the busy timeout makes a second writer wait instead of failing.
            // Every connection is opened at start-up, by the thread that starts the node, and
            // idle ones are kept. Each SQLite connection has a worker thread, with the priority
            // of the thread that opened it; a WebSocket session's store reads run on the HTTP
            // runtime (`sockets::ConfigOffSockets` in the server), so none is opened from a
            // socket thread (`socket_threads_nice`), also when the pool replaces one.
            options.max_connections(8).min_connections(8).map_sqlx_sqlite_opts(|o| {
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true)
            });
        } else {
            options.max_connections(16);
        }
        let db = Database::connect(options).await?;
        Ok(Store { db })
    }

    pub async fn migrate(&self) -> StoreResult<()> {
        use herald_migrations::MigratorTrait;
        herald_migrations::Migrator::up(&self.db, None).await?;
        Ok(())
    }

    /// A cheap round trip for readiness checks.
    pub async fn ping(&self) -> StoreResult<()> {
        self.db.ping().await?;
        Ok(())
    }

    pub fn backend_name(&self) -> &'static str {
        match self.db.get_database_backend() {
            sea_orm::DatabaseBackend::Sqlite => "sqlite",
            sea_orm::DatabaseBackend::Postgres => "postgres",
            sea_orm::DatabaseBackend::MySql => "mysql",
        }
    }

    // ---- settings ------------------------------------------------------------------------

    pub async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        Ok(settings::Entity::find_by_id(key.to_owned()).one(&self.db).await?.map(|m| m.value))
    }

    pub async fn set_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        let model = settings::ActiveModel { key: Set(key.to_owned()), value: Set(value.to_owned()) };
        settings::Entity::insert(model)
            .on_conflict(
                sea_orm::sea_query::OnConflict::column(settings::Column::Key)
                    .update_column(settings::Column::Value)
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// Stores `value` only if `key` is unset; returns whether it was stored. Lets several nodes
    /// that start at once agree on one generated value.
    pub async fn set_setting_once(&self, key: &str, value: &str) -> StoreResult<bool> {
        let model = settings::ActiveModel { key: Set(key.to_owned()), value: Set(value.to_owned()) };
        let inserted = settings::Entity::insert(model)
            .on_conflict(
                sea_orm::sea_query::OnConflict::column(settings::Column::Key).do_nothing().to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(inserted > 0)
    }

    // ---- tenants -------------------------------------------------------------------------

    fn tenant_from(m: tenants::Model) -> StoreResult<Tenant> {
        Ok(Tenant {
            status: TenantStatus::parse(&m.status),
            allowed_origins: from_json("tenant.allowed_origins", &m.allowed_origins)?,
            limits: from_json("tenant.limits", &m.limits)?,
            id: m.id,
            name: m.name,
            created_at: m.created_at,
            updated_at: m.updated_at,
        })
    }

    pub async fn create_tenant(&self, t: &Tenant) -> StoreResult<()> {
        let model = tenants::ActiveModel {
            id: Set(t.id.clone()),
            name: Set(t.name.clone()),
            status: Set(t.status.as_str().into()),
            allowed_origins: Set(to_json(&t.allowed_origins)),
            limits: Set(to_json(&t.limits)),
            created_at: Set(t.created_at),
            updated_at: Set(t.updated_at),
        };
        tenants::Entity::insert(model).exec_without_returning(&self.db).await.map_err(conflict_or_db)?;
        Ok(())
    }

    pub async fn tenant(&self, id: &str) -> StoreResult<Option<Tenant>> {
        tenants::Entity::find_by_id(id.to_owned()).one(&self.db).await?.map(Self::tenant_from).transpose()
    }

    pub async fn list_tenants(&self, after: Option<&str>, limit: u64) -> StoreResult<Vec<Tenant>> {
        let mut query = tenants::Entity::find().order_by_asc(tenants::Column::Id).limit(limit);
        if let Some(after) = after {
            query = query.filter(tenants::Column::Id.gt(after));
        }
        query.all(&self.db).await?.into_iter().map(Self::tenant_from).collect()
    }

    pub async fn update_tenant(&self, t: &Tenant) -> StoreResult<()> {
        let model = tenants::ActiveModel {
            id: sea_orm::Unchanged(t.id.clone()),
            name: Set(t.name.clone()),
            status: Set(t.status.as_str().into()),
            allowed_origins: Set(to_json(&t.allowed_origins)),
            limits: Set(to_json(&t.limits)),
            created_at: sea_orm::NotSet,
            updated_at: Set(t.updated_at),
        };
        model.update(&self.db).await?;
        Ok(())
    }

    /// Deletes the tenant and, through foreign keys, everything it owns.
    pub async fn delete_tenant(&self, id: &str) -> StoreResult<bool> {
        let res = tenants::Entity::delete_by_id(id.to_owned()).exec(&self.db).await?;
        Ok(res.rows_affected > 0)
    }

    // ---- namespaces and channels ----------------------------------------------------------

    fn namespace_from(m: namespaces::Model) -> StoreResult<Namespace> {
        Ok(Namespace {
            options: from_json("namespace.options", &m.options)?,
            tenant_id: m.tenant_id,
            name: m.name,
            created_at: m.created_at,
            updated_at: m.updated_at,
        })
    }

    pub async fn create_namespace(&self, n: &Namespace) -> StoreResult<()> {
        let model = namespaces::ActiveModel {
            tenant_id: Set(n.tenant_id.clone()),
            name: Set(n.name.clone()),
            options: Set(to_json(&n.options)),
            created_at: Set(n.created_at),
            updated_at: Set(n.updated_at),
        };
        namespaces::Entity::insert(model).exec_without_returning(&self.db).await.map_err(conflict_or_db)?;
        Ok(())
    }

    pub async fn namespace(&self, tenant: &str, name: &str) -> StoreResult<Option<Namespace>> {
        namespaces::Entity::find_by_id((tenant.to_owned(), name.to_owned()))
            .one(&self.db)
            .await?
            .map(Self::namespace_from)
            .transpose()
    }

    pub async fn list_namespaces(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: u64,
    ) -> StoreResult<Vec<Namespace>> {
        let mut query = namespaces::Entity::find()
            .filter(namespaces::Column::TenantId.eq(tenant))
            .order_by_asc(namespaces::Column::Name)
            .limit(limit);
        if let Some(after) = after {
            query = query.filter(namespaces::Column::Name.gt(after));
        }
        query.all(&self.db).await?.into_iter().map(Self::namespace_from).collect()
    }

    pub async fn update_namespace(&self, n: &Namespace) -> StoreResult<()> {
        namespaces::Entity::update_many()
            .col_expr(namespaces::Column::Options, Expr::value(to_json(&n.options)))
            .col_expr(namespaces::Column::UpdatedAt, Expr::value(n.updated_at))
            .filter(namespaces::Column::TenantId.eq(&n.tenant_id))
            .filter(namespaces::Column::Name.eq(&n.name))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    pub async fn delete_namespace(&self, tenant: &str, name: &str) -> StoreResult<bool> {
        let res =
            namespaces::Entity::delete_by_id((tenant.to_owned(), name.to_owned())).exec(&self.db).await?;
        Ok(res.rows_affected > 0)
    }

    fn channel_from(m: channels::Model) -> StoreResult<Channel> {
        Ok(Channel {
            options: from_json("channel.options", &m.options)?,
            tenant_id: m.tenant_id,
            name: m.name,
            created_at: m.created_at,
            updated_at: m.updated_at,
        })
    }

    pub async fn create_channel(&self, c: &Channel) -> StoreResult<()> {
        let model = channels::ActiveModel {
            tenant_id: Set(c.tenant_id.clone()),
            name: Set(c.name.clone()),
            options: Set(to_json(&c.options)),
            created_at: Set(c.created_at),
            updated_at: Set(c.updated_at),
        };
        channels::Entity::insert(model).exec_without_returning(&self.db).await.map_err(conflict_or_db)?;
        Ok(())
    }

    /// Creates a channel unless the tenant already has `max` (`None`: no limit); returns false
    /// when it is full. The count and the insert are one atomic step on both backends, so
    /// concurrent creates never pass the quota: one statement on SQLite (writes are serialised),
    /// and on PostgreSQL the same statement after locking the tenant's row.
    pub async fn create_channel_within(&self, c: &Channel, max: Option<u32>) -> StoreResult<bool> {
        let Some(max) = max else {
            self.create_channel(c).await?;
            return Ok(true);
        };
        let backend = self.db.get_database_backend();
        let insert = |placeholders: [&str; 6]| {
            let [t, n, o, ca, ua, m] = placeholders;
            format!(
                "INSERT INTO channels (tenant_id, name, options, created_at, updated_at) \
                 SELECT {t}, {n}, {o}, {ca}, {ua} \
                 WHERE (SELECT COUNT(*) FROM channels WHERE tenant_id = {t}) < {m}"
            )
        };
        let values: Vec<sea_orm::Value> = vec![
            c.tenant_id.clone().into(),
            c.name.clone().into(),
            to_json(&c.options).into(),
            c.created_at.into(),
            c.updated_at.into(),
            i64::from(max).into(),
        ];
        let result = match backend {
            sea_orm::DatabaseBackend::Postgres => {
                use sea_orm::TransactionTrait;
                let txn = self.db.begin().await?;
                tenants::Entity::find_by_id(c.tenant_id.clone()).lock_exclusive().one(&txn).await?;
                let sql = insert(["$1", "$2", "$3", "$4", "$5", "$6"]);
                let done = txn
                    .execute(sea_orm::Statement::from_sql_and_values(backend, sql, values))
                    .await
                    .map_err(conflict_or_db)?;
                txn.commit().await?;
                done
            }
            _ => {
                let sql = insert(["?1", "?2", "?3", "?4", "?5", "?6"]);
                self.db
                    .execute(sea_orm::Statement::from_sql_and_values(backend, sql, values))
                    .await
                    .map_err(conflict_or_db)?
            }
        };
        Ok(result.rows_affected() == 1)
    }

    pub async fn channel(&self, tenant: &str, name: &str) -> StoreResult<Option<Channel>> {
        channels::Entity::find_by_id((tenant.to_owned(), name.to_owned()))
            .one(&self.db)
            .await?
            .map(Self::channel_from)
            .transpose()
    }

    pub async fn list_channels(
        &self,
        tenant: &str,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: u64,
    ) -> StoreResult<Vec<Channel>> {
        let mut query = channels::Entity::find()
            .filter(channels::Column::TenantId.eq(tenant))
            .order_by_asc(channels::Column::Name)
            .limit(limit);
        if let Some(after) = after {
            query = query.filter(channels::Column::Name.gt(after));
        }
        if let Some(prefix) = prefix {
            // Channel names cannot contain LIKE wildcards ('%' and '_' would matter: escape '_').
            let escaped = prefix.replace('\\', "\\\\").replace('_', "\\_").replace('%', "\\%");
            query = query.filter(
                Expr::col(channels::Column::Name)
                    .like(sea_orm::sea_query::LikeExpr::new(format!("{escaped}%")).escape('\\')),
            );
        }
        query.all(&self.db).await?.into_iter().map(Self::channel_from).collect()
    }

    pub async fn count_channels(&self, tenant: &str) -> StoreResult<u64> {
        Ok(channels::Entity::find().filter(channels::Column::TenantId.eq(tenant)).count(&self.db).await?)
    }

    pub async fn update_channel(&self, c: &Channel) -> StoreResult<()> {
        channels::Entity::update_many()
            .col_expr(channels::Column::Options, Expr::value(to_json(&c.options)))
            .col_expr(channels::Column::UpdatedAt, Expr::value(c.updated_at))
            .filter(channels::Column::TenantId.eq(&c.tenant_id))
            .filter(channels::Column::Name.eq(&c.name))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    pub async fn delete_channel(&self, tenant: &str, name: &str) -> StoreResult<bool> {
        let res = channels::Entity::delete_by_id((tenant.to_owned(), name.to_owned())).exec(&self.db).await?;
        Ok(res.rows_affected > 0)
    }

    // ---- API keys ------------------------------------------------------------------------

    fn api_key_from(m: api_keys::Model) -> StoreResult<ApiKey> {
        Ok(ApiKey {
            scopes: from_json("api_key.scopes", &m.scopes)?,
            id: m.id,
            tenant_id: m.tenant_id,
            name: m.name,
            prefix: m.prefix,
            expires_at: m.expires_at,
            last_used_at: m.last_used_at,
            revoked_at: m.revoked_at,
            created_at: m.created_at,
        })
    }

    pub async fn create_api_key(&self, key: &ApiKey, secret_hash: &str) -> StoreResult<()> {
        let model = api_keys::ActiveModel {
            id: Set(key.id.clone()),
            tenant_id: Set(key.tenant_id.clone()),
            name: Set(key.name.clone()),
            prefix: Set(key.prefix.clone()),
            secret_hash: Set(secret_hash.to_owned()),
            scopes: Set(to_json(&key.scopes)),
            expires_at: Set(key.expires_at),
            last_used_at: Set(None),
            revoked_at: Set(None),
            created_at: Set(key.created_at),
        };
        api_keys::Entity::insert(model).exec_without_returning(&self.db).await.map_err(conflict_or_db)?;
        Ok(())
    }

    pub async fn api_key_by_hash(&self, secret_hash: &str) -> StoreResult<Option<ApiKey>> {
        api_keys::Entity::find()
            .filter(api_keys::Column::SecretHash.eq(secret_hash))
            .one(&self.db)
            .await?
            .map(Self::api_key_from)
            .transpose()
    }

    pub async fn api_key(&self, tenant: &str, id: &str) -> StoreResult<Option<ApiKey>> {
        api_keys::Entity::find()
            .filter(api_keys::Column::TenantId.eq(tenant))
            .filter(api_keys::Column::Id.eq(id))
            .one(&self.db)
            .await?
            .map(Self::api_key_from)
            .transpose()
    }

    pub async fn list_api_keys(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: u64,
    ) -> StoreResult<Vec<ApiKey>> {
        let mut query = api_keys::Entity::find()
            .filter(api_keys::Column::TenantId.eq(tenant))
            .order_by_asc(api_keys::Column::Id)
            .limit(limit);
        if let Some(after) = after {
            query = query.filter(api_keys::Column::Id.gt(after));
        }
        query.all(&self.db).await?.into_iter().map(Self::api_key_from).collect()
    }

    pub async fn touch_api_key(&self, id: &str, at: DateTime<Utc>) -> StoreResult<()> {
        api_keys::Entity::update_many()
            .col_expr(api_keys::Column::LastUsedAt, Expr::value(Some(at)))
            .filter(api_keys::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Marks the key revoked; returns false if it does not exist. Revoking twice keeps the
    /// first time.
    pub async fn revoke_api_key(&self, tenant: &str, id: &str, at: DateTime<Utc>) -> StoreResult<bool> {
        let Some(key) = self.api_key(tenant, id).await? else { return Ok(false) };
        if key.revoked_at.is_none() {
            api_keys::Entity::update_many()
                .col_expr(api_keys::Column::RevokedAt, Expr::value(Some(at)))
                .filter(api_keys::Column::Id.eq(id))
                .exec(&self.db)
                .await?;
        }
        Ok(true)
    }

    // ---- signing keys --------------------------------------------------------------------

    fn signing_key_from(m: signing_keys::Model) -> StoreResult<SigningKey> {
        Ok(SigningKey {
            algorithm: SigningAlgorithm::parse(&m.algorithm)
                .ok_or_else(|| StoreError::Corrupt(format!("signing_key.algorithm {}", m.algorithm)))?,
            status: if m.status == "retired" { KeyStatus::Retired } else { KeyStatus::Active },
            tenant_id: m.tenant_id,
            kid: m.kid,
            sealed_secret: m.secret_ciphertext,
            public_key_pem: m.public_key_pem,
            created_at: m.created_at,
            retired_at: m.retired_at,
        })
    }

    pub async fn create_signing_key(&self, k: &SigningKey) -> StoreResult<()> {
        let model = signing_keys::ActiveModel {
            tenant_id: Set(k.tenant_id.clone()),
            kid: Set(k.kid.clone()),
            algorithm: Set(k.algorithm.as_str().into()),
            secret_ciphertext: Set(k.sealed_secret.clone()),
            public_key_pem: Set(k.public_key_pem.clone()),
            status: Set("active".into()),
            created_at: Set(k.created_at),
            retired_at: Set(None),
        };
        signing_keys::Entity::insert(model).exec_without_returning(&self.db).await.map_err(conflict_or_db)?;
        Ok(())
    }

    pub async fn signing_key(&self, tenant: &str, kid: &str) -> StoreResult<Option<SigningKey>> {
        signing_keys::Entity::find_by_id((tenant.to_owned(), kid.to_owned()))
            .one(&self.db)
            .await?
            .map(Self::signing_key_from)
            .transpose()
    }

    pub async fn list_signing_keys(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: u64,
    ) -> StoreResult<Vec<SigningKey>> {
        let mut query = signing_keys::Entity::find()
            .filter(signing_keys::Column::TenantId.eq(tenant))
            .order_by_asc(signing_keys::Column::Kid)
            .limit(limit);
        if let Some(after) = after {
            query = query.filter(signing_keys::Column::Kid.gt(after));
        }
        query.all(&self.db).await?.into_iter().map(Self::signing_key_from).collect()
    }

    /// The newest active HS256 key, used when Herald mints tokens for a tenant.
    pub async fn newest_active_hs256_key(&self, tenant: &str) -> StoreResult<Option<SigningKey>> {
        signing_keys::Entity::find()
            .filter(signing_keys::Column::TenantId.eq(tenant))
            .filter(signing_keys::Column::Algorithm.eq("HS256"))
            .filter(signing_keys::Column::Status.eq("active"))
            .order_by_desc(signing_keys::Column::CreatedAt)
            .one(&self.db)
            .await?
            .map(Self::signing_key_from)
            .transpose()
    }

    pub async fn retire_signing_key(&self, tenant: &str, kid: &str, at: DateTime<Utc>) -> StoreResult<bool> {
        let Some(key) = self.signing_key(tenant, kid).await? else { return Ok(false) };
        if key.status == KeyStatus::Active {
            let mut model = signing_keys::Model {
                tenant_id: key.tenant_id,
                kid: key.kid,
                algorithm: key.algorithm.as_str().into(),
                secret_ciphertext: key.sealed_secret,
                public_key_pem: key.public_key_pem,
                status: "active".into(),
                created_at: key.created_at,
                retired_at: None,
            }
            .into_active_model();
            model.status = Set("retired".into());
            model.retired_at = Set(Some(at));
            model.update(&self.db).await?;
        }
        Ok(true)
    }

    // ---- token revocation ----------------------------------------------------------------

    pub async fn revoke_token(&self, r: &RevokedToken) -> StoreResult<()> {
        let model = revoked_tokens::ActiveModel {
            tenant_id: Set(r.tenant_id.clone()),
            jti: Set(r.jti.clone()),
            expires_at: Set(r.expires_at),
            revoked_at: Set(r.revoked_at),
        };
        revoked_tokens::Entity::insert(model)
            .on_conflict(
                sea_orm::sea_query::OnConflict::columns([
                    revoked_tokens::Column::TenantId,
                    revoked_tokens::Column::Jti,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    pub async fn revoke_user(&self, r: &UserRevocation) -> StoreResult<()> {
        let model = user_revocations::ActiveModel {
            tenant_id: Set(r.tenant_id.clone()),
            user_id: Set(r.user_id.clone()),
            revoked_before: Set(r.revoked_before),
        };
        user_revocations::Entity::insert(model)
            .on_conflict(
                sea_orm::sea_query::OnConflict::columns([
                    user_revocations::Column::TenantId,
                    user_revocations::Column::UserId,
                ])
                .update_column(user_revocations::Column::RevokedBefore)
                .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// Forgets token revocations whose token has expired anyway; returns how many.
    pub async fn prune_revoked_tokens(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        let res = revoked_tokens::Entity::delete_many()
            .filter(revoked_tokens::Column::ExpiresAt.is_not_null())
            .filter(revoked_tokens::Column::ExpiresAt.lt(now))
            .exec(&self.db)
            .await?;
        Ok(res.rows_affected)
    }

    pub async fn list_revoked_tokens(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: u64,
    ) -> StoreResult<Vec<RevokedToken>> {
        let mut query = revoked_tokens::Entity::find()
            .filter(revoked_tokens::Column::TenantId.eq(tenant))
            .order_by_asc(revoked_tokens::Column::Jti)
            .limit(limit);
        if let Some(after) = after {
            query = query.filter(revoked_tokens::Column::Jti.gt(after));
        }
        Ok(query
            .all(&self.db)
            .await?
            .into_iter()
            .map(|m| RevokedToken {
                tenant_id: m.tenant_id,
                jti: m.jti,
                expires_at: m.expires_at,
                revoked_at: m.revoked_at,
            })
            .collect())
    }

    pub async fn list_user_revocations(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: u64,
    ) -> StoreResult<Vec<UserRevocation>> {
        let mut query = user_revocations::Entity::find()
            .filter(user_revocations::Column::TenantId.eq(tenant))
            .order_by_asc(user_revocations::Column::UserId)
            .limit(limit);
        if let Some(after) = after {
            query = query.filter(user_revocations::Column::UserId.gt(after));
        }
        Ok(query
            .all(&self.db)
            .await?
            .into_iter()
            .map(|m| UserRevocation {
                tenant_id: m.tenant_id,
                user_id: m.user_id,
                revoked_before: m.revoked_before,
            })
            .collect())
    }

    // ---- audit log -----------------------------------------------------------------------

    pub async fn append_audit(
        &self,
        actor: &str,
        action: &str,
        tenant: Option<&str>,
        target: &str,
        details: &serde_json::Value,
    ) -> StoreResult<()> {
        let model = audit_log::ActiveModel {
            id: sea_orm::NotSet,
            at: Set(now()),
            actor: Set(actor.to_owned()),
            action: Set(action.to_owned()),
            tenant_id: Set(tenant.map(str::to_owned)),
            target: Set(target.to_owned()),
            details: Set(details.to_string()),
        };
        audit_log::Entity::insert(model).exec_without_returning(&self.db).await?;
        Ok(())
    }

    /// Newest first; `before` is the id of the last entry of the previous page.
    pub async fn list_audit(
        &self,
        tenant: Option<&str>,
        before: Option<i64>,
        limit: u64,
    ) -> StoreResult<Vec<AuditEntry>> {
        let mut query = audit_log::Entity::find().order_by_desc(audit_log::Column::Id).limit(limit);
        if let Some(tenant) = tenant {
            query = query.filter(audit_log::Column::TenantId.eq(tenant));
        }
        if let Some(before) = before {
            query = query.filter(audit_log::Column::Id.lt(before));
        }
        query
            .all(&self.db)
            .await?
            .into_iter()
            .map(|m| {
                Ok(AuditEntry {
                    details: from_json("audit.details", &m.details)?,
                    id: m.id,
                    at: m.at,
                    actor: m.actor,
                    action: m.action,
                    tenant_id: m.tenant_id,
                    target: m.target,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn expired_revocations_are_pruned_and_others_kept() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        let at = now();
        let tenant = Tenant {
            id: "acme".into(),
            name: "Acme".into(),
            status: TenantStatus::Active,
            allowed_origins: vec![],
            limits: TenantLimits::default(),
            created_at: at,
            updated_at: at,
        };
        store.create_tenant(&tenant).await.unwrap();
        let revoke = |jti: &str, expires_at| RevokedToken {
            tenant_id: "acme".into(),
            jti: jti.into(),
            expires_at,
            revoked_at: at,
        };
        store.revoke_token(&revoke("expired", Some(at - chrono::Duration::seconds(5)))).await.unwrap();
        store.revoke_token(&revoke("live", Some(at + chrono::Duration::hours(1)))).await.unwrap();
        store.revoke_token(&revoke("forever", None)).await.unwrap();
        assert_eq!(store.prune_revoked_tokens(at).await.unwrap(), 1);
        let left: Vec<String> =
            store.list_revoked_tokens("acme", None, 10).await.unwrap().into_iter().map(|r| r.jti).collect();
        assert_eq!(left, ["forever", "live"]);
    }
}
