//! Single-flight read-through loading with fenced invalidation.
//!
//! A miss on [`SealCache::get_or_try_load`] joins the key's *flight* if one
//! is running, or starts one: exactly one caller (the leader) runs the
//! loader, every other caller for that key waits for the same outcome. The
//! leader stores the loaded value only if nothing *fenced* the flight while
//! it ran: `invalidate(key)`, an `insert(key, ..)` that stored its value,
//! and `invalidate_all()` all mark the flights they overlap, so no in-flight
//! load can undo them. The flight table is sharded like the store, and the
//! check-and-store at the end of a load happens under the same shard lock
//! as the fencing.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
#[cfg(feature = "async")]
use std::future::Future;
#[cfg(feature = "async")]
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
#[cfg(feature = "async")]
use std::task::{Context, Poll};

use crossbeam_utils::CachePadded;

use crate::cache::{MAX_KEY_LEN, SealCache};
use crate::error::Error;
use crate::secret::{CacheKey, SecretBytes, SecretValue};
use crate::store::{Read, Stale};

/// Why [`SealCache::get_or_try_load`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum LoadError<E> {
    /// The cache itself failed (integrity, fork, protection, ...).
    Cache(Error),
    /// The loader returned this error: to the caller that ran it and to
    /// every caller that waited on the same flight with a loader of the same
    /// error type (the others get
    /// [`LoaderFailedElsewhere`](Self::LoaderFailedElsewhere)). Errors are
    /// never cached.
    Loader(Arc<E>),
    /// The loader panicked in another caller's thread; that caller got the
    /// panic, the waiters get this. The key is not wedged: the next call
    /// loads again.
    LoaderPanicked,
    /// Another caller's loader for this key failed, and its error has
    /// another type than this caller's loader's (two call sites load the
    /// key with different error types). This caller did not load again: a
    /// failing database sees one load per miss, not one per error type.
    /// The next call loads again.
    LoaderFailedElsewhere,
    /// A loader asked the cache for the key it is loading (directly, or
    /// through other keys' loaders that it runs), in the blocking or the
    /// async form: waiting for its own flight would never end. Load the
    /// inner key some other way, or break the cycle between the loaders.
    Reentrant,
}

impl<E> Clone for LoadError<E> {
    fn clone(&self) -> Self {
        match self {
            Self::Cache(err) => Self::Cache(err.clone()),
            Self::Loader(err) => Self::Loader(Arc::clone(err)),
            Self::LoaderPanicked => Self::LoaderPanicked,
            Self::LoaderFailedElsewhere => Self::LoaderFailedElsewhere,
            Self::Reentrant => Self::Reentrant,
        }
    }
}

impl<E: fmt::Display> fmt::Display for LoadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cache(err) => write!(f, "cache error: {err}"),
            Self::Loader(err) => write!(f, "loader failed: {err}"),
            Self::LoaderPanicked => f.write_str("the loader panicked in the caller that ran it"),
            Self::LoaderFailedElsewhere => f.write_str(
                "the loader of the caller this one waited for failed (with an error of another type)",
            ),
            Self::Reentrant => {
                f.write_str("a loader asked for the key it is loading: it would wait for itself")
            }
        }
    }
}

/// The loader's error is shown, not linked: its message is part of this
/// one, and [`source`](std::error::Error::source) continues with the loader
/// error's own source, so a reporter that walks the chain (`anyhow`'s
/// `{:#}`, `eyre`) prints each message once and every cause stays
/// reachable. Match [`LoadError::Loader`] to reach the loader's error
/// itself (to downcast it, say). For a loader error that is not a
/// `std::error::Error` (`anyhow::Error`, `Box<dyn Error + Send + Sync>`),
/// see [`LoadError::into_dyn`].
impl<E: std::error::Error + 'static> std::error::Error for LoadError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Loader(err) => err.source(),
            Self::Cache(_)
            | Self::LoaderPanicked
            | Self::LoaderFailedElsewhere
            | Self::Reentrant => None,
        }
    }
}

