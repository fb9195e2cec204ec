//! A server asked to stop (SIGTERM, as an orchestrator does in a rolling
//! restart): it stops accepting connections at once, ends its event
//! streams (their clients resume elsewhere), lets the writes under way
//! finish within `--shutdown-drain` and exits 0. A write still waiting
//! when the drain runs out ends unanswered and is not committed.

use std::time::Duration;

use reqwest::header::ACCEPT;

use crate::batch::{answers, line_up};
use crate::lock_holder::LockHolder;
use crate::harness::*;

const WAIT: Duration = Duration::from_secs(30);

fn drain(value: &str) -> ServerOptions {
    ServerOptions { serve_args: vec!["--shutdown-drain".into(), value.into()], ..ServerOptions::default() }
}

/// Reads `stream` to its end: `Ok` when it ended cleanly.
async fn read_to_end(mut stream: reqwest::Response) -> Result<(), String> {
    loop {
        match stream.chunk().await {
            Ok(Some(_)) => continue,
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("the stream broke: {e}")),
        }
    }
}

on_both_backends!(
    sigterm_ends_event_streams_at_once_lets_the_writes_under_way_commit_and_exits_0,
    a_write_still_waiting_when_the_drain_runs_out_ends_unanswered_and_is_not_committed
);

/// Three writers wait for the realm's lock (held from outside) and a
/// client follows the realm's events when SIGTERM comes; the drain (60 s)
/// is far longer than anything below waits.
async fn sigterm_ends_event_streams_at_once_lets_the_writes_under_way_commit_and_exits_0(backend: Backend) {
    let mut srv = backend.start_with(drain("60s")).await;
    let (realm, http) = (srv.realm("test"), srv.client());
    let events = reqwest::Client::new().get(format!("{realm}_events")).header(ACCEPT, "text/event-stream").send().await.expect("subscribe");
    assert_eq!(events.status(), 200, "subscribed");
    let blocker = LockHolder::hold(&srv, &realm).await;
    let writes: Vec<(String, String)> = (0..3).map(|i| (format!("{realm}during-{i}.txt"), format!("written during the drain {i}"))).collect();
    let sent = line_up(&srv, writes.iter().map(|(url, text)| http.write_source(url, text.clone())).collect()).await;

    srv.terminate();
    // The event stream ends cleanly, without waiting for the drain.
    let ended = tokio::time::timeout(WAIT, read_to_end(events)).await;
    ended.unwrap_or_else(|_| panic!("the event stream still runs {WAIT:?} after SIGTERM")).expect("the event stream ends cleanly");
    // Nothing new gets in.
    wait_until!("the server stops accepting connections", WAIT, {
        tokio::net::TcpStream::connect(("127.0.0.1", srv.port)).await.is_err().then_some(())
    });
    assert!(sent.iter().all(|h| !h.is_finished()), "the writes still wait for the lock");
    assert!(srv.is_running(), "the server waits for the writes under way");

    blocker.release().await;
    for (answer, (url, _)) in answers(sent).await.iter().zip(&writes) {
        assert_eq!(answer.status, 204, "{url} commits during the drain:\n{answer}");
    }
    let status = srv.exit_status(WAIT).await;
    assert!(status.success(), "a graceful stop exits 0, not {status}\n{}", srv.log());

    // Started again on the same database: the writes are there.
    let again = srv.replica().await;
    let http = again.client();
    for (url, text) in &writes {
        let url = url.replacen(&srv.base, &again.base, 1);
        assert_eq!(&http.read(&url).await, text, "{url}");
    }
}

/// A writer waits for the realm's lock (held from outside) when SIGTERM
/// comes, and still waits when the 1 s drain runs out: the server exits
/// without answering it, and after the lock is free nothing of it is
/// committed.
async fn a_write_still_waiting_when_the_drain_runs_out_ends_unanswered_and_is_not_committed(backend: Backend) {
    let mut srv = backend.start_with(drain("1s")).await;
    let (realm, http) = (srv.realm("test"), srv.client());
    let blocker = LockHolder::hold(&srv, &realm).await;
    let sent = line_up(&srv, vec![http.write_source(&format!("{realm}late.txt"), "too late")]).await;

    srv.terminate();
    let status = srv.exit_status(WAIT).await;
    assert!(status.success(), "a stop whose drain ran out still exits 0, not {status}\n{}", srv.log());
    assert!(srv.log().contains("drain ran out"), "the log says why a request ended unanswered:\n{}", srv.log());
    for handle in sent {
        if let Ok(answer) = handle.await.expect("request task") {
            panic!("a write still waiting when the drain ran out was answered:\n{answer}");
        }
    }
    blocker.release().await;

    let again = srv.replica().await;
    let (realm, http) = (again.realm("test"), again.client());
    assert_eq!(http.source_status(&format!("{realm}late.txt")).await, 404, "the unanswered write was not committed");
    http.seed(&format!("{realm}after.txt"), "after").await;
}
