//! `GET <realm>_events` (`Accept: text/event-stream`): the realm's events
//! as Server-Sent Events, `id:` the sequence number. `Last-Event-ID` (or
//! `?lastEventId=`) resumes after that event; an id outside the retained
//! window gets one `reset` event (reload) and the stream goes on from the
//! newest. A subscriber that falls more than the buffer behind while not
//! reading is disconnected, and resumes with its last id; so is every
//! subscriber when the server shuts down.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::broadcast::{error::RecvError, Receiver};

use super::app::App;
use super::listener::WriteStalls;
use super::resolve::Target;
use super::responses::{error, storage_error, Reply};
use crate::events::{Event, EventHub};

/// Events replayed per query while catching up.
const CATCH_UP: i64 = 1000;
/// A client that takes longer than this to accept the next event while
/// more than the buffer behind is not keeping up: it is disconnected.
const STALLED: Duration = Duration::from_millis(100);

pub(super) async fn stream(app: &App, target: &Target, headers: &HeaderMap, query: Option<&str>, stalls: Option<Arc<WriteStalls>>) -> Reply {
    let resume = last_event_id(headers, query)?;
    let realm = target.realm.clone();
    let hub = app.events.clone();
    // Subscribe first: whatever commits from now on reaches us; what
    // committed before is in the database.
    let live = hub.subscribe(&realm).await.map_err(|e| storage_error(&e))?;
    let (oldest, newest) = hub.window(&realm).await.map_err(|e| storage_error(&e))?;
    let mut first = VecDeque::new();
    let sent = match resume {
        None => newest,
        Some(after) if after > newest || oldest.is_some_and(|oldest| after < oldest - 1) => {
            first.push_back((reset(&realm, newest), Some(newest)));
            newest
        }
        Some(after) => after,
    };
    let closing = hub.closing();
    let state = Subscriber { hub, realm, live, sent, handed: sent, stalls, pending: first, caught_up: resume.is_none() || sent == newest, closing };
    let events = futures_util::stream::unfold(state, |mut s| async move { s.next().await.map(|event| (Ok::<_, Infallible>(event), s)) });
    let heartbeat = app.limits.events_heartbeat;
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(heartbeat.max(Duration::from_millis(10))).text("heartbeat")).into_response())
}

/// `Last-Event-ID`, else `?lastEventId=`: a sequence number.
fn last_event_id(headers: &HeaderMap, query: Option<&str>) -> Result<Option<i64>, Response> {
    let header = headers.get("last-event-id").map(|v| v.to_str().unwrap_or("?").trim().to_string());
    let param = query.and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "lastEventId").map(|(_, v)| v.into_owned()));
    match header.or(param) {
        None => Ok(None),
        Some(id) if id.is_empty() => Ok(None),
        Some(id) => id
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or_else(|| error(StatusCode::BAD_REQUEST, &format!("Last-Event-ID '{id}' is not an event id (a whole number ≥ 0)"))),
    }
}

fn reset(realm: &str, newest: i64) -> SseEvent {
    SseEvent::default().event("reset").id(newest.to_string()).data(json!({"eventName": "reset", "realmURL": realm}).to_string())
}

fn message(event: &Event) -> SseEvent {
    SseEvent::default().id(event.seq.to_string()).data(event.payload.clone())
}

struct Subscriber {
    hub: Arc<EventHub>,
    realm: String,
    live: Receiver<Arc<Event>>,
    /// The last seq queued for this subscriber (or skipped past).
    sent: i64,
    /// The last seq handed to the connection.
    handed: i64,
    /// How long the connection's writes wait for the client.
    stalls: Option<Arc<WriteStalls>>,
    pending: VecDeque<(SseEvent, Option<i64>)>,
    /// Whether every retained event up to the live feed has been read.
    caught_up: bool,
    /// True once the server shuts down.
    closing: tokio::sync::watch::Receiver<bool>,
}

impl Subscriber {
    /// The next event to send; `None` ends the stream (lagged, the
    /// database failed, or the server shuts down: the client resumes with
    /// its last id).
    async fn next(&mut self) -> Option<SseEvent> {
        let mut closing = self.closing.clone();
        let (event, seq) = tokio::select! {
            biased;
            _ = closing.wait_for(|closing| *closing) => return None,
            next = self.next_event() => next?,
        };
        let behind = self.hub.newest_read(&self.realm).saturating_sub(self.handed);
        // The client made the connection wait while it fell more than the
        // buffer behind: it does not keep up (a burst alone, read
        // promptly, is caught up from the outbox instead).
        let waited = self.stalls.as_ref().map_or(Duration::ZERO, |s| s.take_longest());
        if behind > self.hub.buffer() as i64 && waited > STALLED {
            tracing::debug!(realm = %self.realm, last = self.handed, "closing an event stream that does not keep up; it resumes with Last-Event-ID");
            return None;
        }
        self.handed = seq.unwrap_or(self.handed);
        Some(event)
    }

    async fn next_event(&mut self) -> Option<(SseEvent, Option<i64>)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if !self.caught_up {
                self.catch_up().await?;
                continue;
            }
            match self.live.recv().await {
                Ok(event) if event.seq <= self.sent => continue,
                Ok(event) if event.seq == self.sent + 1 => {
                    self.sent = event.seq;
                    return Some((message(&event), Some(event.seq)));
                }
                // Something between is only in the database (or the feed's
                // buffer overflowed under us): read it from there first.
                Ok(_) | Err(RecvError::Lagged(_)) => self.caught_up = false,
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// Queues the retained events after `sent`, up to the newest.
    async fn catch_up(&mut self) -> Option<()> {
        let events = match self.hub.after(&self.realm, self.sent, CATCH_UP).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(realm = %self.realm, error = %e, "cannot read realm events for a subscriber; closing its stream");
                return None;
            }
        };
        if (events.len() as i64) < CATCH_UP {
            self.caught_up = true;
        }
        for event in events {
            self.sent = event.seq;
            self.pending.push_back((message(&event), Some(event.seq)));
        }
        Some(())
    }
}
