//! The per-realm write lock and the transaction it guards.
//!
//! Taking a realm's lock: first wait in an in-process queue for that realm
//! (so waiters never hold pooled connections), then open a transaction that
//! holds the database-level lock: `BEGIN IMMEDIATE` on SQLite,
//! `pg_advisory_xact_lock(key)` as its own statement on Postgres. Every read
//! and write of the critical section runs on that transaction; `commit`
//! makes them durable at once, and anything else rolls them back.

// Lowest first; each file uses only the ones above it.
// Why a write-path operation failed.
mod error;
// The Postgres advisory-lock key of a realm URL.
mod key;
// Coalescing: a realm's turn, and the open transaction its writers hand along.
mod batch;
// The realm event a write request appends (the outbox), and its NOTIFY.
mod outbox;
// A held lock (`WriteTxn`): read, exists, write, delete, commit, rollback.
mod txn;
// `Locks`: the per-realm queues, and taking the database lock.
mod queue;

pub use batch::{BatchStats, Coalescing};
pub use error::WriteError;
pub use outbox::EVENTS_CHANNEL;
pub use queue::Locks;
pub use txn::{IndexRow, Limits, WriteTxn, Written};
