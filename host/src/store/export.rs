//! A copy of the whole redb store for `repeatd migrate`: one read
//! transaction (so the copy is one consistent point in time), walked table
//! by table on a thread of its own and handed out in batches through a
//! channel a couple of batches deep, so that memory holds a few batches
//! however large the store is.
//!
//! Values are handed out as stored: the PostgreSQL schema keeps redb's
//! encodings (`postgres::schema`), and sealed secrets in objects stay
//! sealed. Beside each value come the columns the schema derives from it,
//! decoded here so that the import never needs redb's layouts.
//!
//! The batches come in the order an import writes them: the counters first,
//! then objects, notification states, forms, cases, records and, last, the
//! attempts (which name their record).

use redb::{ReadTransaction, ReadableTable};
use tokio::sync::mpsc;

use super::data_index::order_key;
use super::encoding::{decode_case, decode_form, decode_record};
use super::tables::*;
use super::{RedbStore, StoreError};
use crate::record::RecordState;

/// Rows in one batch at most.
const BATCH_ROWS: usize = 1_000;
/// Bytes of values in one batch at most (a single larger value makes a
/// batch of its own).
const BATCH_BYTES: usize = 8 << 20;
/// Batches read ahead of the import.
const BATCHES_AHEAD: usize = 2;

/// What makes ids and orders continue where the store left them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportCounters {
    /// The store's nonce: the first half of every public record id.
    pub nonce: u64,
    /// The largest seq a record has (0: none).
    pub last_seq: u64,
    /// The last repeater id handed out (0: none).
    pub last_repeater_id: u64,
    /// Per domain that has stored a form or case, the last `indexed_on`
    /// handed out in it.
    pub last_indexed_on: Vec<(String, u64)>,
}

/// A form: its value (`encoding::encode_form`) and the columns derived from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedForm {
    pub domain: String,
    pub form_id: String,
    pub indexed_on: u64,
    /// The `received_on` order key (Unix micros; `indexed_on` when unparsable).
    pub received_key: u64,
    pub xmlns: String,
    pub app_id: Option<String>,
    /// How long the XML is as submitted.
    pub xml_bytes: u64,
    pub value: Vec<u8>,
}

/// A case: its value (`encoding::encode_case`) and the columns derived from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedCase {
    pub domain: String,
    pub case_id: String,
    pub indexed_on: u64,
    pub case_type: String,
    /// The `server_date_modified` order key.
    pub modified_key: u64,
    pub value: Vec<u8>,
}

/// A repeat record: its value (`encoding::encode_record`) and the columns
/// derived from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedRecord {
    pub seq: u64,
    pub domain: String,
    pub repeater: String,
    pub repeater_id: u64,
    pub payload_id: String,
    pub state: RecordState,
    /// When the record is next due, while it is queued.
    pub due: Option<i64>,
    /// Since when (Unix micros) the record has been in its final state.
    pub final_since: Option<u64>,
    pub value: Vec<u8>,
}

/// An attempt (`encoding::encode`) under its record's seq and its number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedAttempt {
    pub seq: u64,
    pub number: u32,
    pub value: Vec<u8>,
}

/// A configured object, its bytes as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedObject {
    pub kind: String,
    pub domain: String,
    pub name: String,
    pub value: Vec<u8>,
}

/// A connection's notification state (`encoding::encode_json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedNotification {
    pub domain: String,
    pub connection: String,
    pub value: Vec<u8>,
}

/// One batch of the copy.
#[derive(Debug)]
pub enum ExportBatch {
    Counters(ExportCounters),
    Objects(Vec<ExportedObject>),
    Notifications(Vec<ExportedNotification>),
    Forms(Vec<ExportedForm>),
    Cases(Vec<ExportedCase>),
    Records(Vec<ExportedRecord>),
    Attempts(Vec<ExportedAttempt>),
}

/// What the reading thread sends: a batch, the end, or why it stopped.
enum Message {
    Batch(ExportBatch),
    End,
}

