//! Running one guest call for a request: in its own task, so a client that
//! goes away cannot cancel a critical section halfway; a trap or a lost
//! task becomes a 500 with a correlation id.

use std::sync::Arc;

use axum::http::HeaderMap;
use axum::response::Response;

use super::responses::{denied, guest_error_response, internal_error};
use crate::auth::Denied;
use crate::guest::runtime::{Answer, Call, Caller, CardResponse, Guest, GuestError};

/// Runs a guest call that reads in its own task (a guest that takes a
/// write lock meanwhile is checked as anyone); the critical section
/// finishes even if the client disconnects and this request future is
/// dropped.
pub(super) async fn run(guest: &Arc<Guest>, call: Call) -> Result<Answer, Response> {
    run_call(guest, call, None).await?.map_err(guest_error_response)
}

/// `run` for a write request: its realm event names the request by its
/// `X-Boxel-Client-Request-Id` header.
pub(super) async fn run_write(guest: &Arc<Guest>, call: Call, headers: &HeaderMap, user: Option<String>) -> Result<Answer, Response> {
    run_in_task(guest, call, Caller { client_request_id: client_request_id(headers), user }).await?.map_err(guest_error_response)
}

/// The request's `X-Boxel-Client-Request-Id`, if it sent one.
pub(super) fn client_request_id(headers: &HeaderMap) -> Option<String> {
    headers.get("x-boxel-client-request-id").and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// `run` for `user` (whose grant let the request in: a write lock checks
/// it again), with the guest's own refusal left for the caller to answer.
pub(super) async fn run_call(guest: &Arc<Guest>, call: Call, user: Option<String>) -> Result<Result<Answer, GuestError>, Response> {
    run_in_task(guest, call, Caller { client_request_id: None, user }).await
}

async fn run_in_task(guest: &Arc<Guest>, call: Call, caller: Caller) -> Result<Result<Answer, GuestError>, Response> {
    let running = guest.clone();
    let outcome = tokio::spawn(async move { running.run_for(call, caller).await }).await;
    match outcome {
        Ok(Ok(answer)) => Ok(answer),
        // The write lock's own check of the caller's permissions.
        Ok(Err(error)) if error.downcast_ref::<Denied>().is_some() => {
            Err(denied(error.downcast_ref::<Denied>().cloned().unwrap_or_else(|| Denied::Forbidden("refused".into()))))
        }
        Ok(Err(trap)) => Err(internal_error(&format!("the card logic (guest {}) failed", guest.short_hash), &format!("{trap:?}"))),
        Err(join_error) => Err(internal_error("the request failed", &join_error.to_string())),
    }
}

pub(super) fn unexpected_shape(guest: &Guest) -> Response {
    internal_error(&format!("the card logic (guest {}) answered an unexpected shape", guest.short_hash), "unexpected answer variant")
}

pub(super) fn card_answer(answer: Answer) -> Result<CardResponse, Response> {
    match answer {
        Answer::Card(card) => Ok(card),
        _ => Err(internal_error("the card logic answered an unexpected shape", "expected a card response")),
    }
}
