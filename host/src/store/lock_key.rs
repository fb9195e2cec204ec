//! The Postgres advisory-lock key of a realm (spec §5): the first 8 bytes
//! of SHA-256 of the canonical realm URL, as a big-endian signed i64. The
//! write path holds it around a realm's writes; permission changes take it
//! too, so they never interleave with a batch.

use sha2::{Digest, Sha256};

pub fn advisory_lock_key(canonical_realm_url: &str) -> i64 {
    let digest = Sha256::digest(canonical_realm_url.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::advisory_lock_key;

    #[test]
    fn matches_the_spec_vectors() {
        assert_eq!(advisory_lock_key("http://127.0.0.1:4444/test/"), -2355824123773129196);
        assert_eq!(advisory_lock_key("http://localhost:4201/a/"), -1024908116193556988);
        assert_eq!(advisory_lock_key("http://localhost:4201/b/"), 4916872004007584858);
    }
}
