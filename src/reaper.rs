//! The reaper: a dedicated thread that wipes each epoch key at its
//! deadline, with no cache traffic at all, and drops the entries sealed
//! under it.
//!
//! It is fed `(key id, deadline)` pairs over a crossbeam channel, keeps them
//! in a min-heap and sleeps until the earliest (at most [`MAX_SLEEP`] at a
//! time, so a clock that counts suspend is re-read after a resume). Dropping
//! the cache sends `Shutdown` and joins the thread. A [`ManualClock`]
//! (crate::ManualClock) wakes it synchronously on every advance.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};

use crate::clock::{Clock, nanos};

/// Longest single sleep: deadlines are re-checked at least this often.
pub(crate) const MAX_SLEEP: Duration = Duration::from_secs(1);

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
        let thread = thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                let _flag = AliveFlag(thread_alive);
                let _ = started_tx.send(());
                let ran = catch_unwind(AssertUnwindSafe(|| run(&*thread_clock, &*target, &rx)));
                if ran.is_err() {
                    // Should a bug panic the loop, fail closed: with no
                    // reaper no key would be wiped at its deadline, so wipe
                    // them all now (every entry becomes a miss, and inserts
                    // fail with `Error::Reaper`).
                    target.shred_all();
                }
            })?;
        // Return only once the thread runs (and carries its name).
        if started_rx.recv().is_err() {
            return Err(std::io::Error::other("reaper thread ended at start"));
        }
        let waker_tx = tx.clone();
        let pid = std::process::id();
        clock.register_waker(Box::new(move || {
            std::process::id() == pid && sync(&waker_tx)
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
    /// a forked child (which has no reaper thread) or if it has stopped.
    pub(crate) fn sync(&self) -> bool {
        std::process::id() == self.pid && sync(&self.tx)
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

fn sync(tx: &Sender<Message>) -> bool {
    let (ack_tx, ack_rx) = bounded(1);
    if tx.send(Message::Sync(ack_tx)).is_err() {
        return false;
    }
    ack_rx.recv().is_ok()
}

/// The thread's loop.
fn run<W: Wipe>(clock: &dyn Clock, target: &W, rx: &Receiver<Message>) {
    let mut deadlines: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    let mut acks: Vec<Sender<()>> = Vec::new();
    loop {
        // A `Clock` is user code: one that panics must not end the thread
        // (keys would then outlive their deadlines). Try again shortly.
        let Ok(now) = catch_unwind(AssertUnwindSafe(|| nanos(clock.now()))) else {
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
