//! A tenant's proxy endpoints (connect, subscribe, publish, refresh) and their signing secret.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tenants {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum TenantProxies {
    Table,
    TenantId,
    Settings,
    SecretSealed,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(TenantProxies::Table)
                    .col(ColumnDef::new(TenantProxies::TenantId).text().not_null().primary_key())
                    .col(ColumnDef::new(TenantProxies::Settings).text().not_null())
                    .col(ColumnDef::new(TenantProxies::SecretSealed).text().not_null())
                    .col(ColumnDef::new(TenantProxies::UpdatedAt).timestamp_with_time_zone().not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .from(TenantProxies::Table, TenantProxies::TenantId)
                            .to(Tenants::Table, Tenants::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(TenantProxies::Table).to_owned()).await
    }
}
