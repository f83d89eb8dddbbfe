//! Herald's database schema, as sea-orm migrations.
//!
//! The same migrations run on SQLite (the embedded default) and PostgreSQL. Types are kept to
//! the portable subset: text, big integers, booleans and timestamps with time zone; structured
//! values (scopes, limits, channel options) are stored as JSON text and parsed by the store.

pub use sea_orm_migration::prelude::*;

mod m0001_initial;
mod m0002_webhooks;
mod m0003_proxies;
mod m0004_webhook_batches;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_initial::Migration),
            Box::new(m0002_webhooks::Migration),
            Box::new(m0003_proxies::Migration),
            Box::new(m0004_webhook_batches::Migration),
        ]
    }
}
