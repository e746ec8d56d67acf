//! The HTTP service of the `http_server` example, shared with its
//! integration test (`tests/http_server.rs`).
//!
//! Clients present an API key `<id>.<secret>` in `x-api-key` or
//! `Authorization: Bearer`. The server looks the stored secret of `<id>` up
//! through [`SealCache::get_or_try_load_async`] (one database read per key
//! per TTL, however many requests arrive at once) and compares it in
//! constant time. Ids that name no stored key are refused before the
//! cache, so made-up ids cost the database nothing. `POST
//! /admin/rotate/{id}`, for the `admin` key only, gives `<id>` a new secret
//! in the database and invalidates the cached one, so the old key stops
//! working with that response.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sealcache::{SealCache, SecretBytes};
use tokio::net::TcpListener;
use zeroize::Zeroizing;

use crate::store::{self, CredentialStore, StoreConn, StoreError};

/// The id of the administrator's API key.
pub const ADMIN: &str = "admin";
/// Longest accepted key id; longer ones are rejected before any lookup.
const MAX_ID_LEN: usize = 64;
/// Random bytes in a key's secret part (hex-encoded).
const SECRET_BYTES: usize = 24;
/// Idle database connections kept for reuse.
const MAX_IDLE_CONNECTIONS: usize = 8;

/// What the handlers share: the cache, the database behind it, and the ids
/// of the keys that exist.
#[derive(Clone)]
pub struct AppState {
    cache: SealCache,
    pool: Arc<ConnPool>,
    known_ids: Arc<HashSet<String>>,
}

impl AppState {
    /// Serves keys from `store` through `cache`. Reads the ids of the stored
    /// keys once (ids are not secret, and this example creates none at run
    /// time): a request naming any other id is refused before the cache.
    /// Otherwise each request with a made-up id would be a database read,
    /// since no cache absorbs misses on keys that do not exist; a real
    /// server would also rate-limit.
    pub fn new(cache: SealCache, store: CredentialStore) -> Result<Self, StoreError> {
        let known_ids = store.connect()?.names()?.into_iter().collect();
        Ok(Self {
            cache,
            pool: Arc::new(ConnPool {
                store,
                idle: Mutex::new(Vec::new()),
            }),
            known_ids: Arc::new(known_ids),
        })
    }
}

/// The routes: `GET /whoami`, `GET /admin/stats`, `POST /admin/rotate/{id}`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/whoami", get(whoami))
        .route("/admin/stats", get(stats))
        .route("/admin/rotate/{id}", post(rotate))
        .with_state(state)
}

/// Serves `state` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The API keys created by [`seed`]. Secrets: do not log them.
pub struct SeededKeys {
    /// The administrator's key.
    pub admin: Zeroizing<String>,
    /// One key per client, `client-0001` first.
    pub clients: Vec<Zeroizing<String>>,
}

/// Stores a fresh admin key and `clients` client keys in `store`.
pub fn seed(store: &CredentialStore, clients: usize) -> Result<SeededKeys, StoreError> {
    let ids: Vec<String> = std::iter::once(ADMIN.to_owned())
        .chain((1..=clients).map(client_id))
        .collect();
    let secrets = ids
        .iter()
        .map(|_| store::random_secret(SECRET_BYTES).map(Zeroizing::new))
        .collect::<Result<Vec<_>, _>>()?;
    let rows = ids
        .iter()
        .zip(&secrets)
        .map(|(id, s)| (id.as_str(), s.as_bytes()));
    store.connect()?.insert_all(rows)?;
    let mut keys = ids.iter().zip(&secrets).map(|(id, s)| api_key(id, s));
    let admin = keys.next().ok_or(StoreError::Random)?;
    Ok(SeededKeys {
        admin,
        clients: keys.collect(),
    })
}

/// The id of the `n`-th client key.
pub fn client_id(n: usize) -> String {
    format!("client-{n:04}")
}

/// The API key presented for `id` with `secret`.
pub fn api_key(id: &str, secret: &str) -> Zeroizing<String> {
    Zeroizing::new(format!("{id}.{secret}"))
}

