//! When to give freed heap pages back to the system ([`detour_heap::release`]).
//!
//! Without it glibc keeps the pages of a burst (a thousand streams, hundreds of connections)
//! resident after they are freed, pinned below the few allocations still live above them,
//! and the next burst grows the process further instead of reusing them. The release runs
//! at the end of a burst (the open connections fall to half of a peak of at least
//! [`BURST`]; [`BURST_SETTLE`] later, once the rest of the crowd has closed too), so the next burst starts on a heap given back and consolidated, and
//! [`RELEASE_EVERY`] after the first activity (a connection or a request) that followed the
//! last release. It is event-driven: the connection counter and the request path tell the
//! watch, which sleeps without a timer while nothing happens, so an idle sidecar is never
//! woken for it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How long after the first activity since the last release the next one runs.
pub const RELEASE_EVERY: Duration = Duration::from_secs(5);
/// Open connections from which their falling to half counts as the end of a burst.
pub const BURST: i64 = 64;
/// How long after a burst's end the release waits for the rest of its connections to close.
pub const BURST_SETTLE: Duration = Duration::from_millis(100);

/// What the watch has been told since the last release.
#[derive(Debug, Default)]
pub struct HeapWatch {
    /// The most connections open at once since the last release.
    peak: AtomicI64,
    /// A connection opened or closed or a request came since the last release.
    active: AtomicBool,
    /// The open connections fell to half of a burst's peak.
    burst_ended: AtomicBool,
    wake: Notify,
}

impl HeapWatch {
    /// A connection was opened; `open` connections are open now.
    pub fn opened(&self, open: i64) {
        self.peak.fetch_max(open, Ordering::Relaxed);
        self.touch();
    }

    /// A connection was closed; `open` connections are open now.
    pub fn closed(&self, open: i64) {
        let peak = self.peak.load(Ordering::Relaxed);
        if peak >= BURST && open <= peak / 2 && !self.burst_ended.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
        self.touch();
    }

