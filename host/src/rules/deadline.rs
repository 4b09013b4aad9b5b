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
        if let Some((then, cpu_then)) = self.mark {
            let ran = cpu.saturating_sub(cpu_then);
            let waited = now.saturating_duration_since(then);
            if ran * 2 >= waited || self.windows >= MAX_WINDOWS {
                return UpdateDeadline::Interrupt;
            }
        }
        self.mark = Some((now, cpu));
        self.windows += 1;
        UpdateDeadline::Continue(window)
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

    #[test]
    fn a_busy_call_is_stopped_after_one_more_window() {
        let mut watch = Watch::default();
        assert!(matches!(watch.expired(10), UpdateDeadline::Continue(10)));
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(20) {
            std::hint::black_box(0u64);
        }
        assert!(matches!(watch.expired(10), UpdateDeadline::Interrupt));
    }

    #[test]
    fn a_call_that_waited_gets_more_windows_up_to_the_cap() {
        let mut watch = Watch::default();
        for _ in 0..MAX_WINDOWS {
            assert!(matches!(watch.expired(10), UpdateDeadline::Continue(10)));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(matches!(watch.expired(10), UpdateDeadline::Interrupt));
        watch.reset();
        assert!(matches!(watch.expired(10), UpdateDeadline::Continue(10)));
    }
}
