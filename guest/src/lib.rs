//! Card logic of a realm: PATCH merge, card serialisation, `/_atomic`
//! validation and the request handlers built on them. Plain Rust with no
//! I/O; `component` adapts it to the WIT world when built for wasm32.

pub mod arena;
pub mod atomic;
pub mod error;
#[cfg(feature = "fault-injection")]
pub mod faults;
pub mod handlers;
pub mod memory;
pub mod merge;
pub mod paths;
pub mod print;
pub mod serialize;
pub mod store;
pub mod tree;

#[cfg(target_arch = "wasm32")]
mod component;

/// Each call runs on a fresh instance whose memory is thrown away after it.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: arena::global::BumpArena = arena::global::BumpArena::new();