type Sender = mpsc::Sender<Result<Message, StoreError>>;

/// The store's whole content, batch by batch ([`RedbStore::export`]).
pub struct Export {
    batches: mpsc::Receiver<Result<Message, StoreError>>,
    ended: bool,
}

impl RedbStore {
    /// Starts copying the whole store out, as of now: the batches are read
    /// on a thread of their own, a few ahead of the caller. Writes made
    /// after this call are not in the copy.
    pub fn export(&self) -> Result<Export, StoreError> {
        let txn = self.db.begin_read()?;
        let (sender, batches) = mpsc::channel(BATCHES_AHEAD);
        std::thread::Builder::new()
            .name("repeatd-export".into())
            .spawn(move || {
                let result = walk(&txn, &sender).and_then(|()| send(&sender, Message::End));
                if let Err(error) = result {
                    // Nobody to tell when the import stopped reading.
                    let _ = sender.blocking_send(Err(error));
                }
            })
            .map_err(|e| StoreError::Storage(format!("starting the export thread: {e}")))?;
        Ok(Export {
            batches,
            ended: false,
        })
    }
}

impl Export {
    /// The next batch; `None` once every table has been handed out.
    pub async fn next(&mut self) -> Result<Option<ExportBatch>, StoreError> {
        if self.ended {
            return Ok(None);
        }
        match self.batches.recv().await {
            Some(Ok(Message::Batch(batch))) => Ok(Some(batch)),
            Some(Ok(Message::End)) => {
                self.ended = true;
                Ok(None)
            }
            Some(Err(error)) => Err(error),
            None => Err(StoreError::Storage(
                "the export stopped before its end".into(),
            )),
        }
    }
}

fn send(sender: &Sender, message: Message) -> Result<(), StoreError> {
    sender
        .blocking_send(Ok(message))
        .map_err(|_| StoreError::Storage("the export's reader went away".into()))
}

/// Groups rows into batches of at most `BATCH_ROWS` rows and `BATCH_BYTES`
/// bytes of values, and sends each as it fills.
struct Batcher<'s, T> {
    sender: &'s Sender,
    wrap: fn(Vec<T>) -> ExportBatch,
    rows: Vec<T>,
    bytes: usize,
}

impl<'s, T> Batcher<'s, T> {
    fn new(sender: &'s Sender, wrap: fn(Vec<T>) -> ExportBatch) -> Self {
        Batcher {
            sender,
            wrap,
            rows: Vec::new(),
            bytes: 0,
        }
    }

    fn push(&mut self, row: T, value_bytes: usize) -> Result<(), StoreError> {
        if !self.rows.is_empty() && self.bytes + value_bytes > BATCH_BYTES {
            self.flush()?;
        }
        self.rows.push(row);
        self.bytes += value_bytes;
        if self.rows.len() >= BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        self.bytes = 0;
        let rows = std::mem::take(&mut self.rows);
        send(self.sender, Message::Batch((self.wrap)(rows)))
    }
}