/// Why a request is not served.
#[derive(Debug)]
enum Denied {
    /// No key, an unknown key, or a wrong secret (401, indistinguishable).
    Unauthorised,
    /// A valid key without the right to this endpoint (403).
    Forbidden,
    /// No such key to rotate (404).
    NotFound,
    /// The database or the cache failed (500; details go to stderr).
    Internal,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        let status = match self {
            Self::Unauthorised => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut response = (status, format!("{}\n", status.as_str())).into_response();
        if status == StatusCode::UNAUTHORIZED {
            let challenge = HeaderValue::from_static("Bearer");
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

/// Logs a server-side failure and turns it into a 500.
fn internal(err: impl fmt::Display) -> Denied {
    eprintln!("http_server: {err}");
    Denied::Internal
}

async fn whoami(State(state): State<AppState>, headers: HeaderMap) -> Result<String, Denied> {
    let id = authorise(&state, &headers).await?;
    Ok(format!("authorised as {id}\n"))
}

async fn stats(State(state): State<AppState>, headers: HeaderMap) -> Result<String, Denied> {
    require_admin(&state, &headers).await?;
    let stats = state.cache.stats();
    Ok(format!(
        "database queries: {}\ncache hits: {}\nloads: {}\nloads coalesced: {}\nlive epoch keys: {}\nprotections: {}\n",
        state.pool.store.queries(),
        stats.hits,
        stats.loads,
        stats.coalesced_waits,
        stats.live_keys,
        state.cache.protections(),
    ))
}

async fn rotate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<String, Denied> {
    require_admin(&state, &headers).await?;
    if !valid_id(&id) {
        return Err(Denied::NotFound);
    }
    let secret = Zeroizing::new(store::random_secret(SECRET_BYTES).map_err(internal)?);
    let new_key = api_key(&id, &secret);
    let name = id.clone();
    let rotated = state
        .pool
        .blocking(move |conn| conn.rotate(&name, secret.as_bytes()))
        .await
        .map_err(internal)?;
    // The database now holds the new secret: drop the cached one. This also
    // fences a load of the old secret still in flight, so it is not cached.
    state.cache.invalidate(&cache_key(&id));
    if !rotated {
        return Err(Denied::NotFound);
    }
    Ok(format!("{}\n", new_key.as_str()))
}

async fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), Denied> {
    match authorise(state, headers).await? {
        id if id == ADMIN => Ok(()),
        _ => Err(Denied::Forbidden),
    }
}

/// The id of the caller's API key, if the key is valid.
async fn authorise(state: &AppState, headers: &HeaderMap) -> Result<String, Denied> {
    let presented = presented_key(headers).ok_or(Denied::Unauthorised)?;
    let (id, secret) = presented
        .split_once('.')
        .filter(|(id, _)| valid_id(id) && state.known_ids.contains(*id))
        .ok_or(Denied::Unauthorised)?;
    let stored = stored_secret(state, id)
        .await?
        .ok_or(Denied::Unauthorised)?;
    // SecretBytes compares in constant time.
    if stored == SecretBytes::from(secret) {
        Ok(id.to_owned())
    } else {
        Err(Denied::Unauthorised)
    }
}

/// The key from `x-api-key`, or else from `Authorization: Bearer`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(key) = headers.get("x-api-key") {
        return key.to_str().ok();
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Ids are short and plain, so nothing odd reaches the cache or the database.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn cache_key(id: &str) -> String {
    format!("api-key/{id}")
}

/// The stored secret of `id`: from the cache, or one database read shared
/// by every request for `id` that misses at the same time.
async fn stored_secret(state: &AppState, id: &str) -> Result<Option<SecretBytes>, Denied> {
    let pool = Arc::clone(&state.pool);
    let name = id.to_owned();
    let load = async move { pool.blocking(move |conn| conn.fetch(&name)).await };
    state
        .cache
        .get_or_try_load_async(&cache_key(id), load)
        .await
        .map_err(internal)
}

/// Why a database task failed.
#[derive(Debug)]
enum BackendError {
    Store(StoreError),
    /// The blocking task panicked or was cancelled.
    TaskFailed,
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Store(err) => write!(f, "credential store: {err}"),
            Self::TaskFailed => f.write_str("a database task failed"),
        }
    }
}

impl std::error::Error for BackendError {}

/// SQLite connections for blocking tasks (a connection is used by one
/// thread at a time).
struct ConnPool {
    store: CredentialStore,
    idle: Mutex<Vec<StoreConn>>,
}

impl ConnPool {
    /// Runs `f` with a connection on tokio's blocking thread pool.
    async fn blocking<T, F>(self: &Arc<Self>, f: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(&mut StoreConn) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || pool.with_conn(f))
            .await
            .map_err(|_| BackendError::TaskFailed)?
            .map_err(BackendError::Store)
    }

    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut StoreConn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let idle = self.idle().pop();
        let mut conn = match idle {
            Some(conn) => conn,
            None => self.store.connect()?,
        };
        let result = f(&mut conn);
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE_CONNECTIONS {
            idle.push(conn);
        }
        result
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<StoreConn>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
