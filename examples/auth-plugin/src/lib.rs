//! `standard-webhooks`: an example auth plugin for repeatd that signs every
//! outgoing request as the Standard Webhooks specification says
//! (<https://www.standardwebhooks.com>), so a receiver can check that a
//! payload came from the gateway and was not changed or replayed.
//!
//! Each request gets three headers:
//! - `webhook-id`: the repeat record's id (the same as `Idempotency-Key`, and
//!   the same on every attempt, so a receiver can drop duplicates);
//! - `webhook-timestamp`: the time of the attempt, in seconds since the Unix
//!   epoch;
//! - `webhook-signature`: `v1,` and the base64 HMAC-SHA256 of
//!   `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the secret.
//!
//! Connection settings (`auth = { type = "plugin", plugin = "standard-webhooks",
//! secret = "whsec_…" }`): `secret` is the signing key, base64 with an optional
//! `whsec_` prefix, as Standard Webhooks libraries print it.

// Generates the Rust side of the `outbound-auth` world: the types of
// `repeatd:plugin/types` and the `Guest` trait to implement.
wit_bindgen::generate!({ world: "outbound-auth", path: "../../wit" });

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use exports::repeatd::plugin::auth::Guest;
use hmac::{Hmac, Mac};
use repeatd::plugin::types::{Outgoing, Pair};
use sha2::Sha256;

/// The prefix Standard Webhooks puts in front of a base64 secret.
const SECRET_PREFIX: &str = "whsec_";

struct StandardWebhooks;

impl Guest for StandardWebhooks {
    fn describe() -> String {
        "Standard Webhooks signatures (webhook-id, webhook-timestamp, webhook-signature: HMAC-SHA256)"
            .to_string()
    }

    fn sign(request: Outgoing, settings: Vec<Pair>) -> Result<Vec<Pair>, String> {
        let key = signing_key(&settings)?;
        let timestamp = request.unix_time.to_string();
        let signature = signature(&key, &request.record_id, &timestamp, &request.body);
        Ok(vec![
            header("webhook-id", request.record_id),
            header("webhook-timestamp", timestamp),
            header("webhook-signature", format!("v1,{signature}")),
        ])
    }
}

export!(StandardWebhooks);

fn header(name: &str, value: String) -> Pair {
    Pair {
        name: name.to_string(),
        value,
    }
}

/// Decodes the `secret` setting. The error never repeats the secret.
fn signing_key(settings: &[Pair]) -> Result<Vec<u8>, String> {
    let secret = settings
        .iter()
        .find(|pair| pair.name == "secret")
        .map(|pair| pair.value.trim())
        .ok_or("the connection's auth has no \"secret\" setting")?;
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    let key = BASE64.decode(encoded).map_err(|_| {
        "setting \"secret\" is not base64 (want whsec_ followed by base64)".to_string()
    })?;
    if key.is_empty() {
        return Err("setting \"secret\" is empty".to_string());
    }
    Ok(key)
}

/// The base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`.
fn signature(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    BASE64.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing(body: &str) -> Outgoing {
        Outgoing {
            method: "POST".to_string(),
            url: "https://example.org/hook".to_string(),
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
            record_id: "msg_p5jXN8AQM9LWM0D4loKWxJek".to_string(),
            unix_time: 1614265330,
        }
    }

    fn secret(value: &str) -> Vec<Pair> {
        vec![Pair {
            name: "secret".to_string(),
            value: value.to_string(),
        }]
    }

    /// The example of the Standard Webhooks specification.
    #[test]
    fn signs_the_specification_example() {
        let headers = StandardWebhooks::sign(
            outgoing(r#"{"test": 2432232314}"#),
            secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        )
        .unwrap();
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|pair| (pair.name.as_str(), pair.value.as_str()))
            .collect();
        assert_eq!(
            headers,
            [
                ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
                ("webhook-timestamp", "1614265330"),
                (
                    "webhook-signature",
                    "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
                ),
            ]
        );
    }

    #[test]
    fn a_missing_or_bad_secret_is_an_error_that_does_not_repeat_it() {
        let error = StandardWebhooks::sign(outgoing("{}"), Vec::new()).unwrap_err();
        assert_eq!(error, "the connection's auth has no \"secret\" setting");
        let error =
            StandardWebhooks::sign(outgoing("{}"), secret("whsec_not base64!")).unwrap_err();
        assert!(!error.contains("not base64!"), "{error}");
    }
}
