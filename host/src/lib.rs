//! The realm host as a library: the server's pieces (used by the
//! `realm-host` binary) and [`testing::GuestHarness`], which runs a guest
//! component against an in-memory store so guest authors can unit-test it.

pub mod auth;
pub mod db;
pub mod guests;
pub mod http;
pub mod listener;
pub mod lock_key;
pub mod memory;
pub mod realm_cache;
pub mod realm_url;
pub mod registry;
pub mod runtime;
pub mod selftest;
pub mod testing;
pub mod write_lock;
