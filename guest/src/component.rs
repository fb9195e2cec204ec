//! The thin wit-bindgen layer: adapts the WIT imports to [`crate::store`]
//! and exports the plain-Rust handlers and pure functions.

use crate::error::{AtomicError, AtomicErrorKind, Error};
use crate::store::{CardIndex, FileMeta, Store, StoredFile, WriteLock};
use crate::{atomic, handlers, merge, serialize};

wit_bindgen::generate!({
    world: "realm-core",
    path: "../wit",
});

use boxel::realm::store as wit_store;
use boxel::realm::types as wit;

struct Component;
export!(Component);

/// The real host, reached through the `store` import.
struct HostStore;

/// A write lock held by the host on our behalf.
struct HostLock(wit_store::WriteLock);

impl Store for HostStore {
    type Lock = HostLock;

    fn with_write_lock(&self, realm: &str) -> crate::error::Result<HostLock> {
        wit_store::with_write_lock(realm).map(HostLock).map_err(from_wit)
    }

    fn read_file(&self, realm: &str, path: &str) -> crate::error::Result<Option<StoredFile>> {
        wit_store::read_file(realm, path)
            .map(|file| file.map(stored_from_wit))
            .map_err(from_wit)
    }
}

impl WriteLock for HostLock {
    fn read(&mut self, path: &str) -> crate::error::Result<Option<StoredFile>> {
        self.0.read(path).map(|file| file.map(stored_from_wit)).map_err(from_wit)
    }

    fn exists(&mut self, path: &str) -> crate::error::Result<bool> {
        self.0.exists(path).map_err(from_wit)
    }

    fn prefetch(&mut self, paths: &[String]) -> crate::error::Result<()> {
        self.0.prefetch(paths).map_err(from_wit)
    }

    fn write(&mut self, path: &str, content: &str, index: Option<CardIndex>) -> crate::error::Result<FileMeta> {
        let index = index.map(|i| wit::CardIndex { id: i.id, card_type: i.card_type, search_doc: i.search_doc });
        self.0
            .write(path, content, index.as_ref())
            .map(|m| FileMeta { etag: m.etag, created: m.created, last_modified: m.last_modified, existed: m.existed })
            .map_err(from_wit)
    }

    fn delete(&mut self, path: &str) -> crate::error::Result<bool> {
        self.0.delete(path).map_err(from_wit)
    }

    fn commit(self) -> crate::error::Result<()> {
        wit_store::WriteLock::commit(self.0).map_err(from_wit)
    }
}

impl exports::boxel::realm::handlers::Guest for Component {
    fn get_card(realm: String, path: String) -> Result<wit::CardResponse, wit::Error> {
        #[cfg(feature = "fault-injection")]
        if let Some(outcome) = crate::faults::inject(&HostStore, &realm, &path) {
            outcome.map_err(to_wit)?;
            return Err(wit::Error::NotFound(format!("fault {path} finished")));
        }
        handlers::get_card(&HostStore, &realm, &path).map(card_to_wit).map_err(to_wit)
    }

    fn create_card(realm: String, dir: String, new_name: String, body: String) -> Result<wit::CardResponse, wit::Error> {
        handlers::create_card(&HostStore, &realm, &dir, &new_name, &body).map(card_to_wit).map_err(to_wit)
    }

    fn patch_card(realm: String, path: String, body: String, if_match: Option<String>) -> Result<wit::CardResponse, wit::Error> {
        handlers::patch_card(&HostStore, &realm, &path, &body, if_match.as_deref())
            .map(card_to_wit)
            .map_err(to_wit)
    }

    fn delete_card(realm: String, path: String, if_match: Option<String>) -> Result<(), wit::Error> {
        handlers::delete_card(&HostStore, &realm, &path, if_match.as_deref()).map_err(to_wit)
    }

    fn write_source(realm: String, path: String, content: String, if_match: Option<String>) -> Result<wit::FileMeta, wit::Error> {
        handlers::write_source(&HostStore, &realm, &path, &content, if_match.as_deref())
            .map(|m| wit::FileMeta { etag: m.etag, created: m.created, last_modified: m.last_modified, existed: m.existed })
            .map_err(to_wit)
    }

    fn delete_source(realm: String, path: String, if_match: Option<String>) -> Result<(), wit::Error> {
        handlers::delete_source(&HostStore, &realm, &path, if_match.as_deref()).map_err(to_wit)
    }

    fn atomic(realm: String, body: String) -> Result<String, wit::Error> {
        handlers::atomic(&HostStore, &realm, &body).map_err(to_wit)
    }
}

