//! What nodes tell each other through `LISTEN`/`NOTIFY`: configured
//! objects changed (`repeatd_catalog`, sent in the transaction of
//! `put_objects`), records became due (`repeatd_wake`, sent in the
//! transaction that registered, retried or released them). Notifications are
//! delivered on commit, to every listening node including the sender.
//!
//! Each node keeps one connection of its own listening. When it breaks, the
//! node connects again and hands out `Catalog` and `Resync` once listening,
//! since what was sent meanwhile is lost: whoever subscribed reloads rather
//! than trust what it knew.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls};

use super::{PgStore, sql_error};
use crate::store::StoreError;

/// The channel of configured-object changes.
pub(super) const CATALOG_CHANNEL: &str = "repeatd_catalog";
/// The channel of records made due.
const WAKE_CHANNEL: &str = "repeatd_wake";
/// A NOTIFY payload must stay under 8000 bytes.
const MAX_PAYLOAD: usize = 7_000;
/// How long the listener waits before connecting again.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
/// How often an idle listener checks whether its store is gone.
const ALIVE_CHECK: Duration = Duration::from_secs(1);

/// Something another node (or this one) did that a node must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// A configured object changed: reload the catalog.
    Catalog,
    /// Records became due: (repeater id, due micros).
    Wake(Vec<(u64, i64)>),
    /// Events may have been missed (the listening connection broke): look
    /// at every repeater's queue again.
    Resync,
}

/// `woken` as NOTIFY payloads: `repeater:due` pairs, comma separated.
pub(super) fn wake_payloads(woken: &BTreeMap<u64, i64>) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut current = String::new();
    for (repeater_id, at) in woken {
        let item = format!("{repeater_id}:{at}");
        if !current.is_empty() && current.len() + item.len() + 1 > MAX_PAYLOAD {
            payloads.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(',');
        }
        current.push_str(&item);
    }
    if !current.is_empty() {
        payloads.push(current);
    }
    payloads
}

/// The (repeater id, due) pairs of a wake payload; what does not parse is
/// left out (no node of this build sends it).
fn parse_wake(payload: &str) -> Vec<(u64, i64)> {
    payload
        .split(',')
        .filter_map(|item| {
            let (repeater, at) = item.split_once(':')?;
            Some((repeater.parse().ok()?, at.parse().ok()?))
        })
        .collect()
}

/// Starts listening on a connection of its own; the events go to the
/// returned sender's subscribers until the last store handle is dropped.
pub(super) async fn listen(
    url: &str,
    redacted: String,
) -> Result<Arc<broadcast::Sender<ClusterEvent>>, StoreError> {
    let (events, _) = broadcast::channel(1_024);
    let events = Arc::new(events);
    // The first connection is made here, so that a database that does not
    // answer fails the start rather than a background task.
    let listening = Listening::connect(url, &redacted).await?;
    let weak = Arc::downgrade(&events);
    let url = url.to_owned();
    tokio::spawn(async move {
        let mut listening = Some(listening);
        loop {
            let current = match listening.take() {
                Some(current) => current,
                None => match Listening::connect(&url, &redacted).await {
                    Ok(current) => {
                        let Some(events) = weak.upgrade() else { return };
                        let _ = events.send(ClusterEvent::Catalog);
                        let _ = events.send(ClusterEvent::Resync);
                        current
                    }
                    Err(error) => {
                        if weak.upgrade().is_none() {
                            return;
                        }
                        tracing::warn!(%error, "cannot listen for other nodes; trying again");
                        tokio::time::sleep(RECONNECT_AFTER).await;
                        continue;
                    }
                },
            };
            if !current.forward(&weak).await {
                return;
            }
            tracing::warn!("the connection listening for other nodes broke; connecting again");
            tokio::time::sleep(RECONNECT_AFTER).await;
        }
    });
    Ok(events)
}

/// A connection listening on both channels.
struct Listening {
    _client: tokio_postgres::Client,
    messages: tokio::sync::mpsc::UnboundedReceiver<Result<AsyncMessage, tokio_postgres::Error>>,
}

impl Listening {
    async fn connect(url: &str, redacted: &str) -> Result<Listening, StoreError> {
        let (client, mut connection) = tokio_postgres::connect(url, NoTls)
            .await
            .map_err(|e| StoreError::Storage(format!("PostgreSQL {redacted}: {e}")))?;
        let (sender, messages) = tokio::sync::mpsc::unbounded_channel();
        // The connection is driven by its own task, which hands over what
        // the server sends unasked (notifications) and ends with it.
        tokio::spawn(async move {
            let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = stream.next().await {
                let failed = message.is_err();
                if sender.send(message).is_err() || failed {
                    return;
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {CATALOG_CHANNEL}; LISTEN {WAKE_CHANNEL}"))
            .await
            .map_err(|e| sql_error("listening for other nodes", e))?;
        Ok(Listening {
            _client: client,
            messages,
        })
    }

    /// Hands out events until the connection breaks (true) or the store is
    /// gone (false).
    async fn forward(mut self, events: &Weak<broadcast::Sender<ClusterEvent>>) -> bool {
        let mut alive = tokio::time::interval(ALIVE_CHECK);
        loop {
            tokio::select! {
                message = self.messages.recv() => {
                    let Some(Ok(message)) = message else { return true };
                    let AsyncMessage::Notification(notification) = message else { continue };
                    let Some(events) = events.upgrade() else { return false };
                    let event = if notification.channel() == CATALOG_CHANNEL {
                        ClusterEvent::Catalog
                    } else {
                        ClusterEvent::Wake(parse_wake(notification.payload()))
                    };
                    let _ = events.send(event);
                }
                _ = alive.tick() => {
                    if events.strong_count() == 0 {
                        return false;
                    }
                }
            }
        }
    }
}

impl PgStore {
    /// Every cluster event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ClusterEvent> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_payloads_round_trip_and_stay_under_the_limit() {
        let woken: BTreeMap<u64, i64> = (0..2_000u64)
            .map(|id| (id, 1_700_000_000_000_000 + id as i64))
            .collect();
        let payloads = wake_payloads(&woken);
        assert!(payloads.len() > 1);
        assert!(payloads.iter().all(|p| p.len() <= MAX_PAYLOAD));
        let parsed: BTreeMap<u64, i64> = payloads.iter().flat_map(|p| parse_wake(p)).collect();
        assert_eq!(parsed, woken);
    }
}
