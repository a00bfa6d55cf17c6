#!/usr/bin/env bash
# Runs every test of the project: the built-in and example plugins' unit
# tests, then the gateway's unit, integration and end-to-end tests (real HTTP
# receivers, a real SMTP server, real redb files and real .wasm components,
# all on loopback).
set -euo pipefail
cd "$(dirname "$0")"

.ci/setup-test-deps

# A throwaway PostgreSQL cluster on a free loopback port for the PostgreSQL
# backend's tests; each test makes its own database in it. Stopped and
# removed when the tests end, however they end.
pg_dir="$(mktemp -d -t repeatd-pg.XXXXXX)"
pg_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
trap '.ci/postgres stop "$pg_dir" || true; rm -rf "$pg_dir" "$pg_dir.initdb.log"' EXIT
REPEATD_TEST_PG_URL="$(.ci/postgres start "$pg_dir" "$pg_port")"
export REPEATD_TEST_PG_URL

cargo test --manifest-path plugins/Cargo.toml
cargo test --manifest-path examples/payload-plugin/Cargo.toml
cargo test --manifest-path examples/auth-plugin/Cargo.toml

# The gateway's tests run in the release profile: its dependencies (wasmtime,
# Cranelift) are then compiled once for the tests, for the binary a user runs
# and for CI's acceptance check (`cargo build --release`), instead of once per
# profile; a cold build of them takes most of CI's time on a small machine.
# The crash and CLI tests run the real binary; `cargo test` builds only the
# test targets, so build it first (it shares every artifact with the tests).
cargo build --release -p repeatd --bin repeatd

# Every test, then the suites that exercise the store most again on the PostgreSQL
# backend: with REPEATD_TEST_STORE=postgres every test gateway without a
# [store] table of its own gets a fresh database (tests/src/pg.rs). Both runs
# go to the end; the script fails if either failed. `--workspace` in both, so
# that features unify as in the first run and nothing is compiled again.
postgres_suites=(--test ingest --test delivery --test connections --test tenancy --test plugins)
status=0
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --release --workspace --no-fail-fast || status=$?
    REPEATD_TEST_STORE=postgres \
        cargo nextest run --release --workspace --no-fail-fast "${postgres_suites[@]}" || status=$?
else
    cargo test --release --workspace --no-fail-fast || status=$?
    REPEATD_TEST_STORE=postgres \
        cargo test --release --workspace --no-fail-fast "${postgres_suites[@]}" || status=$?
fi
exit "$status"