/// Each export is the text form the native tests and `realm-bench guest` call.
impl exports::boxel::realm::logic::Guest for Component {
    fn merge(original: String, patch: String, card_url: String) -> Result<String, wit::Error> {
        #[cfg(feature = "fault-broken-merge")]
        {
            let _ = (patch, card_url);
            return Ok(original);
        }
        #[allow(unreachable_code)]
        merge::merge_patch_text(&original, &patch, &card_url).map_err(to_wit)
    }

    fn serialize(card_resource: String, file_url: String, realm: String) -> Result<String, wit::Error> {
        serialize::serialize_card_text(&card_resource, &file_url, &realm).map_err(to_wit)
    }

    fn validate_atomic(realm: String, body: String) -> Result<String, wit::Error> {
        atomic::validate_atomic_json(&realm, &body).map_err(to_wit)
    }
}

fn stored_from_wit(f: wit::StoredFile) -> StoredFile {
    StoredFile { content: f.content, etag: f.etag, created: f.created, last_modified: f.last_modified }
}

fn card_to_wit(c: handlers::CardResponse) -> wit::CardResponse {
    wit::CardResponse { body: c.body, etag: c.etag, created: c.created, last_modified: c.last_modified, id: c.id }
}

fn from_wit(e: wit::Error) -> Error {
    match e {
        wit::Error::BadRequest(m) => Error::BadRequest(m),
        wit::Error::NotFound(m) => Error::NotFound(m),
        wit::Error::MethodNotAllowed(m) => Error::MethodNotAllowed(m),
        wit::Error::Conflict(m) => Error::Conflict(m),
        wit::Error::PreconditionFailed(m) => Error::PreconditionFailed(m),
        wit::Error::PayloadTooLarge(m) => Error::PayloadTooLarge(m),
        wit::Error::UnsupportedMediaType(m) => Error::UnsupportedMediaType(m),
        wit::Error::LockHeld(m) => Error::LockHeld(m),
        wit::Error::LockTimeout(m) => Error::LockTimeout(m),
        wit::Error::Unavailable(m) => Error::Unavailable(m),
        wit::Error::Storage(m) => Error::Storage(m),
        wit::Error::Atomic(list) => Error::Atomic(
            list.into_iter()
                .map(|a| AtomicError {
                    kind: match a.kind {
                        wit::AtomicErrorKind::BadRequest => AtomicErrorKind::BadRequest,
                        wit::AtomicErrorKind::NotFound => AtomicErrorKind::NotFound,
                        wit::AtomicErrorKind::Conflict => AtomicErrorKind::Conflict,
                        wit::AtomicErrorKind::PayloadTooLarge => AtomicErrorKind::PayloadTooLarge,
                        wit::AtomicErrorKind::Unprocessable => AtomicErrorKind::Unprocessable,
                    },
                    title: a.title,
                    detail: a.detail,
                })
                .collect(),
        ),
    }
}

fn to_wit(e: Error) -> wit::Error {
    match e {
        Error::BadRequest(m) => wit::Error::BadRequest(m),
        Error::NotFound(m) => wit::Error::NotFound(m),
        Error::MethodNotAllowed(m) => wit::Error::MethodNotAllowed(m),
        Error::Conflict(m) => wit::Error::Conflict(m),
        Error::PreconditionFailed(m) => wit::Error::PreconditionFailed(m),
        Error::PayloadTooLarge(m) => wit::Error::PayloadTooLarge(m),
        Error::UnsupportedMediaType(m) => wit::Error::UnsupportedMediaType(m),
        Error::LockHeld(m) => wit::Error::LockHeld(m),
        Error::LockTimeout(m) => wit::Error::LockTimeout(m),
        Error::Unavailable(m) => wit::Error::Unavailable(m),
        Error::Storage(m) => wit::Error::Storage(m),
        Error::Atomic(list) => wit::Error::Atomic(
            list.into_iter()
                .map(|a| wit::AtomicError {
                    kind: match a.kind {
                        AtomicErrorKind::BadRequest => wit::AtomicErrorKind::BadRequest,
                        AtomicErrorKind::NotFound => wit::AtomicErrorKind::NotFound,
                        AtomicErrorKind::Conflict => wit::AtomicErrorKind::Conflict,
                        AtomicErrorKind::PayloadTooLarge => wit::AtomicErrorKind::PayloadTooLarge,
                        AtomicErrorKind::Unprocessable => wit::AtomicErrorKind::Unprocessable,
                    },
                    title: a.title,
                    detail: a.detail,
                })
                .collect(),
        ),
    }
}
