//! Black-box integration tests of `realm-host`: every test starts real
//! server processes (see [`harness`]) and checks the contract of
//! `shared/spec/realm-api.md` over HTTP and the command line.
//!
//! Build the server first: `cargo build -p realm-host && cargo test -p realm-tests`
//! (or set `REALM_HOST_BIN`).

mod harness;

mod atomic;
mod auth;
mod cli;
mod concurrency;
mod merge;
mod routes;
