//! Tests of `PgStore` against a real PostgreSQL (`REPEATD_TEST_PG_URL`); each
//! test makes its own database, so they run in parallel.

use std::time::Duration;

use super::PgStore;
use crate::clock::Clock;
use crate::store::ObjectChange;

/// A fresh database on the test cluster; fails when the URL is not given.
pub(super) async fn fresh_url() -> String {
    let base = std::env::var("REPEATD_TEST_PG_URL")
        .expect("REPEATD_TEST_PG_URL must name a PostgreSQL the tests may CREATE DATABASE on");
    let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .expect("connecting to REPEATD_TEST_PG_URL");
    tokio::spawn(connection);
    let name = format!(
        "repeatd_t_{:016x}",
        super::random_u64().expect("randomness")
    );
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("creating a test database");
    let (prefix, _) = base.rsplit_once('/').expect("a URL with a database");
    format!("{prefix}/{name}")
}

async fn connect(url: &str) -> PgStore {
    PgStore::connect(url, Duration::from_secs(30), Clock::system())
        .await
        .expect("connecting")
}

#[tokio::test]
async fn two_nodes_share_schema_nonce_and_objects() {
    let url = fresh_url().await;
    let (a, b) = tokio::join!(connect(&url), connect(&url));
    let id = a.record_id(42);
    assert_eq!(b.parse_record_id(&id), Some(42));
    assert!(a.is_empty().await.expect("is_empty"));
    a.put_objects(vec![ObjectChange {
        kind: "repeater",
        domain: "d".into(),
        name: "r".into(),
        value: Some(b"x".to_vec()),
    }])
    .await
    .expect("put_objects");
    assert_eq!(
        b.objects("repeater").await.expect("objects"),
        vec![("d".to_owned(), "r".to_owned(), b"x".to_vec())]
    );
    assert!(!b.is_empty().await.expect("is_empty"));
    let first = a.allocate_repeater_id().await.expect("id");
    let second = b.allocate_repeater_id().await.expect("id");
    assert!(second > first);
}

#[tokio::test]
async fn hold_lock_is_held_by_one_node_and_passes_on() {
    let url = fresh_url().await;
    let a = connect(&url).await;
    let b = connect(&url).await;
    assert!(a.hold_lock("digest").await.expect("lock"));
    assert!(a.hold_lock("digest").await.expect("lock"));
    assert!(!b.hold_lock("digest").await.expect("lock"));
    drop(a);
    let mut taken = false;
    for _ in 0..50 {
        if b.hold_lock("digest").await.expect("lock") {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(taken, "the lock passes on when its holder is dropped");
}

#[tokio::test]
async fn health_is_shared() {
    let url = fresh_url().await;
    let a = connect(&url).await;
    let b = connect(&url).await;
    a.put_health(3, 2, Some(99)).await.expect("put_health");
    let health = b.cluster_health().await.expect("cluster_health");
    assert_eq!(health.get(&3).map(|h| (h.0, h.1)), Some((2, Some(99))));
}

#[tokio::test]
async fn unreachable_database_is_named_without_password() {
    let result = PgStore::connect(
        "postgres://u:secret@127.0.0.1:1/db",
        Duration::from_secs(30),
        Clock::system(),
    )
    .await;
    let error = result.expect_err("nothing listens on port 1").to_string();
    assert!(error.contains("127.0.0.1:1"), "{error}");
    assert!(!error.contains("secret"), "{error}");
}
