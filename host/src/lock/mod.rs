//! The per-realm write lock and the transaction it guards.
//!
//! Taking a realm's lock: first wait in an in-process queue for that realm
//! (so waiters never hold pooled connections), then join the commit group
//! that holds the realm's database lock, or add the realm to one, or open
//! one: a transaction holding `BEGIN IMMEDIATE` on SQLite,
//! `pg_advisory_xact_lock(key)` as its own statement on Postgres.
//!
//! Write-behind: the writers of a realm run one after another against the
//! batch overlay (their reads served from memory where the batch has seen
//! the path, their writes buffered); a writer that fails leaves nothing
//! behind. When the group's last writer is done, one flush writes every
//! realm's batch (one multi-row statement per table, on Postgres one
//! statement in all) and one COMMIT makes it durable; only then is any
//! writer answered. The files a batch saw stay known to the replica
//! (`known`), valid while the realm's event seq has not moved, so the next
//! batch of that realm need not read them again.

// Lowest first; each file uses only the ones above it.
// Why a write-path operation failed.
mod error;
// The realm event a write request appends (the outbox).
mod outbox;
// The batch overlay: what a batch knows and wrote, and what its flush writes.
mod overlay;
// What the replica knows of realms' files between batches, by event seq.
mod known;
// Every statement of the write path, per backend (open, read, flush).
mod sql;
// A commit group: one transaction, the batches of its realms, one commit.
mod group;
// A held lock (`WriteTxn`): read, exists, write, delete, commit, rollback.
mod txn;
// `Locks`: the per-realm queues, and which group holds each realm.
mod queue;

pub use group::{BatchStats, Coalescing};
pub use error::WriteError;
pub use outbox::EVENTS_CHANNEL;
pub use queue::Locks;
pub use sql::prepare;
pub use txn::{IndexRow, Limits, WriteTxn, Written};