    /// Something was served: a release is due [`RELEASE_EVERY`] from the first such touch.
    /// One relaxed load when the watch already knows.
    pub fn touch(&self) {
        if !self.active.load(Ordering::Relaxed) && !self.active.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Runs `release` when one is due (never returns). `open` reads the connections open
    /// now (the peak a new burst is measured from). Awaits each release, so at most one
    /// runs at a time.
    pub async fn run<R, F>(&self, open: impl Fn() -> i64, mut release: R)
    where
        R: FnMut() -> F,
        F: Future<Output = ()>,
    {
        loop {
            if self.burst_ended.load(Ordering::Acquire) {
                // A crowd of connections closes within moments: release once they have.
                tokio::time::sleep(BURST_SETTLE).await;
            } else {
                if !self.active.load(Ordering::Acquire) {
                    // Idle: no timer; nothing runs until a connection or a request comes.
                    self.wake.notified().await;
                    continue;
                }
                let due = Instant::now() + RELEASE_EVERY;
                loop {
                    tokio::select! {
                        () = tokio::time::sleep_until(due) => break,
                        () = self.wake.notified() => {}
                    }
                    if self.burst_ended.load(Ordering::Acquire) {
                        tokio::time::sleep(BURST_SETTLE).await;
                        break;
                    }
                }
            }
            // Cleared before the release: what happens meanwhile counts towards the next one.
            self.active.store(false, Ordering::Release);
            self.burst_ended.store(false, Ordering::Release);
            self.peak.store(open(), Ordering::Relaxed);
            release().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, AtomicUsize};
    use std::task::{Context, Poll, Wake, Waker};

    use super::*;

    /// Counts how often the watch's task would have been woken.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    struct Bench {
        watch: HeapWatch,
        open: AtomicI64,
        releases: AtomicUsize,
    }

    impl Bench {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                watch: HeapWatch::default(),
                open: AtomicI64::new(0),
                releases: AtomicUsize::new(0),
            })
        }

        fn open(&self, n: i64) {
            for _ in 0..n {
                let now = self.open.fetch_add(1, Ordering::Relaxed) + 1;
                self.watch.opened(now);
            }
        }

        fn close(&self, n: i64) {
            for _ in 0..n {
                let now = self.open.fetch_sub(1, Ordering::Relaxed) - 1;
                self.watch.closed(now);
            }
        }

        fn releases(&self) -> usize {
            self.releases.load(Ordering::Relaxed)
        }
    }

    /// Drives the watch by hand with a waker that counts, so a test sees every wake-up.
    async fn watch(b: &Arc<Bench>, steps: impl AsyncFnOnce(&mut dyn FnMut() -> usize, &Arc<Wakes>)) {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let run = b.watch.run(
            || b.open.load(Ordering::Relaxed),
            || {
                b.releases.fetch_add(1, Ordering::Relaxed);
                std::future::ready(())
            },
        );
        let mut run = pin!(run);
        let mut poll = || {
            let mut cx = Context::from_waker(&waker);
            assert!(matches!(run.as_mut().poll(&mut cx), Poll::Pending));
            b.releases()
        };
        poll();
        steps(&mut poll, &wakes).await;
    }

    async fn advance(d: Duration) {
        tokio::time::advance(d).await;
    }

    /// An idle sidecar's watch holds no timer and is never woken, however long it idles.
    #[tokio::test(start_paused = true)]
    async fn an_idle_watch_is_never_woken_and_releases_nothing() {
        let b = Bench::new();
        watch(&b, async |poll, wakes| {
            advance(Duration::from_secs(3600)).await;
            assert_eq!(wakes.0.load(Ordering::Relaxed), 0);
            assert_eq!(poll(), 0);
        })
        .await;
    }

    /// A request after a quiet spell leads to one release, five seconds later, and none after
    /// it while nothing more happens.
    #[tokio::test(start_paused = true)]
    async fn activity_leads_to_one_release_five_seconds_later() {
        let b = Bench::new();
        watch(&b, async |poll, wakes| {
            advance(Duration::from_secs(60)).await;
            b.watch.touch();
            b.watch.touch();
            assert_eq!(poll(), 0);
            advance(RELEASE_EVERY - Duration::from_millis(1)).await;
            assert_eq!(poll(), 0);
            advance(Duration::from_millis(1)).await;
            assert_eq!(poll(), 1);
            let woken = wakes.0.load(Ordering::Relaxed);
            advance(Duration::from_secs(3600)).await;
            assert_eq!(poll(), 1);
            assert_eq!(wakes.0.load(Ordering::Relaxed), woken, "woken while idle");
        })
        .await;
    }

    /// Under steady traffic the release comes about every five seconds (five seconds after
    /// the first request that follows the last one: at 5.0, 10.1 and 15.2 s here).
    #[tokio::test(start_paused = true)]
    async fn steady_traffic_releases_every_five_seconds() {
        let b = Bench::new();
        watch(&b, async |poll, _| {
            for _ in 0..200 {
                b.watch.touch();
                poll();
                advance(Duration::from_millis(100)).await;
            }
            assert_eq!(poll(), 3);
        })
        .await;
    }

    /// The end of a burst (open connections down to half of a peak of at least 64) releases
    /// once the crowd has closed, within 100 ms; a smaller crowd waits for the period.
    #[tokio::test(start_paused = true)]
    async fn a_burst_ending_releases_once_its_crowd_has_closed() {
        let b = Bench::new();
        watch(&b, async |poll, _| {
            b.open(100);
            poll();
            advance(RELEASE_EVERY).await;
            assert_eq!(poll(), 1);
            // The peak starts again from the 100 open at that release.
            b.close(49);
            assert_eq!(poll(), 1);
            b.close(1);
            assert_eq!(poll(), 1);
            // The rest of the crowd closes before the release.
            b.close(40);
            advance(BURST_SETTLE).await;
            assert_eq!(poll(), 2);
            // 10 open now: the next burst is measured from there.
            b.open(50);
            b.close(40);
            assert_eq!(poll(), 2);
            advance(BURST_SETTLE).await;
            assert_eq!(poll(), 2, "a peak under 64 is no burst");
            advance(RELEASE_EVERY - BURST_SETTLE).await;
            assert_eq!(poll(), 3);
        })
        .await;
    }
}
