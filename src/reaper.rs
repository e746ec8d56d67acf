//! The reaper: a dedicated thread that wipes each epoch key at its
//! deadline, with no cache traffic at all, and drops the entries sealed
//! under it.
//!
//! It is fed `(key id, deadline)` pairs over a crossbeam channel, keeps them
//! in a min-heap and sleeps until the earliest (at most [`MAX_SLEEP`] at a
//! time, so a clock that counts suspend is re-read after a resume). Dropping
//! the cache sends `Shutdown` and joins the thread. A
//! [`ManualClock`](crate::ManualClock) wakes it synchronously on every
//! advance. A clock
//! that panics is read again after [`MAX_SLEEP`]; after
//! [`CLOCK_FAILURES_BEFORE_SHRED`] failed readings in a row spanning at
//! least [`MAX_SLEEP`], every key is wiped (fail closed) and the thread
//! runs on.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};

use crate::clock::{Clock, nanos};

/// Longest single sleep: deadlines are re-checked at least this often.
pub(crate) const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Failed clock readings in a row after which the reaper no longer trusts
/// that any deadline is still ahead and wipes every key, once they also
/// span [`MAX_SLEEP`] or more (so a burst of readings made for a burst of
/// messages does not count as a clock that stays broken). With no traffic
/// it retries every [`MAX_SLEEP`]: the keys go two to three seconds after
/// the clock broke; with traffic, about [`MAX_SLEEP`] after its first
/// failed reading.
pub(crate) const CLOCK_FAILURES_BEFORE_SHRED: u32 = 3;

/// Name of the reaper thread.
pub(crate) const THREAD_NAME: &str = "sealcache-reaper";

/// What the reaper does to a key whose deadline has come.
pub(crate) trait Wipe: Send + Sync + 'static {
    /// Wipes key `key_id` and drops the entries sealed under it.
    fn wipe_key(&self, key_id: u64);
    /// Ids of live keys whose deadline is at or before `now` (a safety net
    /// for keys whose schedule message was lost).
    fn overdue(&self, now: u64) -> Vec<u64>;
    /// Wipes every key: the reaper is failing, so none may wait for it.
    fn shred_all(&self);
    /// Whether this process is a forked child of the one that built the
    /// cache (no reaper thread exists there).
    fn forked(&self) -> bool;
}

/// Messages to the reaper.
pub(crate) enum Message {
    /// A new key and the clock reading at which it must be wiped.
    Schedule { key_id: u64, deadline: u64 },
    /// Process everything due now, then acknowledge.
    Sync(Sender<()>),
    /// Drop this (invalidated entries) off the caller's thread.
    Dispose(Vec<Box<dyn Send>>),
    /// Stop.
    Shutdown,
}

/// The handle the cache keeps: the channel and the thread.
pub(crate) struct Reaper {
    tx: Sender<Message>,
    thread: Option<JoinHandle<()>>,
    alive: Arc<AtomicBool>,
    /// The process that started the thread: a forked child has no reaper
    /// thread, so it must never wait for one.
    pid: u32,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper")
            .field("alive", &self.is_alive())
            .finish_non_exhaustive()
    }
}

impl Reaper {
    /// Starts the reaper thread for `target`, and registers a waker on the
    /// clock so a manual clock drives it synchronously.
    pub(crate) fn start<W: Wipe>(clock: Arc<dyn Clock>, target: Arc<W>) -> std::io::Result<Self> {
        let (tx, rx) = unbounded();
        let alive = Arc::new(AtomicBool::new(true));
        let thread_alive = Arc::clone(&alive);
        let thread_clock = Arc::clone(&clock);
        let (started_tx, started_rx) = bounded(1);
        let waker_target = Arc::downgrade(&target);
        let thread = thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                let flag = AliveFlag(thread_alive);
                let _ = started_tx.send(());
                let ran = catch_unwind(AssertUnwindSafe(|| run(&*thread_clock, &*target, &rx)));
                // Close the channel first: from here on a new key cannot be
                // scheduled, and the insert that made it wipes it and fails
                // with `Error::Reaper`.
                drop(rx);
                drop(flag);
                if ran.is_err() {
                    // Should a bug panic the loop, fail closed: with no
                    // reaper no key would be wiped at its deadline, so wipe
                    // every key scheduled before the channel closed (every
                    // entry becomes a miss).
                    target.shred_all();
                }
            })?;
        // Return only once the thread runs (and carries its name).
        if started_rx.recv().is_err() {
            return Err(std::io::Error::other("reaper thread ended at start"));
        }
        let waker_tx = tx.clone();
        let pid = std::process::id();
        // The clock forgets a waker that returns false: only when this
        // reaper is gone for good (its channel closed, or a forked child's
        // copy), not when one pass could not finish (its clock panicked).
        clock.register_waker(Box::new(move || {
            let here = waker_target
                .upgrade()
                .is_some_and(|target| !target.forked());
            here && sync(&waker_tx) != Synced::Gone
        }));
        Ok(Self {
            tx,
            thread: Some(thread),
            alive,
            pid,
        })
    }

    /// Hands a new key's deadline to the thread; false if it has stopped.
    pub(crate) fn schedule(&self, key_id: u64, deadline: u64) -> bool {
        self.tx.send(Message::Schedule { key_id, deadline }).is_ok()
    }

    /// Waits until the thread has wiped every key due now; false at once in
    /// a forked child (which has no reaper thread), if it has stopped, or if
    /// its clock panicked during that pass.
    pub(crate) fn sync(&self) -> bool {
        std::process::id() == self.pid && sync(&self.tx) == Synced::Done
    }

    /// Drops `garbage` on the reaper thread (or here if it has stopped).
    pub(crate) fn dispose(&self, garbage: Vec<Box<dyn Send>>) {
        if let Err(crossbeam_channel::SendError(Message::Dispose(garbage))) =
            self.tx.send(Message::Dispose(garbage))
        {
            drop(garbage);
        }
    }

    /// Whether the thread is running (never in a forked child).
    pub(crate) fn is_alive(&self) -> bool {
        std::process::id() == self.pid && self.alive.load(Ordering::Acquire)
    }

    /// Stops the thread and waits for it. In a forked child the thread does
    /// not exist: it is neither told nor joined, and the channel is left
    /// alone (sending on it, or dropping its last sender, takes a lock that
    /// a parent thread may have held at the fork), at the cost of leaking
    /// the handle's memory in the child.
    pub(crate) fn shutdown(&mut self, forked: bool) {
        if forked || std::process::id() != self.pid {
            std::mem::forget(self.thread.take());
            std::mem::forget(std::mem::replace(&mut self.tx, unbounded().0));
            return;
        }
        let _ = self.tx.send(Message::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown(false);
        }
    }
}

