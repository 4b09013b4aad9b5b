//! The per-call deadline, counted in the time a rule actually runs.
//!
//! Epoch interruption measures wall-clock time: on a busy machine (more runnable threads than
//! cores, a package compiling during a hot reload) a thread can be preempted in the middle of a
//! call that needs microseconds and miss a 10 ms deadline it never used. A rule must not fail
//! because its neighbours are busy, so when the epoch deadline passes the call is not stopped
//! at once: the thread's CPU clock is read and the call is watched for one more `timeout`. If it
//! ran for at least half of that window it is really busy (a loop) and is stopped — a busy loop
//! is stopped after about twice the timeout; otherwise the thread was waiting for a core and
//! the call gets another window, up to [`MAX_WINDOWS`] in all, so a call never holds its thread
//! for more than about `(MAX_WINDOWS + 1) × timeout` of wall-clock time.
//!
//! The CPU clock is read only when a deadline passes, never on the fast path of a call.

use std::time::{Duration, Instant};

use wasmtime::UpdateDeadline;

/// How many extra windows a preempted call may get.
pub(crate) const MAX_WINDOWS: u32 = 9;

/// What the deadline knows about the call in progress.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    /// The start of the current window: wall clock and this thread's CPU clock.
    mark: Option<(Instant, Duration)>,
    /// Windows granted so far.
    windows: u32,
}

impl Watch {
    /// A new call starts.
    pub(crate) fn reset(&mut self) {
        self.mark = None;
        self.windows = 0;
    }

    /// The epoch deadline passed; `window` is the timeout in ticks.
    pub(crate) fn expired(&mut self, window: u64) -> UpdateDeadline {
        let Some(cpu) = thread_cpu_time() else { return UpdateDeadline::Interrupt };
        let now = Instant::now();
        let last =
            self.mark.map(|(then, cpu_then)| (cpu.saturating_sub(cpu_then), now.saturating_duration_since(then)));
        if stop(last, self.windows) {
            return UpdateDeadline::Interrupt;
        }
        self.mark = Some((now, cpu));
        self.windows += 1;
        UpdateDeadline::Continue(window)
    }
}

/// Whether to stop a call whose deadline passed, given how long it ran and waited during the
/// last window (none yet: the first expiry only starts measuring) and how many windows it had.
fn stop(last: Option<(Duration, Duration)>, windows: u32) -> bool {
    match last {
        None => false,
        Some((ran, waited)) => ran * 2 >= waited || windows >= MAX_WINDOWS,
    }
}

/// The CPU time this thread has used.
#[cfg(unix)]
#[allow(unsafe_code)] // one libc call with a pointer to a local
fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call, which only writes it.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (status == 0).then(|| Duration::new(u64::try_from(ts.tv_sec).unwrap_or(0), u32::try_from(ts.tv_nsec).unwrap_or(0)))
}

/// Without a thread CPU clock, the deadline is plain wall-clock time.
#[cfg(not(unix))]
fn thread_cpu_time() -> Option<Duration> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_first_expiry_only_starts_measuring() {
        assert!(!stop(None, 0));
    }

    #[test]
    fn a_call_that_ran_most_of_the_window_is_stopped() {
        assert!(stop(Some((10 * MS, 10 * MS)), 1));
        assert!(stop(Some((5 * MS, 10 * MS)), 1));
    }

    #[test]
    fn a_call_that_waited_for_a_core_gets_another_window_up_to_the_cap() {
        assert!(!stop(Some((MS, 10 * MS)), 1));
        assert!(!stop(Some((MS, 10 * MS)), MAX_WINDOWS - 1));
        assert!(stop(Some((MS, 10 * MS)), MAX_WINDOWS));
    }

    /// With the real clocks: a sleeping call is extended until the cap, a busy one is stopped
    /// (by its CPU use, or at the latest by the cap on a machine too loaded to tell).
    #[test]
    fn the_real_clocks_drive_the_decision() {
        let mut watch = Watch::default();
        for _ in 0..MAX_WINDOWS {
            assert!(matches!(watch.expired(10), UpdateDeadline::Continue(10)));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(matches!(watch.expired(10), UpdateDeadline::Interrupt));

        watch.reset();
        let mut windows = 0;
        while let UpdateDeadline::Continue(_) = watch.expired(10) {
            windows += 1;
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(5) {
                std::hint::black_box(0u64);
            }
        }
        assert!(windows <= MAX_WINDOWS + 1, "{windows}");
    }
}
