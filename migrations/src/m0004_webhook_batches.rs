//! Webhook batching: up to `batch_max_events` events in one request, gathered for up to
//! `batch_max_ms` (1 and 0: one event per request, the default).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Webhooks {
    Table,
    BatchMaxEvents,
    BatchMaxMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite adds only one at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(Webhooks::Table)
                    .add_column(ColumnDef::new(Webhooks::BatchMaxEvents).big_integer().not_null().default(1))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Webhooks::Table)
                    .add_column(ColumnDef::new(Webhooks::BatchMaxMs).big_integer().not_null().default(0))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for col in [Webhooks::BatchMaxEvents, Webhooks::BatchMaxMs] {
            manager.alter_table(Table::alter().table(Webhooks::Table).drop_column(col).to_owned()).await?;
        }
        Ok(())
    }
}
