//! Deliberate misbehaviour for the host's sandbox tests, compiled only with
//! the `fault-injection` feature (never into the built-in guest). A GET of
//! a card under `_fault/` triggers it.

use crate::error::Result;
use crate::store::{Store, WriteLock};

/// Misbehaves when `path` asks for it; otherwise answers `None`.
pub fn inject<S: Store>(store: &S, realm: &str, path: &str) -> Option<Result<()>> {
    match path {
        "_fault/loop" => loop {
            std::hint::black_box(());
        },
        "_fault/bomb" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "_fault/trap" => panic!("deliberate trap"),
        "_fault/trap-in-lock" => {
            if let Err(e) = lock_with_a_pending_write(store, realm, "half-written.txt") {
                return Some(Err(e));
            }
            panic!("deliberate trap while holding the write lock");
        }
        "_fault/loop-in-lock" => {
            // Holds the realm's turn, a write of its own pending, for as
            // long as the host lets it run: the batch stalls in the middle.
            let mut lock = match lock_with_a_pending_write(store, realm, "looped.txt") {
                Ok(lock) => lock,
                Err(e) => return Some(Err(e)),
            };
            loop {
                std::hint::black_box(&mut lock);
            }
        }
        "_fault/lock-other-realm" => {
            // The host must refuse a lock on any realm but the request's.
            // A sibling realm: the tests' servers have `…/pubread/` beside `…/test/`.
            let parent = realm.trim_end_matches('/').rsplit_once('/').map(|(p, _)| p).unwrap_or(realm);
            let other = format!("{parent}/pubread/");
            match store.with_write_lock(&other) {
                Ok(mut lock) => {
                    if let Err(e) = lock.write("stolen.txt", "written in another realm", None) {
                        return Some(Err(e));
                    }
                    Some(lock.commit())
                }
                Err(e) => Some(Err(e)),
            }
        }
        "_fault/lock-twice" => {
            let first = store.with_write_lock(realm);
            let second = store.with_write_lock(realm).map(|_| ());
            drop(first);
            Some(second)
        }
        _ => None,
    }
}

/// Takes `realm`'s write lock and writes `path` under it: a write that
/// must never be committed, since the fault that holds it then misbehaves.
fn lock_with_a_pending_write<S: Store>(store: &S, realm: &str, path: &str) -> Result<S::Lock> {
    let mut lock = store.with_write_lock(realm)?;
    lock.write(path, "must never be committed", None)?;
    Ok(lock)
}
