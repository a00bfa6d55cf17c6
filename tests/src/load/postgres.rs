//! PostgreSQL for the load tool (`--store postgres|both`, the `scaleout`
//! scenario): the server the gateways store in, a fresh database for each
//! gateway start, and what the server spends, in CPU (its processes in
//! `/proc`) and in commits and WAL (its statistics views).
//!
//! Without `--pg-url` the tool makes a throwaway cluster with the
//! workspace's `.ci/postgres` (`synchronous_commit = on`, `fsync = on`) and
//! removes it when [`PgServer`] is dropped, on error too. Given a URL, it uses
//! that server and cannot see its processes: the database's CPU is not counted.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use crate::daemon::clock_ticks_per_second;

/// The script that makes throwaway clusters, from the workspace root.
const CLUSTER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/postgres");

/// The PostgreSQL server of a load run.
pub struct PgServer {
    /// `postgres://…/postgres`: a role that may CREATE DATABASE.
    base_url: String,
    /// The cluster's directory, when this tool started it.
    cluster_dir: Option<PathBuf>,
}

impl PgServer {
    /// Uses the server at `url`, or starts a throwaway cluster when `None`.
    pub fn start_or_use(url: Option<&str>) -> anyhow::Result<PgServer> {
        if let Some(url) = url {
            return Ok(PgServer {
                base_url: url.to_owned(),
                cluster_dir: None,
            });
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("finding a free port for PostgreSQL")?
            .port();
        let dir = std::env::temp_dir().join(format!(
            "repeatd-load-pg-{}-{}",
            std::process::id(),
            unique_suffix()
        ));
        eprintln!(
            "repeatd-load: starting a throwaway PostgreSQL in {} on port {port}",
            dir.display()
        );
        // From here on `Drop` stops and removes whatever the script made.
        let mut server = PgServer {
            base_url: String::new(),
            cluster_dir: Some(dir.clone()),
        };
        let output = std::process::Command::new(CLUSTER_SCRIPT)
            .arg("start")
            .arg(&dir)
            .arg(port.to_string())
            .output()
            .with_context(|| format!("running {CLUSTER_SCRIPT}"))?;
        anyhow::ensure!(
            output.status.success(),
            "{CLUSTER_SCRIPT} start failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        server.base_url = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        anyhow::ensure!(
            server.base_url.starts_with("postgres://"),
            "{CLUSTER_SCRIPT} printed no URL: {:?}",
            server.base_url
        );
        Ok(server)
    }

    /// Whether [`PgServer::cpu_seconds`] sees the server's processes.
    pub fn counts_server_cpu(&self) -> bool {
        self.cluster_dir.is_some()
    }

    /// The CPU time of the cluster this tool started: the postmaster and its
    /// children (backends, WAL writer, checkpointer, …), user + system,
    /// including children that already exited (the postmaster's `cutime`
    /// and `cstime`). `None` for a server given by URL.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let dir = self.cluster_dir.as_ref()?;
        let pid_file = std::fs::read_to_string(dir.join("postmaster.pid")).ok()?;
        let postmaster: u32 = pid_file.lines().next()?.trim().parse().ok()?;
        let mut ticks = process_ticks(&postmaster.to_string())?.with_reaped_children;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if let Some(process) = process_ticks(&name)
                && process.parent == postmaster
            {
                ticks += process.with_reaped_children;
            }
        }
        Some(ticks / clock_ticks_per_second())
    }

    /// A database made for one gateway start (`repeatd_load_<random>`), as
    /// a URL.
    pub async fn fresh_database(&self) -> anyhow::Result<String> {
        let name = format!("repeatd_load_{:x}_{}", std::process::id(), unique_suffix());
        crate::pg::create_database(&self.base_url, &name).await
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let Some(dir) = self.cluster_dir.take() else {
            return;
        };
        let stopped = std::process::Command::new(CLUSTER_SCRIPT)
            .arg("stop")
            .arg(&dir)
            .status();
        if !matches!(stopped, Ok(status) if status.success()) {
            eprintln!(
                "repeatd-load: stopping the PostgreSQL in {} failed: {stopped:?}",
                dir.display()
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(initdb_log(&dir));
    }
}

/// Where `.ci/postgres` leaves initdb's output: beside the cluster.
fn initdb_log(dir: &Path) -> PathBuf {
    let mut log = dir.as_os_str().to_owned();
    log.push(".initdb.log");
    PathBuf::from(log)
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!("{:x}", nanos & 0xffff_ffff_ffff)
}

struct ProcessTicks {
    parent: u32,
    /// utime + stime + cutime + cstime, in clock ticks.
    with_reaped_children: f64,
}

fn process_ticks(pid: &str) -> Option<ProcessTicks> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3:
    // ppid is field 4, utime..cstime fields 14 to 17.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let parent = fields.get(1)?.parse().ok()?;
    let mut ticks = 0.0;
    for field in 11..15 {
        ticks += fields.get(field)?.parse::<f64>().ok()?;
    }
    Some(ProcessTicks {
        parent,
        with_reaped_children: ticks,
    })
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {}", without_password(url)))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// `url` with its password (if any) replaced, for messages.
fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user_info = &url[scheme + 3..at];
            let user = user_info.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The server's cumulative counters of one database at some moment.
#[derive(Debug, Clone, Copy)]
pub struct DatabaseCounters {
    /// `pg_stat_database.xact_commit` of the database: every committed
    /// transaction, read-only ones too.
    pub commits: f64,
    /// Transaction ids assigned, cluster-wide (`pg_current_snapshot()`'s
    /// xmax): the transactions that wrote, each of whose commits waits for
    /// a WAL flush. Exact at once, unlike the statistics views.
    pub write_transactions: f64,
    /// The WAL position in bytes (`pg_current_wal_lsn()`), cluster-wide.
    pub wal_bytes: f64,
    /// `pg_stat_wal.wal_sync` (PostgreSQL 14 to 17): WAL fsyncs,
    /// cluster-wide.
    pub wal_syncs: Option<f64>,
}

/// How long a busy backend may keep its statistics before they reach the
/// views (PostgreSQL's `PGSTAT_MIN_INTERVAL` is 1 s): waited before a
/// reading of them, so that a phase's own commits are in it.
pub const STATISTICS_SETTLE: Duration = Duration::from_millis(1_100);

/// Reads the counters of the database at `url`.
pub async fn database_counters(url: &str) -> anyhow::Result<DatabaseCounters> {
    let client = connect(url).await?;
    let row = client
        .query_one(
            "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())::float8,
                    pg_snapshot_xmax(pg_current_snapshot())::text::float8,
                    (pg_current_wal_lsn() - '0/0'::pg_lsn)::float8",
            &[],
        )
        .await
        .context("reading pg_stat_database and the WAL position")?;
    // PostgreSQL 18 moved WAL fsyncs to pg_stat_io: no figure there.
    let wal_syncs = client
        .query_one("SELECT wal_sync::float8 FROM pg_stat_wal", &[])
        .await
        .ok()
        .map(|row| row.get::<_, f64>(0));
    Ok(DatabaseCounters {
        commits: row.get(0),
        write_transactions: row.get(1),
        wal_bytes: row.get(2),
        wal_syncs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            without_password("postgres://repeatd:secret@127.0.0.1:5432/postgres"),
            "postgres://repeatd:***@127.0.0.1:5432/postgres"
        );
        assert_eq!(
            without_password("postgres://127.0.0.1/x"),
            "postgres://127.0.0.1/x"
        );
    }

    #[test]
    fn this_process_has_a_parent_and_cpu_ticks() {
        let me = process_ticks("self").expect("/proc/self/stat");
        assert!(me.parent > 0);
        assert!(me.with_reaped_children >= 0.0);
        assert_eq!(
            initdb_log(Path::new("/tmp/pg")),
            PathBuf::from("/tmp/pg.initdb.log")
        );
    }
}
