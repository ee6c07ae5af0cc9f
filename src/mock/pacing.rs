//! Stream pacing to the microsecond.
//!
//! tokio's timer wheel works in whole milliseconds and rounds a deadline up, so a 1 ms
//! `sleep` between stream events takes 1–2 ms depending on where in a millisecond it began.
//! A stream's first token then arrives at a time that depends on the request's arrival
//! phase, and the benchmark's "added time to first token" (through a proxy, minus direct)
//! measured that phase as much as the proxy: it came out negative in some runs. Paced
//! streams therefore run on a schedule fixed from their first event and wait on a Linux
//! `timerfd`, which the kernel fires on its high-resolution clock.

use std::io::{Error, ErrorKind, Result as IoResult};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Waits until points on one stream's schedule. Falls back to tokio's timer where a
/// `timerfd` cannot be had.
pub(crate) struct Pacer {
    timer: Option<AsyncFd<OwnedFd>>,
}

impl Pacer {
    /// A pacer for one stream (one file descriptor, closed when it drops). Needs a tokio
    /// runtime with I/O enabled.
    pub(crate) fn new() -> Pacer {
        let timer = timerfd().ok().and_then(|fd| {
            // SAFETY: an `OwnedFd` is a valid open descriptor that stays open, and names the
            // same file, for as long as it is owned (here: by the `AsyncFd`).
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()
        });
        Pacer { timer }
    }

    /// Returns at `deadline` (at once when it has passed).
    pub(crate) async fn sleep_until(&self, deadline: Instant) {
        let Some(timer) = &self.timer else {
            tokio::time::sleep_until(deadline.into()).await;
            return;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        if arm(timer.get_ref(), left).is_err() {
            tokio::time::sleep_until(deadline.into()).await;
            return;
        }
        loop {
            let Ok(mut ready) = timer.readable().await else {
                tokio::time::sleep_until(deadline.into()).await;
                return;
            };
            match ready.try_io(|fd| expirations(fd.get_ref())) {
                Ok(_) => return,
                Err(_would_block) => continue,
            }
        }
    }
}

/// A non-blocking, close-on-exec monotonic `timerfd`.
fn timerfd() -> IoResult<OwnedFd> {
    // SAFETY: plain syscall with constant arguments; the result is checked before use.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Arms the timer to fire once, `after` from now (`after` is never zero: that disarms).
fn arm(fd: &OwnedFd, after: Duration) -> IoResult<()> {
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: after.as_secs().try_into().unwrap_or(libc::time_t::MAX),
            tv_nsec: after.subsec_nanos().max(1).into(),
        },
    };
    // SAFETY: `fd` is an open timerfd; `spec` is a live, fully initialised itimerspec and the
    // old-value pointer may be null.
    let rc = unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    if rc < 0 {
        return Err(Error::last_os_error());
    }
    Ok(())
}

/// Reads the expiration count; `WouldBlock` until the timer has fired.
fn expirations(fd: &OwnedFd) -> IoResult<u64> {
    let mut count = 0u64;
    // SAFETY: reads at most 8 bytes into a live `u64` of 8 bytes.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            std::ptr::addr_of_mut!(count).cast(),
            std::mem::size_of::<u64>(),
        )
    };
    match n {
        8 => Ok(count),
        n if n < 0 => Err(Error::last_os_error()),
        _ => Err(Error::new(ErrorKind::UnexpectedEof, "short timerfd read")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_at_each_deadline_and_at_once_for_a_past_one() {
        let pacer = Pacer::new();
        assert!(pacer.timer.is_some(), "timerfd is available on Linux");
        let start = Instant::now();
        let mut deadline = start;
        for _ in 0..5 {
            deadline += Duration::from_micros(300);
            pacer.sleep_until(deadline).await;
            assert!(Instant::now() >= deadline, "woke before the deadline");
        }
        // A past deadline returns at once: arming a timerfd with zero would disarm it and
        // wait forever, so the bound here only catches a hang.
        let past = tokio::time::timeout(Duration::from_secs(5), pacer.sleep_until(start));
        assert!(past.await.is_ok(), "a past deadline hung");
    }
}
