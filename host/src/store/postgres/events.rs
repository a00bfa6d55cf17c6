//! What other nodes tell this one through `LISTEN`/`NOTIFY`.

use super::PgStore;

/// Something another node (or this one) did that a node must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// A configured object changed (`repeatd_catalog`): reload the catalog.
    Catalog,
    /// Records became due or were released: (repeater id, due micros).
    Wake(Vec<(u64, i64)>),
}

impl PgStore {
    /// Every cluster event from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ClusterEvent> {
        todo!()
    }
}
