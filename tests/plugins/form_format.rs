// What the misbehaving payload formats of this workspace share: each one's
// `src/lib.rs` includes this file and calls [`form_format!`] with the WIT it
// is built against, its description and its own `build_form` function.

/// Generates the bindings for the `payload-format` world of the WIT at `wit`
/// (a path from the plugin's crate) and exports a format for forms only whose
/// `info` says `description` and whose `build` is the plugin's
/// `fn build_form(event: Event, settings: Vec<Pair>) -> Result<Payload, String>`.
///
/// Also defines `setting` and `send`, which the plugins use to read a
/// repeater setting and to answer with a body.
macro_rules! form_format {
    (wit: $wit:literal, description: $description:literal $(,)?) => {
        wit_bindgen::generate!({ world: "payload-format", path: $wit });

        use exports::repeatd::plugin::format::Guest;
        use repeatd::plugin::types::{Event, FormatInfo, Pair, Payload, PayloadKind, Request};

        struct Plugin;

        impl Guest for Plugin {
            fn info() -> FormatInfo {
                FormatInfo {
                    description: $description.to_string(),
                    kinds: vec![PayloadKind::Form],
                }
            }

            fn build(
                _kind: PayloadKind,
                event: Event,
                settings: Vec<Pair>,
            ) -> Result<Payload, String> {
                build_form(event, settings)
            }
        }

        export!(Plugin);

        /// The repeater setting `name`, parsed, if the repeater has one.
        #[allow(dead_code)]
        fn setting<T>(settings: &[Pair], name: &str) -> Result<Option<T>, String>
        where
            T: std::str::FromStr,
            T::Err: std::fmt::Display,
        {
            settings
                .iter()
                .find(|pair| pair.name == name)
                .map(|pair| {
                    pair.value
                        .parse::<T>()
                        .map_err(|error| format!("{name}: {error}"))
                })
                .transpose()
        }

        /// Sends `body` as `content_type`, with no headers and no query.
        #[allow(dead_code)]
        fn send(body: Vec<u8>, content_type: &str) -> Payload {
            Payload::Send(Request {
                body,
                content_type: content_type.to_string(),
                headers: Vec::new(),
                query: Vec::new(),
            })
        }
    };
}
