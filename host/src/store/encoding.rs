//! How values are written into the store's tables: one version byte, then
//! JSON. A value whose version byte this build does not know is reported as
//! corrupt, naming what it was, rather than misread.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StoreError;

/// The first byte of every encoded value.
const ENCODING_VERSION: u8 = 1;

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = vec![ENCODING_VERSION];
    serde_json::to_writer(&mut bytes, value).expect("store values serialize");
    bytes
}

/// Decodes a value; `what` names it ("record 7") for the error.
pub(super) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T, StoreError> {
    let problem = match bytes.split_first() {
        Some((&ENCODING_VERSION, json)) => match serde_json::from_slice(json) {
            Ok(value) => return Ok(value),
            Err(error) => error.to_string(),
        },
        Some((version, _)) => format!("unknown encoding version {version}"),
        None => "empty value".into(),
    };
    Err(StoreError::Corrupt {
        what: what(),
        problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_reads_back_as_written() {
        let bytes = encode(&vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(bytes[0], ENCODING_VERSION);
        let back: Vec<String> = decode(&bytes, || "list".into()).unwrap();
        assert_eq!(back, ["a", "b"]);
    }

    #[test]
    fn unreadable_values_name_what_they_were() {
        let unknown = decode::<u32>(&[9, b'1'], || "record 7".into()).unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "store: record 7 is not readable: unknown encoding version 9"
        );
        let empty = decode::<u32>(&[], || "case c1".into()).unwrap_err();
        assert_eq!(
            empty.to_string(),
            "store: case c1 is not readable: empty value"
        );
        let garbled = decode::<u32>(&[ENCODING_VERSION, b'x'], || "form f1".into()).unwrap_err();
        assert!(
            garbled
                .to_string()
                .starts_with("store: form f1 is not readable: "),
            "{garbled}"
        );
    }
}
