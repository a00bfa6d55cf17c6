//! PostgreSQL for the end-to-end tests: fresh databases on the cluster
//! `REPEATD_TEST_PG_URL` names (`.ci/postgres` starts a throwaway one), and
//! the switch that runs the suites on that backend: with
//! `REPEATD_TEST_STORE=postgres`, every [`crate::Gateway`] whose config has
//! no `[store]` table of its own gets one naming a database made for its
//! directory, kept across restarts over the same directory.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The file in a gateway's directory that remembers its database.
const URL_FILE: &str = "pg-url";

/// Whether `REPEATD_TEST_STORE` asks for the PostgreSQL backend (unset or
/// `redb`: the embedded store).
pub fn store_is_postgres() -> bool {
    match std::env::var("REPEATD_TEST_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("redb") | Ok("") | Err(std::env::VarError::NotPresent) => false,
        Ok(other) => panic!("REPEATD_TEST_STORE={other}: want postgres or redb"),
        Err(error) => panic!("REPEATD_TEST_STORE: {error}"),
    }
}

/// The URL of a database made for the caller alone on the cluster of
/// `REPEATD_TEST_PG_URL` (which must be set).
pub async fn fresh_database_url() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = std::env::var("REPEATD_TEST_PG_URL")
        .expect("REPEATD_TEST_PG_URL must name a PostgreSQL the tests may CREATE DATABASE on");
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    let name = format!(
        "repeatd_t_{:x}_{}_{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    create_database(&base, &name)
        .await
        .unwrap_or_else(|error| panic!("REPEATD_TEST_PG_URL: {error:#}"))
}

/// Creates the database `name` on the server of `base` (a URL naming a
/// database the role may CREATE DATABASE from); returns its URL. The tests
/// and the load tool make theirs with it.
pub async fn create_database(base: &str, name: &str) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let (client, connection) = tokio_postgres::connect(base, tokio_postgres::NoTls)
        .await
        .context("connecting")?;
    let connection = tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .with_context(|| format!("creating the database {name}"))?;
    drop(client);
    let _ = connection.await;
    let (prefix, _) = base
        .rsplit_once('/')
        .context("the PostgreSQL URL ends in a database name")?;
    Ok(format!("{prefix}/{name}"))
}

/// A `[store]` table for the database at `url`.
pub fn store_table(url: &str) -> String {
    format!("\n[store]\nbackend = \"postgres\"\nurl = \"{url}\"\n")
}

/// Whether a config body declares `[store]` itself.
pub fn has_store_table(config_body: &str) -> bool {
    config_body.lines().any(|line| {
        let line = line.trim();
        line == "[store]" || line.starts_with("[store.")
    })
}

/// The database of the gateway directory `dir`: the one made for it
/// before (a restart over the same data), or a fresh one, remembered in
/// `dir/pg-url`.
pub async fn database_of(dir: &Path) -> String {
    let file = dir.join(URL_FILE);
    if let Ok(url) = std::fs::read_to_string(&file) {
        return url.trim().to_owned();
    }
    let url = fresh_database_url().await;
    std::fs::write(&file, &url)
        .unwrap_or_else(|error| panic!("writing {}: {error}", file.display()));
    url
}

/// What `Gateway` appends to a test's config: a `[store]` table when the
/// suites run on PostgreSQL and the body has none of its own.
pub async fn store_switch(dir: &Path, config_body: &str) -> String {
    if !store_is_postgres() || has_store_table(config_body) {
        return String::new();
    }
    store_table(&database_of(dir).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_with_its_own_store_table_is_left_alone() {
        assert!(has_store_table(
            "[[domains]]\nname = \"d\"\n\n[store]\nbackend = \"redb\"\n"
        ));
        assert!(has_store_table("  [store.pool]\n"));
        assert!(!has_store_table(
            "[[domains]]\nname = \"store\"\n[storage]\n"
        ));
    }

    #[tokio::test]
    async fn a_gateway_directory_keeps_its_database() {
        let dir = crate::TempDir::new("pg-url");
        let url = database_of(dir.path()).await;
        assert_eq!(database_of(dir.path()).await, url, "a restart reuses it");
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("the database exists");
        tokio::spawn(connection);
        client.simple_query("SELECT 1").await.expect("it answers");
        assert_ne!(fresh_database_url().await, url);
    }
}
