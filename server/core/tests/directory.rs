//! The directory's cache in front of the store: concurrent lookups of an uncached tenant wait
//! for one load, and an unknown tenant is remembered briefly, so a flood of tokens naming one
//! tenant (or unknown ones) does not become a flood of database reads; the first uses of a
//! channel at the same moment share one read of its settings.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use herald_core::StoreError;
use herald_core::crypto::MasterKey;
use herald_core::directory::{ConfigSource, Directory};
use herald_types::model::{
    ApiKey, Channel, Namespace, RevokedToken, SigningKey, Tenant, TenantLimits, TenantStatus, UserRevocation,
};

/// A slow store that counts tenant loads; `suspended` is read at the start of a load (the
/// moment a real database answers), the answer arrives 50 ms later.
#[derive(Default)]
struct Counting {
    loads: AtomicUsize,
    channel_reads: AtomicUsize,
    suspended: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl ConfigSource for Counting {
    async fn tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        let suspended = self.suspended.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok((id == "acme").then(|| Tenant {
            id: id.into(),
            name: "Acme".into(),
            status: if suspended { TenantStatus::Suspended } else { TenantStatus::Active },
            allowed_origins: vec![],
            limits: TenantLimits::default(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }))
    }
    async fn namespaces(&self, _: &str, _: u64) -> Result<Vec<Namespace>, StoreError> {
        Ok(vec![])
    }
    async fn signing_keys(&self, _: &str, _: u64) -> Result<Vec<SigningKey>, StoreError> {
        Ok(vec![])
    }
    async fn revoked_tokens(&self, _: &str, _: u64) -> Result<Vec<RevokedToken>, StoreError> {
        Ok(vec![])
    }
    async fn user_revocations(&self, _: &str, _: u64) -> Result<Vec<UserRevocation>, StoreError> {
        Ok(vec![])
    }
    async fn channel(&self, _: &str, _: &str) -> Result<Option<Channel>, StoreError> {
        self.channel_reads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(None)
    }
    async fn api_key_by_hash(&self, _: &str) -> Result<Option<ApiKey>, StoreError> {
        Ok(None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_share_one_load_and_misses_are_remembered() {
    let store = Arc::new(Counting::default());
    let directory = Arc::new(Directory::new(store.clone(), MasterKey::generate(), Duration::from_secs(60)));
    let mut lookups = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let d = directory.clone();
        lookups.spawn(async move { d.tenant("acme").await.unwrap().is_some() });
    }
    while let Some(found) = lookups.join_next().await {
        assert!(found.unwrap());
    }
    assert_eq!(store.loads.load(Ordering::SeqCst), 1, "one load for 50 concurrent lookups");

    for _ in 0..50 {
        assert!(directory.tenant("nobody").await.unwrap().is_none());
    }
    assert_eq!(store.loads.load(Ordering::SeqCst), 2, "an unknown tenant is looked up once");
    directory.invalidate("nobody");
    assert!(directory.tenant("nobody").await.unwrap().is_none());
    assert_eq!(store.loads.load(Ordering::SeqCst), 3, "invalidating forgets the miss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_after_a_change_is_not_served_by_a_load_that_began_before_it() {
    let store = Arc::new(Counting::default());
    let directory = Arc::new(Directory::new(store.clone(), MasterKey::generate(), Duration::from_secs(60)));
    // A lookup starts reading the old configuration…
    let early = {
        let d = directory.clone();
        tokio::spawn(async move { d.tenant("acme").await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    // …the tenant is suspended meanwhile, and the change is applied while that read runs.
    store.suspended.store(true, Ordering::SeqCst);
    let reloaded = directory.reload("acme").await.unwrap().unwrap();
    assert_eq!(
        early.await.unwrap().unwrap().tenant.status,
        TenantStatus::Active,
        "the early read saw the old state"
    );
    assert_eq!(reloaded.tenant.status, TenantStatus::Suspended, "the reload saw the change");
    assert_eq!(directory.tenant("acme").await.unwrap().unwrap().tenant.status, TenantStatus::Suspended);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_uses_of_a_channel_at_once_share_one_read() {
    let store = Arc::new(Counting::default());
    let directory = Arc::new(Directory::new(store.clone(), MasterKey::generate(), Duration::from_secs(60)));
    let tenant = directory.tenant("acme").await.unwrap().unwrap();
    let reads = || store.channel_reads.load(Ordering::SeqCst);
    let mut resolves = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (d, t) = (directory.clone(), tenant.clone());
        resolves.spawn(async move { d.resolve_channel(&t, "lobby").await.unwrap() });
    }
    let mut answers = Vec::new();
    while let Some(answer) = resolves.join_next().await {
        answers.push(answer.unwrap());
    }
    assert_eq!(reads(), 1, "one read for 50 first uses at once");
    assert!(answers.iter().all(|a| a.is_some() && *a == answers[0]), "all get the same answer");
    assert_eq!(directory.channel_reads_in_flight(), 0, "nothing is kept after the answer");

    directory.resolve_channel(&tenant, "lobby").await.unwrap();
    assert_eq!(reads(), 2, "a later use reads again");

    // Every caller of a read gives up before it answers, all at once: the read is not left
    // behind.
    let mut impatient = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (d, t) = (directory.clone(), tenant.clone());
        impatient.spawn(async move {
            tokio::time::timeout(Duration::from_millis(10), d.resolve_channel(&t, "other")).await.is_err()
        });
    }
    while let Some(gave_up) = impatient.join_next().await {
        assert!(gave_up.unwrap());
    }
    assert_eq!(directory.channel_reads_in_flight(), 0, "an abandoned read is forgotten");

    // A change of the tenant's configuration: a use after it does not get the answer of a read
    // that began before it.
    let before = reads();
    let early = {
        let (d, t) = (directory.clone(), tenant.clone());
        tokio::spawn(async move { d.resolve_channel(&t, "lobby").await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    directory.invalidate("acme");
    directory.resolve_channel(&tenant, "lobby").await.unwrap();
    early.await.unwrap();
    assert_eq!(reads(), before + 2, "the use after the change read afresh");
}