/// Clears the alive flag when the thread ends, even by a panic.
struct AliveFlag(Arc<AtomicBool>);

impl Drop for AliveFlag {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// How a [`sync`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Synced {
    /// Every key due was wiped.
    Done,
    /// The pass did not finish (the clock panicked); the reaper runs on.
    Failed,
    /// The reaper thread is gone.
    Gone,
}

fn sync(tx: &Sender<Message>) -> Synced {
    let (ack_tx, ack_rx) = bounded(1);
    if tx.send(Message::Sync(ack_tx)).is_err() {
        return Synced::Gone;
    }
    match ack_rx.recv() {
        Ok(()) => Synced::Done,
        // The ack was dropped unanswered: by a failed pass, or by a thread
        // that ended meanwhile (the channel tells them apart).
        Err(_) if tx.send(Message::Sync(bounded(1).0)).is_ok() => Synced::Failed,
        Err(_) => Synced::Gone,
    }
}

/// The thread's loop.
fn run<W: Wipe>(clock: &dyn Clock, target: &W, rx: &Receiver<Message>) {
    let mut deadlines: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    let mut acks: Vec<Sender<()>> = Vec::new();
    let mut clock_failures: u32 = 0;
    // When the current run of failed readings began, by the process's own
    // monotonic clock (the one a failing `Clock` cannot stand in for).
    let mut failing_since: Option<Instant> = None;
    loop {
        // A `Clock` is user code: one that panics must not end the thread
        // (keys would then outlive their deadlines). Try again shortly.
        let Ok(now) = catch_unwind(AssertUnwindSafe(|| nanos(clock.now()))) else {
            clock_failures = clock_failures.saturating_add(1);
            let since = *failing_since.get_or_insert_with(Instant::now);
            if clock_failures >= CLOCK_FAILURES_BEFORE_SHRED && since.elapsed() >= MAX_SLEEP {
                // A clock that keeps failing could otherwise keep every key
                // past its deadline: fail closed, as a failed loop does, but
                // keep running, so that keys made once the clock works again
                // are wiped on time. Keys made meanwhile go at the next
                // failed reading.
                target.shred_all();
                deadlines.clear();
            }
            // Nothing due was wiped: a waiting `sync` learns it (false)
            // rather than being told all is done.
            acks.clear();
            match rx.recv_timeout(MAX_SLEEP) {
                Ok(message) => {
                    if handle(message, &mut deadlines, &mut acks) {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            continue;
        };
        clock_failures = 0;
        failing_since = None;
        while let Some(&Reverse((deadline, key_id))) = deadlines.peek() {
            if deadline > now {
                break;
            }
            deadlines.pop();
            target.wipe_key(key_id);
        }
        if !acks.is_empty() {
            for key_id in target.overdue(now) {
                target.wipe_key(key_id);
            }
            for ack in acks.drain(..) {
                let _ = ack.send(());
            }
        }
        let message = match deadlines.peek() {
            Some(&Reverse((deadline, _))) => {
                let wait = Duration::from_nanos(deadline.saturating_sub(now)).min(MAX_SLEEP);
                match rx.recv_timeout(wait) {
                    Ok(message) => message,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            None => match rx.recv() {
                Ok(message) => message,
                Err(_) => return,
            },
        };
        if handle(message, &mut deadlines, &mut acks) {
            return;
        }
    }
}

/// Applies one message; true for `Shutdown`.
fn handle(
    message: Message,
    deadlines: &mut BinaryHeap<Reverse<(u64, u64)>>,
    acks: &mut Vec<Sender<()>>,
) -> bool {
    match message {
        Message::Schedule { key_id, deadline } => deadlines.push(Reverse((deadline, key_id))),
        Message::Sync(ack) => acks.push(ack),
        Message::Dispose(garbage) => drop(garbage),
        Message::Shutdown => return true,
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::mpsc;

    /// A target whose pass panics (standing in for a bug of the crate) and
    /// whose `shred_all` pauses halfway, so that an insert can run while
    /// the failing reaper shreds.
    struct Failing {
        shredding: Mutex<Option<mpsc::Sender<()>>>,
        resume: Mutex<Option<mpsc::Receiver<()>>>,
    }

    impl Wipe for Failing {
        fn wipe_key(&self, _key_id: u64) {
            panic!("a bug in the reaper's pass (deliberate, in a test)");
        }
        fn overdue(&self, _now: u64) -> Vec<u64> {
            Vec::new()
        }
        fn shred_all(&self) {
            let shredding = self.shredding.lock().unwrap().take();
            let _ = shredding.map(|tx| tx.send(()));
            let resume = self.resume.lock().unwrap().take();
            let _ = resume.map(|rx| rx.recv());
        }
        fn forked(&self) -> bool {
            false
        }
    }

    /// When the reaper's loop fails it shreds every key, and no key made
    /// meanwhile can be handed to it: the insert that made it is refused
    /// (and wipes it), instead of succeeding with a key nobody will wipe.
    #[test]
    fn a_key_made_while_a_failing_reaper_shreds_is_refused() {
        let (shredding_tx, shredding_rx) = mpsc::channel();
        let (resume_tx, resume_rx) = mpsc::channel();
        let target = Arc::new(Failing {
            shredding: Mutex::new(Some(shredding_tx)),
            resume: Mutex::new(Some(resume_rx)),
        });
        let clock: Arc<dyn Clock> = Arc::new(crate::ManualClock::new());
        let mut reaper = Reaper::start(clock, target).unwrap();
        assert!(reaper.schedule(1, 0), "due at once: the pass panics");
        shredding_rx.recv().unwrap();
        let accepted = reaper.schedule(2, 1);
        let alive = reaper.is_alive();
        // Resumed before any assertion, so a failure cannot leave the
        // thread blocked and the test hanging in `shutdown`.
        resume_tx.send(()).unwrap();
        reaper.shutdown(false);
        assert!(
            !alive,
            "a failed reaper reports itself stopped while it shreds"
        );
        assert!(
            !accepted,
            "a key made during the shred was handed to a dead reaper"
        );
    }

    /// A target that counts `shred_all` calls.
    #[derive(Default)]
    struct CountsShreds(std::sync::atomic::AtomicUsize);

    impl Wipe for CountsShreds {
        fn wipe_key(&self, _key_id: u64) {}
        fn overdue(&self, _now: u64) -> Vec<u64> {
            Vec::new()
        }
        fn shred_all(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn forked(&self) -> bool {
            false
        }
    }

    /// A clock whose every reading panics.
    #[derive(Debug)]
    struct Broken;

    impl Clock for Broken {
        fn now(&self) -> Duration {
            panic!("a broken clock (deliberate, in a test)")
        }
    }

    /// One reading per pass: the reaper tolerates failed clock readings
    /// until there are three in a row spanning `MAX_SLEEP`, then shreds
    /// every key (and again at each failure after that).
    #[test]
    fn a_clock_that_fails_three_readings_over_a_second_shreds_every_key() {
        let began = std::time::Instant::now();
        let target = Arc::new(CountsShreds::default());
        let mut reaper = Reaper::start(Arc::new(Broken), Arc::clone(&target)).unwrap();
        let shreds = || target.0.load(Ordering::SeqCst);
        // One failed pass; its ack is dropped once the pass is over.
        let pass = || {
            let (ack_tx, ack_rx) = bounded(1);
            reaper.tx.send(Message::Sync(ack_tx)).unwrap();
            assert!(ack_rx.recv().is_err(), "a pass with no clock acked");
        };
        // The thread's first reading, made before it takes any message, is
        // the first failure; each pass makes one more: four in a row, in
        // less than `MAX_SLEEP` (every one of them after `began`).
        for _ in 0..3 {
            pass();
        }
        if began.elapsed() < MAX_SLEEP {
            assert_eq!(shreds(), 0, "shredded within a burst of failures");
        }
        std::thread::sleep(MAX_SLEEP);
        pass();
        assert!(
            shreds() >= 1,
            "failures spanning MAX_SLEEP, nothing shredded"
        );
        let after = shreds();
        pass();
        assert!(shreds() > after, "a later failure shreds again");
        assert!(
            reaper.is_alive(),
            "a failing clock does not stop the reaper"
        );
        reaper.shutdown(false);
    }
}