impl<E> LoadError<E> {
    /// This error as a `std::error::Error`, for a loader whose error type
    /// is not one itself (`anyhow::Error`, `Box<dyn Error + Send + Sync>`),
    /// so that `?` can pass it on into `anyhow`, `eyre` or a boxed error:
    /// `.map_err(LoadError::into_dyn)?`. Its message and sources are those
    /// of a loader error that is one; downcast to [`DynLoadError`] to
    /// match the [`LoadError`] again.
    #[must_use]
    pub fn into_dyn(self) -> DynLoadError<E> {
        DynLoadError(self)
    }
}

/// A [`LoadError`] of a loader error that is viewable as an error
/// (`AsRef<dyn Error + Send + Sync>`) without being one: it prints as the
/// `LoadError` does, and its `source()` continues with the loader error's
/// own source. Made by [`LoadError::into_dyn`].
#[derive(Debug)]
pub struct DynLoadError<E>(pub LoadError<E>);

impl<E> Clone for DynLoadError<E> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<E: fmt::Display> fmt::Display for DynLoadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E> std::error::Error for DynLoadError<E>
where
    E: AsRef<dyn std::error::Error + Send + Sync + 'static> + fmt::Debug + fmt::Display,
{
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            LoadError::Loader(err) => (**err).as_ref().source(),
            _ => None,
        }
    }
}

impl<E> From<Error> for LoadError<E> {
    fn from(err: Error) -> Self {
        Self::Cache(err)
    }
}

/// Counters of the loading path (added to [`Stats`](crate::Stats)).
#[derive(Debug, Default)]
pub(crate) struct LoadCounters {
    pub(crate) loads: AtomicU64,
    pub(crate) load_errors: AtomicU64,
    pub(crate) coalesced_waits: AtomicU64,
    pub(crate) refreshes: AtomicU64,
    pub(crate) stale_served: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// How a flight ended, as seen by its waiters.
#[derive(Clone)]
enum Outcome {
    Value(Option<Arc<SecretBytes>>),
    NotFound,
    Error(Arc<dyn Any + Send + Sync>),
    Cache(Error),
    Panicked,
    /// The leader went away without an outcome, its loader not having
    /// panicked (an async leader cancelled, or unwound by a panic elsewhere).
    Abandoned,
}

#[derive(Default)]
struct FlightState {
    outcome: Option<Outcome>,
    waiters: usize,
    wakers: Vec<Waker>,
    fenced: bool,
}

/// One running load.
pub(crate) struct Flight {
    state: Mutex<FlightState>,
    done: Condvar,
    generation: u64,
    /// Set when the loader itself unwound (a panic inside it), as opposed to
    /// a leader dropped while its thread unwinds for another reason (a
    /// sibling future's panic in the same task): only the first is
    /// [`LoadError::LoaderPanicked`] for the waiters.
    loader_unwound: AtomicBool,
}

thread_local! {
    /// The flights whose loader runs on this thread right now: a blocking
    /// loader, or an async leader's loader future while it is being polled.
    /// Code running there runs inside that loader and must not wait for its
    /// flight, which only that loader can finish.
    static LEADING: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// The identity of a flight in [`LEADING`].
fn flight_id(flight: &Flight) -> usize {
    std::ptr::from_ref(flight) as usize
}

/// Whether `flight`'s loader is running on this thread (we are inside it).
fn led_here(flight: &Arc<Flight>) -> bool {
    let id = flight_id(flight);
    LEADING.with(|leading| leading.borrow().contains(&id))
}

/// Held while a flight's loader runs (a blocking loader, or one poll of an
/// async one): marks the flight as led on this thread, and, if the loader
/// does not return (it unwinds), records that on the flight.
struct LeadingMark<'a> {
    flight: &'a Flight,
    /// Cleared by [`returned`](Self::returned).
    running: bool,
}

impl<'a> LeadingMark<'a> {
    fn new(flight: &'a Flight) -> Self {
        LEADING.with(|leading| leading.borrow_mut().push(flight_id(flight)));
        Self {
            flight,
            running: true,
        }
    }

    /// The loader (or this poll of it) returned: dropping the mark now is
    /// not an unwind out of the loader, even on a thread that happens to be
    /// unwinding from something else.
    fn returned(mut self) {
        self.running = false;
    }
}

impl Drop for LeadingMark<'_> {
    fn drop(&mut self) {
        if self.running {
            // Dropped by an unwind that started inside the loader.
            self.flight.loader_unwound.store(true, Ordering::Release);
        }
        let id = flight_id(self.flight);
        LEADING.with(|leading| {
            let mut leading = leading.borrow_mut();
            if let Some(at) = leading.iter().rposition(|&led| led == id) {
                leading.remove(at);
            }
        });
    }
}

