//! Black-box integration tests of `realm-host`: every test starts real
//! server processes (see [`harness`]) and checks the contract of
//! `shared/spec/realm-api.md` over HTTP and the command line.
//!
//! Build the server first: `cargo build -p realm-host && cargo test -p realm-tests`
//! (or set `REALM_HOST_BIN`).
//!
//! Postgres tests (`cargo test -p realm-tests -- postgres`) run on a
//! throw-away cluster this binary starts and stops itself (see [`pg`]), or
//! on the server of `DATABASE_URL` when it is set.

#[macro_use]
mod harness;
#[macro_use]
mod pg;

mod atomic;
mod auth;
mod batch;
mod cli;
mod client_surface;
mod concurrency;
mod events;
mod guests;
mod hardening;
mod lock_holder;
mod merge;
mod postgres;
mod routes;
mod search;
mod shutdown;
