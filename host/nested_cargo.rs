//! Building a cargo workspace to WebAssembly components from a build script:
//! a nested `cargo build --release --target wasm32-wasip2` with a target
//! directory of its own, so it never waits on a lock the outer build holds.
//! Settings of the outer build (its target, rustflags, profile overrides,
//! wrappers, the package facts cargo hands a build script) describe the host
//! build, not the components, and are kept away from the nested one.
//!
//! `host/build.rs` (the built-in plugins) and `tests/build.rs` (the test
//! plugins and the examples) both include this file with
//! `#[path = …] mod nested_cargo;`. One included file rather than a
//! build-dependency crate: it is a few functions over the standard library,
//! and a crate would add a workspace member, a lock-file entry and a compile
//! step to every build for no gain.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The target the components are compiled for.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// Environment variables the outer cargo sets (or the user set for the outer
/// build) that must not reach the nested cargo.
const ENV_VARS_NOT_PASSED_ON: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    // `cargo clippy` runs clippy-driver through this; the components are
    // linted on their own.
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_CRATE_NAME",
    "CARGO_TARGET_TMPDIR",
    "OUT_DIR",
    "TARGET",
    "HOST",
    "OPT_LEVEL",
    "PROFILE",
    "DEBUG",
    "NUM_JOBS",
    "RUSTC_LINKER",
];

/// Prefixes of the same: `build.*` and `profile.*` config, per-target
/// settings (`CARGO_TARGET_<TRIPLE>_RUSTFLAGS`, `CARGO_TARGET_DIR`), and the
/// package facts cargo hands a build script.
const ENV_PREFIXES_NOT_PASSED_ON: &[&str] = &[
    "CARGO_BUILD_",
    "CARGO_PROFILE_",
    "CARGO_TARGET_",
    "CARGO_CFG_",
    "CARGO_FEATURE_",
    "CARGO_PKG_",
    "DEP_",
];

/// The workspace root: the parent of the crate whose build script runs.
pub fn workspace_root() -> PathBuf {
    let crate_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    crate_dir
        .parent()
        .unwrap_or_else(|| {
            panic!(
                "the crate at {} does not sit inside a workspace root",
                crate_dir.display()
            )
        })
        .to_path_buf()
}

/// The build script's `OUT_DIR`.
pub fn out_dir() -> PathBuf {
    PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
}

/// Where cargo leaves the release component of `crate_name`.
pub fn component_path(target_dir: &Path, crate_name: &str) -> PathBuf {
    target_dir
        .join(WASM_TARGET)
        .join("release")
        .join(format!("{}.wasm", crate_name.replace('-', "_")))
}

/// Makes sure the toolchain can compile for [`WASM_TARGET`], adding the
/// target with rustup when it is missing; `what` names what needs it.
pub fn ensure_target_installed(what: &str) {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    let sysroot_output = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run {} to find its sysroot: {error}",
                rustc.to_string_lossy()
            )
        });
    if !sysroot_output.status.success() {
        panic!(
            "`{} --print sysroot` failed ({})",
            rustc.to_string_lossy(),
            sysroot_output.status
        );
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot_output.stdout).trim());
    if sysroot
        .join("lib")
        .join("rustlib")
        .join(WASM_TARGET)
        .is_dir()
    {
        return;
    }

    eprintln!(
        "the {WASM_TARGET} target is missing from {}; running `rustup target add {WASM_TARGET}`",
        sysroot.display()
    );
    let added = Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .stdout(Stdio::from(io::stderr()))
        .status();
    match added {
        Ok(status) if status.success() => {}
        Ok(status) => panic!(
            "{what} need the {WASM_TARGET} target, and `rustup target add {WASM_TARGET}` failed ({status}); \
             run it yourself (or install the target for the toolchain at {}) and build again",
            sysroot.display()
        ),
        Err(error) => panic!(
            "{what} need the {WASM_TARGET} target, which the toolchain at {} lacks, and rustup \
             could not be run ({error}); run `rustup target add {WASM_TARGET}` (or install the target another way) \
             and build again",
            sysroot.display()
        ),
    }
}

/// Runs the nested `cargo build` of the workspace at `manifest` into
/// `target_dir` (`--locked` when it has a lock file); `what` names what it
/// builds. Its output goes to this script's stderr, which cargo shows when
/// the build fails.
pub fn build_workspace(manifest: &Path, target_dir: &Path, what: &str) {
    if !manifest.is_file() {
        panic!("cannot build {what}: {} does not exist", manifest.display());
    }
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut command = Command::new(&cargo);
    command
        .args(["build", "--release", "--target", WASM_TARGET])
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir);
    if manifest.with_file_name("Cargo.lock").is_file() {
        command.arg("--locked");
    }
    for (name, _) in env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if ENV_VARS_NOT_PASSED_ON.contains(&name)
            || ENV_PREFIXES_NOT_PASSED_ON
                .iter()
                .any(|prefix| name.starts_with(prefix))
        {
            command.env_remove(name);
        }
    }
    // Anything the nested cargo prints on stdout would be read as build
    // script instructions; send it to stderr with the rest.
    command
        .stdout(Stdio::from(io::stderr()))
        .stderr(Stdio::inherit());

    let arguments: Vec<_> = command
        .get_args()
        .map(|argument| argument.to_string_lossy())
        .collect();
    eprintln!(
        "building {what}: {} {}",
        cargo.to_string_lossy(),
        arguments.join(" ")
    );
    let status = command.status().unwrap_or_else(|error| {
        panic!(
            "cannot run {} to build {what}: {error}",
            cargo.to_string_lossy()
        )
    });
    if !status.success() {
        panic!(
            "building {what} in {} failed ({status}); the nested cargo's errors are above. \
             To see them directly, run: cargo build --release --target {WASM_TARGET} --manifest-path {}",
            manifest.parent().unwrap_or(manifest).display(),
            manifest.display()
        );
    }
}

/// Writes `contents` to `path` unless it already holds exactly that, so an
/// unchanged output does not make cargo recompile what includes it.
pub fn write_if_changed(path: &Path, contents: &[u8]) {
    if fs::read(path).is_ok_and(|existing| existing == contents) {
        return;
    }
    fs::write(path, contents)
        .unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
}
