//! Realms as the host addresses them: the grammar of realm URLs and of the
//! local paths inside a realm, and what a replica remembers of the realms
//! in its database.

// The realm list and permissions a replica keeps in memory (routing never queries).
pub mod cache;
// Canonical realm URLs and the checks that keep a path inside its realm.
pub mod url;