impl Flight {
    fn lock(&self) -> MutexGuard<'_, FlightState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn complete(&self, outcome: Outcome) {
        let wakers = {
            let mut state = self.lock();
            if state.outcome.is_some() {
                return;
            }
            state.outcome = Some(outcome);
            std::mem::take(&mut state.wakers)
        };
        self.done.notify_all();
        wakers.into_iter().for_each(Waker::wake);
    }

    fn wait(&self) -> Outcome {
        let mut state = self.lock();
        loop {
            if let Some(outcome) = &state.outcome {
                return outcome.clone();
            }
            state = self
                .done
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Waits for a flight without blocking an executor thread.
#[cfg(feature = "async")]
struct FlightWait {
    flight: Arc<Flight>,
}

#[cfg(feature = "async")]
impl Future for FlightWait {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut state = self.flight.lock();
        if let Some(outcome) = &state.outcome {
            return Poll::Ready(outcome.clone());
        }
        if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

type FlightMap = HashMap<Box<[u8]>, Arc<Flight>>;

/// The flight table: one map per store shard, plus the `invalidate_all`
/// generation that fences every flight started before it.
pub(crate) struct Flights {
    shards: Box<[CachePadded<Mutex<FlightMap>>]>,
    generation: AtomicU64,
    active: AtomicUsize,
}

impl Flights {
    pub(crate) fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards)
                .map(|_| CachePadded::new(Mutex::new(HashMap::new())))
                .collect(),
            generation: AtomicU64::new(0),
            active: AtomicUsize::new(0),
        }
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, FlightMap> {
        self.shards[shard % self.shards.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `then` and fences the flight of `key` (if any) under the same
    /// lock, so a load that finishes later cannot store a value from before.
    pub(crate) fn fence<R>(&self, shard: usize, key: &[u8], then: impl FnOnce() -> R) -> R {
        self.fence_if(shard, key, then, |_| true)
    }

    /// As [`fence`](Self::fence), but fences only if `then` succeeded: a
    /// write that was rejected changed nothing, so the load goes on.
    pub(crate) fn fence_on_success<T, E>(
        &self,
        shard: usize,
        key: &[u8],
        then: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        self.fence_if(shard, key, then, Result::is_ok)
    }

    fn fence_if<R>(
        &self,
        shard: usize,
        key: &[u8],
        then: impl FnOnce() -> R,
        fences: impl FnOnce(&R) -> bool,
    ) -> R {
        let map = self.lock(shard);
        let result = then();
        if fences(&result)
            && self.active.load(Ordering::Acquire) > 0
            && let Some(flight) = map.get(key)
        {
            flight.lock().fenced = true;
        }
        drop(map);
        result
    }

    /// Fences every flight running now (for `invalidate_all`).
    pub(crate) fn fence_all(&self) {
        let guards: Vec<_> = (0..self.shards.len()).map(|s| self.lock(s)).collect();
        self.generation.fetch_add(1, Ordering::AcqRel);
        drop(guards);
    }

    fn is_fenced(&self, flight: &Flight) -> bool {
        flight.lock().fenced || self.invalidated_all_since(flight)
    }

    /// Whether `invalidate_all` ran since `flight` started.
    fn invalidated_all_since(&self, flight: &Flight) -> bool {
        flight.generation != self.generation.load(Ordering::Acquire)
    }
}

/// Ends a flight if its leader leaves without an outcome: by its loader's
/// panic (the waiters get `LoaderPanicked`), or otherwise (an async leader
/// cancelled, or unwound by a panic elsewhere in its task; the waiters
/// retry, one of them leading).
struct Leader<'a> {
    cache: &'a SealCache,
    key: &'a [u8],
    shard: usize,
    flight: Arc<Flight>,
    done: bool,
}

impl Leader<'_> {
    /// Removes the flight from the table (under its shard lock).
    fn unregister(&self, map: &mut FlightMap) {
        if map
            .get(self.key)
            .is_some_and(|current| Arc::ptr_eq(current, &self.flight))
        {
            map.remove(self.key);
            self.cache.flights().active.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn finish(mut self, outcome: Outcome) {
        {
            let mut map = self.cache.flights().lock(self.shard);
            self.unregister(&mut map);
        }
        self.flight.complete(outcome);
        self.done = true;
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        {
            let mut map = self.cache.flights().lock(self.shard);
            self.unregister(&mut map);
        }
        // A leader dropped by its loader's panic; otherwise one dropped
        // unfinished (an async leader cancelled, or unwound by a panic
        // elsewhere in its task): a waiter takes over.
        self.flight
            .complete(if self.flight.loader_unwound.load(Ordering::Acquire) {
                Outcome::Panicked
            } else {
                Outcome::Abandoned
            });
    }
}

/// What to do after the first look at the cache.
enum Step<'a> {
    /// Answered from the cache.
    Done(Option<SecretBytes>),
    /// Wait for someone else's flight.
    Join(Arc<Flight>),
    /// Run the loader: for a miss, or to refresh a value that is still
    /// valid. `fallback`: if the loader fails, serve the cached value if it
    /// is still servable then (a refresh, or stale-if-error).
    Lead { leader: Leader<'a>, fallback: bool },
    /// The key's flight is led by a loader that is running this very code.
    OwnFlight,
}

impl SealCache {
    /// The secret under `key`, loading it with `loader` on a miss.
    ///
    /// - On a hit the loader is not called.
    /// - On a miss exactly one caller runs its loader; every concurrent
    ///   caller for the same key waits and receives the same outcome (the
    ///   value, the same "not found", or the same error; a waiter whose
    ///   loader has another error type than the leader's gets
    ///   [`LoadError::LoaderFailedElsewhere`]). Different keys load in
    ///   parallel.
    /// - If `invalidate(key)`, a successful `insert(key, ..)` or
    ///   `invalidate_all()` runs while the load is in flight, the loaded
    ///   value is returned to its callers but not cached (an `insert` that
    ///   was rejected changed nothing, and does not stop the load).
    /// - Errors are never cached; "not found" is cached only with
    ///   [`Builder::negative_ttl`](crate::Builder::negative_ttl).
    /// - With [`refresh_ahead`](crate::Builder::refresh_ahead) and
    ///   [`max_stale`](crate::Builder::max_stale), see their docs.
    /// - A loader must not wait for its own key. If code running inside it
    ///   asks for that key (directly, or through other keys' loaders it
    ///   runs; blocking or async), that call returns
    ///   [`LoadError::Reentrant`] at once. "Inside" is what runs on the
    ///   loader's thread while it runs (or, for an async loader, while it
    ///   is polled): a loader that drives an executor itself (`block_on`)
    ///   makes the other tasks that executor polls meanwhile count as
    ///   inside it too. A cycle across threads or tasks (key A's loader
    ///   waits for key B while B's loader, elsewhere, waits for A) cannot
    ///   be detected and never ends: loaders should read their own
    ///   dependencies from the database, not from the cache.
    ///
    /// ```
    /// use sealcache::{ExposeSecret, SealCache};
    ///
    /// let cache = SealCache::builder().build()?;
    /// let secret = cache
    ///     .get_or_try_load("db/password", || -> Result<_, std::io::Error> {
    ///         Ok(Some("from-the-database"))
    ///     })
    ///     .unwrap()
    ///     .expect("found");
    /// assert_eq!(secret.expose_secret(), b"from-the-database");
    /// # Ok::<(), sealcache::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`LoadError::Loader`] with the loader's error, [`LoadError::LoaderPanicked`]
    /// for waiters of a loader that panicked, [`LoadError::LoaderFailedElsewhere`]
    /// for waiters of a loader that failed with an error of another type, [`LoadError::Reentrant`] for a
    /// loader that asks for its own key, [`LoadError::Cache`] for a cache
    /// error (integrity, fork, ...).
    ///
    /// # Panics
    /// Only if `loader` panics, and then only in the caller that ran it.
    pub fn get_or_try_load<K, V, E, F>(
        &self,
        key: &K,
        loader: F,
    ) -> Result<Option<SecretBytes>, LoadError<E>>
    where
        K: CacheKey + ?Sized,
        V: SecretValue,
        E: Send + Sync + 'static,
        F: FnOnce() -> Result<Option<V>, E>,
    {
        let key = key.key_bytes();
        let mut loader = Some(loader);
        loop {
            match self.first_step(key)? {
                Step::Done(value) => return Ok(value),
                Step::OwnFlight => return Err(LoadError::Reentrant),
                Step::Join(flight) => {
                    bump(&self.load_counters().coalesced_waits);
                    if let Some(result) = self.received::<E>(flight.wait()) {
                        return result;
                    }
                    self.load_counters()
                        .coalesced_waits
                        .fetch_sub(1, Ordering::Relaxed);
                }
                Step::Lead { leader, fallback } => {
                    // A caller leads at most once (it returns right after),
                    // so the loader is always still here.
                    let Some(loader) = loader.take() else {
                        return Err(LoadError::LoaderPanicked);
                    };
                    bump(&self.load_counters().loads);
                    let mark = LeadingMark::new(&leader.flight);
                    let loaded = loader();
                    mark.returned();
                    return self.settle(leader, loaded, fallback);
                }
            }
        }
    }

    /// The async form of [`get_or_try_load`](Self::get_or_try_load), with the
    /// same guarantees. The loader future is only polled by the one caller
    /// that leads the flight; waiting callers do not block executor threads.
    /// Every call builds the future, hits included (a hit drops it
    /// unpolled): put the work inside an `async` block, so that building it
    /// costs only what the block captures.
    /// If the leading future is dropped before it finishes, a waiting caller
    /// takes over; one that is kept but no longer polled (parked in a
    /// `select!` that moved on, say) holds every caller of that key until it
    /// is dropped or the key is invalidated, so drop a leader you stop
    /// polling, or bound the loader with a timeout inside it. Calling the
    /// blocking form, from another task, for a key whose async leader runs
    /// on the same single-threaded executor waits forever (the leader
    /// cannot be polled while that thread blocks). Runtime-agnostic (only
    /// `std::task`).
    ///
    /// # Errors
    /// As [`get_or_try_load`](Self::get_or_try_load).
    ///
    /// Needs the crate feature `async`
    /// (`sealcache = { version = "…", features = ["async"] }`).
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub async fn get_or_try_load_async<K, V, E, Fut>(
        &self,
        key: &K,
        loader: Fut,
    ) -> Result<Option<SecretBytes>, LoadError<E>>
    where
        K: CacheKey + ?Sized,
        V: SecretValue,
        E: Send + Sync + 'static,
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        let key = key.key_bytes();
        let mut loader = Some(loader);
        loop {
            match self.first_step(key)? {
                Step::Done(value) => return Ok(value),
                Step::OwnFlight => return Err(LoadError::Reentrant),
                Step::Join(flight) => {
                    bump(&self.load_counters().coalesced_waits);
                    let outcome = FlightWait { flight }.await;
                    if let Some(result) = self.received::<E>(outcome) {
                        return result;
                    }
                    self.load_counters()
                        .coalesced_waits
                        .fetch_sub(1, Ordering::Relaxed);
                }
                Step::Lead { leader, fallback } => {
                    // As in the blocking form: a caller leads at most once.
                    let Some(loader) = loader.take() else {
                        return Err(LoadError::LoaderPanicked);
                    };
                    bump(&self.load_counters().loads);
                    // Marked as led on whichever thread polls it, while it
                    // is polled.
                    let flight = &*leader.flight;
                    let mut loader = std::pin::pin!(loader);
                    let loaded = std::future::poll_fn(|cx| {
                        let mark = LeadingMark::new(flight);
                        let polled = loader.as_mut().poll(cx);
                        mark.returned();
                        polled
                    })
                    .await;
                    return self.settle(leader, loaded, fallback);
                }
            }
        }
    }

    /// Reads the cache, then joins or starts a flight.
    fn first_step<'a>(&'a self, key: &'a [u8]) -> Result<Step<'a>, Error> {
        if self.forked() {
            return Err(Error::Forked);
        }
        if key.len() > MAX_KEY_LEN {
            return Err(Error::KeyTooLong { len: key.len() });
        }
        let now = self.now();
        let mut fallback = false;
        match self.read_secret(key, now, self.stale_grace(), Stale::Skip)? {
            Read::Hit(secret, expires) => {
                if !self.in_refresh_window(now, expires) {
                    return Ok(Step::Done(Some(secret)));
                }
                let (shard, _) = self.store().locate(key);
                let mut map = self.flights().lock(shard);
                if map.contains_key(key) {
                    // A refresh is running: keep serving the cached value.
                    return Ok(Step::Done(Some(secret)));
                }
                // A refresh (or an insert, or an invalidation) may have
                // changed the entry between our read and this lock, which
                // flights finish under: act on what is there now.
                let fallback = match self.peek_secret(key, now, Stale::Skip)? {
                    Read::Hit(fresh, fresh_expires) if fresh_expires != expires => {
                        return Ok(Step::Done(Some(fresh)));
                    }
                    Read::Hit(..) => {
                        bump(&self.load_counters().refreshes);
                        true
                    }
                    Read::Negative => return Ok(Step::Done(None)),
                    // Gone or expired meanwhile: an ordinary load.
                    Read::Stale(_) => true,
                    Read::Miss => false,
                };
                let leader = self.register(&mut map, key, shard);
                return Ok(Step::Lead { leader, fallback });
            }
            Read::Negative => return Ok(Step::Done(None)),
            Read::Stale(_) => fallback = true,
            Read::Miss => {}
        }
        let (shard, _) = self.store().locate(key);
        let mut map = self.flights().lock(shard);
        if let Some(flight) = map.get(key) {
            if !self.flights().is_fenced(flight) {
                // Called from inside that flight's own loader: waiting for
                // it would never end.
                if led_here(flight) {
                    return Ok(Step::OwnFlight);
                }
                let flight = Arc::clone(flight);
                flight.lock().waiters += 1;
                return Ok(Step::Join(flight));
            }
            // That flight is loading a value from before an invalidation:
            // a caller arriving now must not receive it. Detach it (its
            // leader will neither store nor find itself in the table) and
            // load afresh.
            map.remove(key);
            self.flights().active.fetch_sub(1, Ordering::AcqRel);
        }
        // A flight may have finished between our read and this lock: look
        // again, under the lock that flights finish under.
        match self.peek_secret(key, now, Stale::Skip)? {
            Read::Hit(secret, _) => {
                bump(&self.load_counters().coalesced_waits);
                return Ok(Step::Done(Some(secret)));
            }
            Read::Negative => return Ok(Step::Done(None)),
            Read::Stale(_) | Read::Miss => {}
        }
        let leader = self.register(&mut map, key, shard);
        Ok(Step::Lead { leader, fallback })
    }

    fn register<'a>(&'a self, map: &mut FlightMap, key: &'a [u8], shard: usize) -> Leader<'a> {
        let flights = self.flights();
        let flight = Arc::new(Flight {
            state: Mutex::new(FlightState::default()),
            done: Condvar::new(),
            generation: flights.generation.load(Ordering::Acquire),
            loader_unwound: AtomicBool::new(false),
        });
        map.insert(Box::from(key), Arc::clone(&flight));
        flights.active.fetch_add(1, Ordering::AcqRel);
        Leader {
            cache: self,
            key,
            shard,
            flight,
            done: false,
        }
    }

    fn in_refresh_window(&self, now: u64, expires: u64) -> bool {
        let Some(fraction) = self.settings().refresh_ahead else {
            return false;
        };
        // Measured on the shortest lifetime an entry can have (TTL jitter
        // cuts up to its fraction off the TTL), so that no entry, however
        // jittered, is refreshed before `1 - fraction` of its own lifetime.
        let ttl = crate::clock::nanos(self.settings().ttl) as f64;
        let shortest = ttl * (1.0 - self.settings().ttl_jitter.unwrap_or(0.0));
        let window = (shortest * fraction) as u64;
        now.saturating_add(window) >= expires
    }

    /// Turns a flight's outcome into a waiter's result; `None` means retry.
    fn received<E: Send + Sync + 'static>(
        &self,
        outcome: Outcome,
    ) -> Option<Result<Option<SecretBytes>, LoadError<E>>> {
        Some(match outcome {
            Outcome::Value(Some(shared)) => {
                use secrecy::ExposeSecret;
                Ok(Some(SecretBytes::from(shared.expose_secret())))
            }
            Outcome::Value(None) | Outcome::Abandoned => return None,
            Outcome::NotFound => Ok(None),
            Outcome::Cache(err) => Err(LoadError::Cache(err)),
            Outcome::Panicked => Err(LoadError::LoaderPanicked),
            Outcome::Error(any) => match any.downcast::<E>() {
                Ok(err) => Err(LoadError::Loader(err)),
                // The leader's loader had another error type. Loading again
                // would double the load on a failing database.
                Err(_) => Err(LoadError::LoaderFailedElsewhere),
            },
        })
    }

    /// Stores (unless fenced) and hands out what the leader's loader returned.
    fn settle<V: SecretValue, E: Send + Sync + 'static>(
        &self,
        leader: Leader<'_>,
        loaded: Result<Option<V>, E>,
        fallback: bool,
    ) -> Result<Option<SecretBytes>, LoadError<E>> {
        let key = leader.key;
        match loaded {
            Ok(Some(value)) => {
                let stored = value.with_plaintext(|plaintext| {
                    let mut map = self.flights().lock(leader.shard);
                    if !self.flights().is_fenced(&leader.flight) {
                        self.store_plaintext(key, plaintext, self.now())?;
                    }
                    leader.unregister(&mut map);
                    let waiters = leader.flight.lock().waiters;
                    drop(map);
                    let shared = (waiters > 0).then(|| Arc::new(SecretBytes::from(plaintext)));
                    Ok::<_, Error>((SecretBytes::from(plaintext), shared))
                });
                match stored {
                    Ok((mine, shared)) => {
                        leader.finish(Outcome::Value(shared));
                        Ok(Some(mine))
                    }
                    Err(err) => {
                        leader.finish(Outcome::Cache(err.clone()));
                        Err(LoadError::Cache(err))
                    }
                }
            }
            Ok(None) => {
                {
                    let mut map = self.flights().lock(leader.shard);
                    if !self.flights().is_fenced(&leader.flight) {
                        // The database says it is gone: so is any cached copy.
                        self.store().remove(key);
                        if let Some(negative) = self.settings().negative_ttl {
                            let now = self.now();
                            let expires = now.saturating_add(crate::clock::nanos(negative));
                            // Without a key (the reaper has stopped) the
                            // "not found" is simply not cached.
                            let _ = self.store_negative(key, expires, now);
                        }
                    }
                    leader.unregister(&mut map);
                }
                leader.finish(Outcome::NotFound);
                Ok(None)
            }
            Err(err) => {
                bump(&self.load_counters().load_errors);
                // The fallback is read now, not when the flight started:
                // under the flight table's lock, which `invalidate` also
                // takes, so a value invalidated meanwhile (the entry is
                // gone) or expired meanwhile (past its TTL, or past
                // `max_stale`) is never served, and nobody can join the
                // flight between this read and its end. If an `insert` or
                // `invalidate` fenced the flight, only a live entry is
                // served: it was stored after the fence. After an
                // `invalidate_all`, nothing is.
                let (served, waiters) = {
                    let mut map = self.flights().lock(leader.shard);
                    let flights = self.flights();
                    let served = if fallback && !flights.invalidated_all_since(&leader.flight) {
                        let stale = if leader.flight.lock().fenced {
                            Stale::Skip
                        } else {
                            Stale::Open
                        };
                        match self.peek_secret(key, self.now(), stale) {
                            Ok(Read::Hit(secret, _)) => Some(secret),
                            Ok(Read::Stale(Some(secret))) => {
                                bump(&self.load_counters().stale_served);
                                Some(secret)
                            }
                            Ok(Read::Stale(None) | Read::Negative | Read::Miss) | Err(_) => None,
                        }
                    } else {
                        None
                    };
                    leader.unregister(&mut map);
                    (served, leader.flight.lock().waiters)
                };
                match served {
                    Some(old) => {
                        let shared = (waiters > 0).then(|| {
                            use secrecy::ExposeSecret;
                            Arc::new(SecretBytes::from(old.expose_secret()))
                        });
                        leader.finish(Outcome::Value(shared));
                        Ok(Some(old))
                    }
                    None => {
                        let err = Arc::new(err);
                        leader.finish(Outcome::Error(err.clone() as Arc<dyn Any + Send + Sync>));
                        Err(LoadError::Loader(err))
                    }
                }
            }
        }
    }
}
