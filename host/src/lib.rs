//! The realm host as a library: the server's pieces (used by the
//! `realm-host` binary) and [`testing::GuestHarness`], which runs a guest
//! component against an in-memory store so guest authors can unit-test it.
//!
//! The modules are the host's seams, lowest first: each one uses only the
//! ones listed before it.
//!
//! | module | job |
//! |---|---|
//! | [`store`] | storage: SQLite, Postgres or memory; migrations, realm admin, lock-free reads |
//! | [`realm`] | realm URLs and local paths; the replica's in-memory realm list and permissions |
//! | [`search`] | `_search`: the query language, the card-field index, running a query |
//! | [`auth`] | JWTs and the permission rule |
//! | [`lock`] | the per-realm write lock: queues, coalesced batches, transactional writes |
//! | [`events`] | realm events: per-realm feeds of the outbox, woken by commits, NOTIFY and a poll |
//! | [`guest`] | the WebAssembly guest: runtime, registry, self-test, the running guest |
//! | [`http`] | the data plane: routing, responses and errors, bodies, admin endpoints, the accept loop |
//! | [`testing`] | `GuestHarness`, for guest authors |

pub mod store;
pub mod realm;
pub mod search;
pub mod auth;
pub mod lock;
pub mod events;
pub mod guest;
pub mod http;
pub mod testing;
