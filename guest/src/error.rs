//! The guest's error type: one case per outcome the host maps to a status.

/// Kind of one `/_atomic` error; each carries its own status in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomicErrorKind {
    BadRequest,
    NotFound,
    Conflict,
    PayloadTooLarge,
    Unprocessable,
}

/// One error listed in a refused `/_atomic` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtomicError {
    pub kind: AtomicErrorKind,
    pub title: String,
    pub detail: String,
}

/// Why a guest call failed; mirrors the WIT `error` variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    BadRequest(String),
    NotFound(String),
    MethodNotAllowed(String),
    Conflict(String),
    PreconditionFailed(String),
    PayloadTooLarge(String),
    UnsupportedMediaType(String),
    LockHeld(String),
    LockTimeout(String),
    Unavailable(String),
    Storage(String),
    Atomic(Vec<AtomicError>),
}

pub type Result<T> = std::result::Result<T, Error>;
