use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tenants {
    Table,
    Id,
    Name,
    Status,
    AllowedOrigins,
    Limits,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Namespaces {
    Table,
    TenantId,
    Name,
    Options,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Channels {
    Table,
    TenantId,
    Name,
    Options,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Id,
    TenantId,
    Name,
    Prefix,
    SecretHash,
    Scopes,
    ExpiresAt,
    LastUsedAt,
    RevokedAt,
    CreatedAt,
}

#[derive(DeriveIden)]
enum SigningKeys {
    Table,
    TenantId,
    Kid,
    Algorithm,
    SecretCiphertext,
    PublicKeyPem,
    Status,
    CreatedAt,
    RetiredAt,
}

#[derive(DeriveIden)]
enum RevokedTokens {
    Table,
    TenantId,
    Jti,
    ExpiresAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum UserRevocations {
    Table,
    TenantId,
    UserId,
    RevokedBefore,
}

#[derive(DeriveIden)]
enum AuditLog {
    Table,
    Id,
    At,
    Actor,
    Action,
    TenantId,
    Target,
    Details,
}

#[derive(DeriveIden)]
enum Settings {
    Table,
    Key,
    Value,
}

fn text(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).text().not_null().to_owned()
}

fn timestamp(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).timestamp_with_time_zone().not_null().to_owned()
}

fn timestamp_null(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).timestamp_with_time_zone().null().to_owned()
}

/// A foreign key to `tenants.id` that removes the row with its tenant.
fn tenant_fk(table: impl IntoIden + 'static, col: impl IntoIden + 'static) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .from(table, col)
        .to(Tenants::Table, Tenants::Id)
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Tenants::Table)
                    .col(text(Tenants::Id).primary_key())
                    .col(text(Tenants::Name))
                    .col(text(Tenants::Status))
                    .col(text(Tenants::AllowedOrigins))
                    .col(text(Tenants::Limits))
                    .col(timestamp(Tenants::CreatedAt))
                    .col(timestamp(Tenants::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Namespaces::Table)
                    .col(text(Namespaces::TenantId))
                    .col(text(Namespaces::Name))
                    .col(text(Namespaces::Options))
                    .col(timestamp(Namespaces::CreatedAt))
                    .col(timestamp(Namespaces::UpdatedAt))
                    .primary_key(Index::create().col(Namespaces::TenantId).col(Namespaces::Name))
                    .foreign_key(&mut tenant_fk(Namespaces::Table, Namespaces::TenantId))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Channels::Table)
                    .col(text(Channels::TenantId))
                    .col(text(Channels::Name))
                    .col(text(Channels::Options))
                    .col(timestamp(Channels::CreatedAt))
                    .col(timestamp(Channels::UpdatedAt))
                    .primary_key(Index::create().col(Channels::TenantId).col(Channels::Name))
                    .foreign_key(&mut tenant_fk(Channels::Table, Channels::TenantId))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ApiKeys::Table)
                    .col(text(ApiKeys::Id).primary_key())
                    .col(text(ApiKeys::TenantId))
                    .col(text(ApiKeys::Name))
                    .col(text(ApiKeys::Prefix))
                    .col(text(ApiKeys::SecretHash).unique_key())
                    .col(text(ApiKeys::Scopes))
                    .col(timestamp_null(ApiKeys::ExpiresAt))
                    .col(timestamp_null(ApiKeys::LastUsedAt))
                    .col(timestamp_null(ApiKeys::RevokedAt))
                    .col(timestamp(ApiKeys::CreatedAt))
                    .foreign_key(&mut tenant_fk(ApiKeys::Table, ApiKeys::TenantId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_api_keys_tenant")
                    .table(ApiKeys::Table)
                    .col(ApiKeys::TenantId)
                    .col(ApiKeys::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(SigningKeys::Table)
                    .col(text(SigningKeys::TenantId))
                    .col(text(SigningKeys::Kid))
                    .col(text(SigningKeys::Algorithm))
                    .col(ColumnDef::new(SigningKeys::SecretCiphertext).text().null())
                    .col(ColumnDef::new(SigningKeys::PublicKeyPem).text().null())
                    .col(text(SigningKeys::Status))
                    .col(timestamp(SigningKeys::CreatedAt))
                    .col(timestamp_null(SigningKeys::RetiredAt))
                    .primary_key(Index::create().col(SigningKeys::TenantId).col(SigningKeys::Kid))
                    .foreign_key(&mut tenant_fk(SigningKeys::Table, SigningKeys::TenantId))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(RevokedTokens::Table)
                    .col(text(RevokedTokens::TenantId))
                    .col(text(RevokedTokens::Jti))
                    .col(timestamp_null(RevokedTokens::ExpiresAt))
                    .col(timestamp(RevokedTokens::RevokedAt))
                    .primary_key(Index::create().col(RevokedTokens::TenantId).col(RevokedTokens::Jti))
                    .foreign_key(&mut tenant_fk(RevokedTokens::Table, RevokedTokens::TenantId))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(UserRevocations::Table)
                    .col(text(UserRevocations::TenantId))
                    .col(text(UserRevocations::UserId))
                    .col(timestamp(UserRevocations::RevokedBefore))
                    .primary_key(Index::create().col(UserRevocations::TenantId).col(UserRevocations::UserId))
                    .foreign_key(&mut tenant_fk(UserRevocations::Table, UserRevocations::TenantId))
                    .to_owned(),
            )
            .await?;

        // The audit log outlives the tenants it mentions, so it has no foreign key.
        manager
            .create_table(
                Table::create()
                    .table(AuditLog::Table)
                    .col(ColumnDef::new(AuditLog::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(timestamp(AuditLog::At))
                    .col(text(AuditLog::Actor))
                    .col(text(AuditLog::Action))
                    .col(ColumnDef::new(AuditLog::TenantId).text().null())
                    .col(text(AuditLog::Target))
                    .col(text(AuditLog::Details))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_audit_log_tenant")
                    .table(AuditLog::Table)
                    .col(AuditLog::TenantId)
                    .col(AuditLog::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Settings::Table)
                    .col(text(Settings::Key).primary_key())
                    .col(text(Settings::Value))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Settings::Table.into_iden(),
            AuditLog::Table.into_iden(),
            UserRevocations::Table.into_iden(),
            RevokedTokens::Table.into_iden(),
            SigningKeys::Table.into_iden(),
            ApiKeys::Table.into_iden(),
            Channels::Table.into_iden(),
            Namespaces::Table.into_iden(),
            Tenants::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
