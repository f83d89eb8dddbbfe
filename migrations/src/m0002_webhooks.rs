//! Webhooks, and the durable queue of their deliveries (which is also their delivery log).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tenants {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Webhooks {
    Table,
    Id,
    TenantId,
    Url,
    Description,
    Events,
    Enabled,
    IncludeApiPublishes,
    DisabledReason,
    SecretSealed,
    PreviousSecretSealed,
    PreviousUntil,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum HookDeliveries {
    Table,
    Id,
    TenantId,
    WebhookId,
    EventId,
    EventType,
    Body,
    Status,
    Attempts,
    CreatedAt,
    GiveUpAt,
    NextAttemptAt,
    ClaimedBy,
    ClaimedUntil,
    LastAttemptAt,
    ResponseStatus,
    LatencyMs,
    ResponseExcerpt,
    Error,
}

#[derive(DeriveIden)]
enum HookSequences {
    Table,
    TenantId,
    Channel,
    Seq,
}

fn text(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).text().not_null().to_owned()
}

fn text_null(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).text().null().to_owned()
}

fn timestamp(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).timestamp_with_time_zone().not_null().to_owned()
}

fn timestamp_null(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).timestamp_with_time_zone().null().to_owned()
}

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
                    .table(Webhooks::Table)
                    .col(text(Webhooks::Id).primary_key())
                    .col(text(Webhooks::TenantId))
                    .col(text(Webhooks::Url))
                    .col(text(Webhooks::Description))
                    .col(text(Webhooks::Events))
                    .col(ColumnDef::new(Webhooks::Enabled).boolean().not_null())
                    .col(ColumnDef::new(Webhooks::IncludeApiPublishes).boolean().not_null())
                    .col(text_null(Webhooks::DisabledReason))
                    .col(text(Webhooks::SecretSealed))
                    .col(text_null(Webhooks::PreviousSecretSealed))
                    .col(timestamp_null(Webhooks::PreviousUntil))
                    .col(timestamp(Webhooks::CreatedAt))
                    .col(timestamp(Webhooks::UpdatedAt))
                    .foreign_key(&mut tenant_fk(Webhooks::Table, Webhooks::TenantId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_webhooks_tenant")
                    .table(Webhooks::Table)
                    .col(Webhooks::TenantId)
                    .col(Webhooks::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(HookDeliveries::Table)
                    .col(text(HookDeliveries::Id).primary_key())
                    .col(text(HookDeliveries::TenantId))
                    .col(text(HookDeliveries::WebhookId))
                    .col(text(HookDeliveries::EventId))
                    .col(text(HookDeliveries::EventType))
                    .col(text(HookDeliveries::Body))
                    .col(text(HookDeliveries::Status))
                    .col(ColumnDef::new(HookDeliveries::Attempts).big_integer().not_null())
                    .col(timestamp(HookDeliveries::CreatedAt))
                    .col(timestamp(HookDeliveries::GiveUpAt))
                    .col(timestamp_null(HookDeliveries::NextAttemptAt))
                    .col(text_null(HookDeliveries::ClaimedBy))
                    .col(timestamp_null(HookDeliveries::ClaimedUntil))
                    .col(timestamp_null(HookDeliveries::LastAttemptAt))
                    .col(ColumnDef::new(HookDeliveries::ResponseStatus).big_integer().null())
                    .col(ColumnDef::new(HookDeliveries::LatencyMs).big_integer().null())
                    .col(text_null(HookDeliveries::ResponseExcerpt))
                    .col(text_null(HookDeliveries::Error))
                    .foreign_key(
                        ForeignKey::create()
                            .from(HookDeliveries::Table, HookDeliveries::WebhookId)
                            .to(Webhooks::Table, Webhooks::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // Due work: the dispatcher's claim query.
        manager
            .create_index(
                Index::create()
                    .name("idx_hook_deliveries_due")
                    .table(HookDeliveries::Table)
                    .col(HookDeliveries::Status)
                    .col(HookDeliveries::NextAttemptAt)
                    .to_owned(),
            )
            .await?;
        // The delivery log of a webhook, newest first; and a tenant's queue size.
        manager
            .create_index(
                Index::create()
                    .name("idx_hook_deliveries_webhook")
                    .table(HookDeliveries::Table)
                    .col(HookDeliveries::WebhookId)
                    .col(HookDeliveries::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_hook_deliveries_tenant")
                    .table(HookDeliveries::Table)
                    .col(HookDeliveries::TenantId)
                    .col(HookDeliveries::Status)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(HookSequences::Table)
                    .col(text(HookSequences::TenantId))
                    .col(text(HookSequences::Channel))
                    .col(ColumnDef::new(HookSequences::Seq).big_integer().not_null())
                    .primary_key(Index::create().col(HookSequences::TenantId).col(HookSequences::Channel))
                    .foreign_key(&mut tenant_fk(HookSequences::Table, HookSequences::TenantId))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in
            [HookSequences::Table.into_iden(), HookDeliveries::Table.into_iden(), Webhooks::Table.into_iden()]
        {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