/// Reads every table the copy needs, in the order the batches go out.
fn walk(txn: &ReadTransaction, sender: &Sender) -> Result<(), StoreError> {
    send(
        sender,
        Message::Batch(ExportBatch::Counters(counters(txn)?)),
    )?;

    let mut objects = Batcher::new(sender, ExportBatch::Objects);
    for entry in txn.open_table(OBJECTS)?.iter()? {
        let (key, value) = entry?;
        let (kind, domain, name) = key.value();
        let value = value.value().to_vec();
        let size = value.len();
        let object = ExportedObject {
            kind: kind.to_owned(),
            domain: domain.to_owned(),
            name: name.to_owned(),
            value,
        };
        objects.push(object, size)?;
    }
    objects.flush()?;

    let mut notifications = Batcher::new(sender, ExportBatch::Notifications);
    for entry in txn.open_table(NOTIFICATIONS)?.iter()? {
        let (key, value) = entry?;
        let (domain, connection) = key.value();
        let value = value.value().to_vec();
        let size = value.len();
        let notification = ExportedNotification {
            domain: domain.to_owned(),
            connection: connection.to_owned(),
            value,
        };
        notifications.push(notification, size)?;
    }
    notifications.flush()?;

    let mut forms = Batcher::new(sender, ExportBatch::Forms);
    for entry in txn.open_table(FORMS)?.iter()? {
        let (key, value) = entry?;
        let (domain, form_id) = key.value();
        let value = value.value();
        let decoded = decode_form(domain, form_id, value)?;
        let form = ExportedForm {
            domain: domain.to_owned(),
            form_id: form_id.to_owned(),
            indexed_on: decoded.indexed_on,
            received_key: order_key(&decoded.form.received_on, decoded.indexed_on),
            xml_bytes: decoded.xml_len()?,
            xmlns: decoded.form.xmlns,
            app_id: decoded.form.app_id,
            value: value.to_vec(),
        };
        forms.push(form, value.len())?;
    }
    forms.flush()?;

    let mut cases = Batcher::new(sender, ExportBatch::Cases);
    for entry in txn.open_table(CASES)?.iter()? {
        let (key, value) = entry?;
        let (domain, case_id) = key.value();
        let value = value.value();
        let (case, indexed_on) = decode_case(value, case_id)?;
        let case = ExportedCase {
            domain: domain.to_owned(),
            case_id: case_id.to_owned(),
            indexed_on,
            modified_key: order_key(&case.server_date_modified, indexed_on),
            case_type: case.case_type,
            value: value.to_vec(),
        };
        cases.push(case, value.len())?;
    }
    cases.flush()?;

    let final_since = txn.open_table(FINAL_SINCE)?;
    let mut records = Batcher::new(sender, ExportBatch::Records);
    for entry in txn.open_table(RECORDS)?.iter()? {
        let (key, value) = entry?;
        let seq = key.value();
        let value = value.value();
        let record = decode_record(seq, value)?;
        let queued = record.state.is_queued();
        let record = ExportedRecord {
            seq,
            payload_id: record.payload.payload_id().to_owned(),
            state: record.state,
            due: record.next_attempt_at.filter(|_| queued),
            final_since: match queued {
                true => None,
                false => final_since.get(seq)?.map(|since| since.value()),
            },
            domain: record.domain,
            repeater: record.repeater,
            repeater_id: record.repeater_id,
            value: value.to_vec(),
        };
        records.push(record, value.len())?;
    }
    records.flush()?;

    let mut attempts = Batcher::new(sender, ExportBatch::Attempts);
    for entry in txn.open_table(ATTEMPTS)?.iter()? {
        let (key, value) = entry?;
        let (seq, number) = key.value();
        let value = value.value().to_vec();
        let size = value.len();
        attempts.push(ExportedAttempt { seq, number, value }, size)?;
    }
    attempts.flush()
}

fn counters(txn: &ReadTransaction) -> Result<ExportCounters, StoreError> {
    let meta = txn.open_table(META)?;
    let nonce = meta
        .get("nonce")?
        .map(|nonce| nonce.value())
        .ok_or_else(|| StoreError::Corrupt {
            what: "the store's meta table".into(),
            problem: "it has no nonce".into(),
        })?;
    // `next_repeater_id` is the id the next repeater gets.
    let last_repeater_id = meta
        .get("next_repeater_id")?
        .map_or(0, |next| next.value().saturating_sub(1));
    let last_seq = txn
        .open_table(RECORDS)?
        .last()?
        .map_or(0, |(seq, _)| seq.value());
    let mut last_indexed_on = Vec::new();
    for entry in txn.open_table(LAST_INDEXED_ON)?.iter()? {
        let (domain, last) = entry?;
        last_indexed_on.push((domain.value().to_owned(), last.value()));
    }
    Ok(ExportCounters {
        nonce,
        last_seq,
        last_repeater_id,
        last_indexed_on,
    })
}
