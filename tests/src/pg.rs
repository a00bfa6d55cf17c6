//! A fresh PostgreSQL database per test, on the server `REPEATD_TEST_PG_URL`
//! names (started by `test.sh`); the role must be allowed to CREATE DATABASE.

use std::hash::{BuildHasher, RandomState};

/// Creates a database of its own for one test and returns its URL; panics
/// when `REPEATD_TEST_PG_URL` is not set or the server refuses.
pub async fn fresh_database_url() -> String {
    let base = std::env::var("REPEATD_TEST_PG_URL")
        .expect("REPEATD_TEST_PG_URL must name a PostgreSQL the tests may CREATE DATABASE on");
    let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .expect("connecting to REPEATD_TEST_PG_URL");
    tokio::spawn(connection);
    // RandomState's keys are random (and differ from one to the next), the
    // process id and the clock tell apart what is left.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let random = RandomState::new().hash_one((std::process::id(), nanos));
    let name = format!("repeatd_t_{random:016x}");
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("creating a test database");
    let (prefix, _) = base.rsplit_once('/').expect("a URL with a database");
    format!("{prefix}/{name}")
}
