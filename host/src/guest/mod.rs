//! The guest: the card logic, a WebAssembly component of the `realm-core`
//! world (`wit/realm.wit`), and everything the host does to run it, check
//! it and replace it while serving.

// Lowest first; each file uses only the ones above it.
// Deployed guests (content-addressed) and the activation log.
pub mod registry;
// The guest's CPU clock: host time is not charged.
mod clock;
// Compiled guests on disk, so a start need not run cranelift again.
mod compile_cache;
// The world's exports, found once per compiled guest; a call checks only its own.
mod exports;
// wasmtime: the engine and its instance pool, a fresh `Store` per call, the `store` imports.
pub mod runtime;
// The self-test every guest must pass before activation.
pub mod selftest;
// The running guest (swapped atomically), validation, registry and file watchers.
pub mod swap;
