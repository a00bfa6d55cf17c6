//! What a node does for the cluster it is part of, on a store several nodes
//! share (`[store] backend = "postgres"`); nothing on redb.
//!
//! - It follows the other nodes' events (`LISTEN`): a configured object
//!   changed → the catalog is read again (so a pause, a new connection or
//!   repeater made through any node is in force here within moments); records
//!   became due → their lanes are woken; events may have been missed (the
//!   listening connection broke) → every lane looks at its queue again.
//! - It renews the leases of the records it holds (being sent, or sent and
//!   not yet committed) every third of the lease, so that only a node that
//!   died loses them.
//! - Every second it shares its lanes' health (failures in a row, back-off)
//!   and takes on what others wrote since, so that a remote that fails backs
//!   off the whole cluster, and a success anywhere restores full speed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::scheduler::Scheduler;
use crate::store::Store;
use crate::store::postgres::ClusterEvent;

/// How often a task idle on events checks whether the node is stopping
/// (each task ends with the scheduler, letting go of the store).
const STOP_CHECK: Duration = Duration::from_secs(1);
/// How often health is shared.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Starts following the cluster; does nothing on a store of one node.
pub fn follow(store: Store, catalog: Arc<Catalog>, scheduler: Scheduler, clock: Clock) {
    let (Some(events), Some(lease)) = (store.subscribe(), store.lease()) else {
        return;
    };
    tokio::spawn(follow_events(events, catalog, scheduler.clone()));
    tokio::spawn(renew_leases(store.clone(), scheduler.clone(), lease, clock));
    tokio::spawn(share_health(store, scheduler, clock));
}

async fn follow_events(
    mut events: tokio::sync::broadcast::Receiver<ClusterEvent>,
    catalog: Arc<Catalog>,
    scheduler: Scheduler,
) {
    use tokio::sync::broadcast::error::RecvError;
    while !scheduler.is_stopping() {
        let Ok(event) = tokio::time::timeout(STOP_CHECK, events.recv()).await else {
            continue;
        };
        match event {
            Ok(ClusterEvent::Catalog) => {
                if let Err(error) = catalog.reload_from_store().await {
                    tracing::error!(%error, "cannot read the objects another node changed");
                }
            }
            Ok(ClusterEvent::Wake(items)) => scheduler.registered(&items),
            Ok(ClusterEvent::Resync) => scheduler.refresh(None),
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "fell behind the cluster's events; reading everything again"
                );
                if let Err(error) = catalog.reload_from_store().await {
                    tracing::error!(%error, "cannot read the objects");
                }
                scheduler.refresh(None);
            }
            Err(RecvError::Closed) => return,
        }
    }
}

async fn renew_leases(store: Store, scheduler: Scheduler, lease: Duration, clock: Clock) {
    let every = (lease / 3).max(Duration::from_millis(100));
    while !scheduler.is_stopping() {
        clock.sleep(every).await;
        let held = scheduler.held_records();
        if let Err(error) = store.renew_leases(&held).await {
            tracing::warn!(%error, records = held.len(), "cannot renew the leases of the records being sent; another node may send them too once they end");
        }
    }
}

/// A repeater's health as this node last wrote or took it on, and when.
struct Shared {
    consecutive_failures: u32,
    backoff_until: Option<i64>,
    at: i64,
}

async fn share_health(store: Store, scheduler: Scheduler, clock: Clock) {
    let mut known: HashMap<u64, Shared> = HashMap::new();
    while !scheduler.is_stopping() {
        clock.sleep(HEALTH_EVERY).await;
        let now = clock.now_micros();
        for (repeater_id, consecutive_failures, backoff_until) in scheduler.lane_health() {
            let unchanged = known.get(&repeater_id).is_some_and(|shared| {
                shared.consecutive_failures == consecutive_failures
                    && shared.backoff_until == backoff_until
            });
            // A lane that never failed has nothing to tell.
            if unchanged || (!known.contains_key(&repeater_id) && consecutive_failures == 0) {
                continue;
            }
            match store
                .put_health(repeater_id, consecutive_failures, backoff_until)
                .await
            {
                Ok(()) => {
                    known.insert(
                        repeater_id,
                        Shared {
                            consecutive_failures,
                            backoff_until,
                            at: now,
                        },
                    );
                }
                Err(error) => tracing::warn!(%error, "cannot share a repeater's health"),
            }
        }
        let cluster = match store.cluster_health().await {
            Ok(cluster) => cluster,
            Err(error) => {
                tracing::warn!(%error, "cannot read the cluster's repeater health");
                continue;
            }
        };
        for (repeater_id, (consecutive_failures, backoff_until, updated_at)) in cluster {
            let newer = known
                .get(&repeater_id)
                .is_none_or(|shared| updated_at > shared.at);
            let differs = known.get(&repeater_id).is_none_or(|shared| {
                shared.consecutive_failures != consecutive_failures
                    || shared.backoff_until != backoff_until
            });
            if newer && differs {
                scheduler.adopt_health(repeater_id, consecutive_failures, backoff_until);
                known.insert(
                    repeater_id,
                    Shared {
                        consecutive_failures,
                        backoff_until,
                        at: updated_at,
                    },
                );
            }
        }
    }
}
