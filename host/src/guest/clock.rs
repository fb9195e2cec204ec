//! The guest's CPU clock: a call is charged only for the time the guest
//! itself runs — not for waiting for an instance, instantiation, time queued
//! by the scheduler, or time spent inside host imports.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The guest's own running time in one call: the time its future spends
/// being polled, less the time spent inside host imports. Waiting for an
/// instance, instantiation and time spent queued by the scheduler (the
/// future is not being polled) are not charged.
#[derive(Default)]
pub(super) struct GuestClock {
    state: Mutex<ClockState>,
}

#[derive(Default)]
struct ClockState {
    charged: Duration,
    /// When the guest started running in the current poll.
    running_since: Option<Instant>,
    in_host: bool,
}

impl GuestClock {
    fn state(&self) -> std::sync::MutexGuard<'_, ClockState> {
        match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn stop(state: &mut ClockState) {
        if let Some(since) = state.running_since.take() {
            state.charged += since.elapsed();
        }
    }

    fn poll_started(&self) {
        let mut state = self.state();
        if !state.in_host {
            state.running_since = Some(Instant::now());
        }
    }

    fn poll_ended(&self) {
        Self::stop(&mut self.state());
    }

    fn enter_host(&self) {
        let mut state = self.state();
        Self::stop(&mut state);
        state.in_host = true;
    }

    /// Called inside a poll, when a host import returns to the guest.
    fn leave_host(&self) {
        let mut state = self.state();
        state.in_host = false;
        state.running_since = Some(Instant::now());
    }

    pub(super) fn used(&self) -> Duration {
        let state = self.state();
        state.charged + state.running_since.map(|since| since.elapsed()).unwrap_or_default()
    }

    pub(super) fn reset(&self) {
        let mut state = self.state();
        state.charged = Duration::ZERO;
        if state.running_since.is_some() {
            state.running_since = Some(Instant::now());
        }
    }
}

/// Stops the guest's clock for the time a host import runs.
pub(super) struct InHost(Arc<GuestClock>);

impl InHost {
    pub(super) fn enter(clock: &Arc<GuestClock>) -> InHost {
        clock.enter_host();
        InHost(clock.clone())
    }
}

impl Drop for InHost {
    fn drop(&mut self) {
        self.0.leave_host();
    }
}

/// A guest call's future, timed by its [`GuestClock`].
pub(super) struct Charged<F> {
    pub(super) clock: Arc<GuestClock>,
    pub(super) call: Pin<Box<F>>,
}

impl<F: Future> Future for Charged<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.clock.poll_started();
        let polled = self.call.as_mut().poll(cx);
        self.clock.poll_ended();
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::GuestClock;
    use std::time::Duration;

    #[test]
    fn the_guest_is_charged_only_while_it_runs() {
        let clock = GuestClock::default();
        let sleep = std::thread::sleep;
        clock.poll_started();
        sleep(Duration::from_millis(20)); // the guest runs: charged
        clock.poll_ended();
        sleep(Duration::from_millis(300)); // queued by the scheduler: not charged
        clock.poll_started();
        clock.enter_host();
        sleep(Duration::from_millis(300)); // inside a host import: not charged
        clock.leave_host();
        sleep(Duration::from_millis(10)); // the guest again: charged
        clock.poll_ended();
        let used = clock.used();
        assert!(used >= Duration::from_millis(30), "{used:?}");
        assert!(used < Duration::from_millis(300), "waits were charged: {used:?}");
        clock.reset();
        assert_eq!(clock.used(), Duration::ZERO);
    }
}
