//! Running one guest call for a request: in its own task, so a client that
//! goes away cannot cancel a critical section halfway; a trap or a lost
//! task becomes a 500 with a correlation id.

use std::sync::Arc;

use axum::response::Response;

use super::responses::{guest_error_response, internal_error};
use crate::guest::runtime::{Answer, Call, CardResponse, Guest, GuestError};

/// Runs a guest call in its own task: the critical section finishes even
/// if the client disconnects and this request future is dropped.
pub(super) async fn run(guest: &Arc<Guest>, call: Call) -> Result<Answer, Response> {
    run_call(guest, call).await?.map_err(guest_error_response)
}

/// `run`, with the guest's own refusal left for the caller to answer.
pub(super) async fn run_call(guest: &Arc<Guest>, call: Call) -> Result<Result<Answer, GuestError>, Response> {
    let running = guest.clone();
    let outcome = tokio::spawn(async move { running.run(call).await }).await;
    match outcome {
        Ok(Ok(answer)) => Ok(answer),
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
