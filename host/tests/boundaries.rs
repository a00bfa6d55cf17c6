//! The module boundaries ARCHITECTURE.md promises, checked on the source of
//! `host/src`: which module may name which crate or module. A change that
//! crosses one fails here, naming the file and the line.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `host/src`, as (path relative to it, text).
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                found.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    assert!(files.len() > 20, "host/src has its modules");
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let relative = path.strip_prefix(&root).expect("under src");
            (relative.to_string_lossy().replace('\\', "/"), text)
        })
        .collect()
}

/// The code lines (not comments) of `text` that contain `needle`, as
/// "file:line: text".
fn uses(file: &str, text: &str, needle: &str) -> Vec<String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let code = line.trim_start();
            !code.starts_with("//") && code.contains(needle)
        })
        .map(|(number, line)| format!("{file}:{}: {}", number + 1, line.trim()))
        .collect()
}

/// Asserts that only files `allowed` says yes to name `needle`.
fn only_in(needle: &str, allowed: impl Fn(&str) -> bool, rule: &str) {
    let offending: Vec<String> = sources()
        .iter()
        .filter(|(file, _)| !allowed(file))
        .flat_map(|(file, text)| uses(file, text, needle))
        .collect();
    assert!(offending.is_empty(), "{rule}:\n{}", offending.join("\n"));
}

#[test]
fn only_the_store_knows_redb() {
    only_in(
        "redb::",
        |file| file.starts_with("store/"),
        "only store names redb",
    );
    only_in(
        "use redb",
        |file| file.starts_with("store/"),
        "only store names redb",
    );
}

#[test]
fn the_stores_raw_writes_stay_inside_it() {
    let offending: Vec<String> = sources()
        .iter()
        .flat_map(|(file, text)| {
            let mut found = uses(file, text, "pub async fn write<");
            found.extend(uses(file, text, "pub fn write_blocking<"));
            found.extend(
                uses(file, text, "WriteTransaction")
                    .into_iter()
                    .filter(|_| !file.starts_with("store/")),
            );
            found
        })
        .collect();
    assert!(
        offending.is_empty(),
        "callers go through the store's named operations, never a write transaction:\n{}",
        offending.join("\n")
    );
}

#[test]
fn ingest_does_not_reach_into_the_admin_api() {
    only_in(
        "crate::api",
        |file| file != "ingest.rs",
        "ingest shares endpoint with api, it does not call api",
    );
}

#[test]
fn the_plugin_host_never_sees_the_store() {
    only_in(
        "crate::store",
        |file| file != "plugins.rs",
        "plugins gets plain events, never the store",
    );
}

#[test]
fn only_email_speaks_smtp() {
    only_in(
        "lettre",
        |file| file == "email.rs",
        "only email speaks SMTP",
    );
}
