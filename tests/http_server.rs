//! The `http_server` example's service, run on 127.0.0.1 with an ephemeral
//! port and driven over real TCP connections (a minimal HTTP/1.1 client, so
//! no HTTP client dependency).
//!
//! Ordering is made by observation, never by sleeping: a gate in the
//! credential store holds a chosen key's database read open, and the tests
//! wait (bounded) for what they need to have happened — a read to be held,
//! requests to have joined its flight — before going on.

#[allow(dead_code)] // Shared with the examples; the test uses part of it.
#[path = "../examples/common/store.rs"]
mod store;

#[allow(dead_code)]
#[path = "../examples/common/server.rs"]
mod server;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sealcache::SealCache;
use store::{CredentialStore, StoreOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Upper bound on any wait: a broken build fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(30);

/// Holds database reads of one chosen credential after their query, until
/// released; counts the reads it held.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    held: Option<String>,
    arrived: usize,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn hold(&self, name: &str) {
        let mut state = self.lock();
        state.held = Some(name.to_owned());
        state.arrived = 0;
    }

    fn release(&self) {
        self.lock().held = None;
        self.changed.notify_all();
    }

    fn arrived(&self) -> usize {
        self.lock().arrived
    }

    /// The store's `after_query` hook (runs on a blocking thread).
    fn pass(&self, name: &str) {
        let mut state = self.lock();
        if state.held.as_deref() != Some(name) {
            return;
        }
        state.arrived += 1;
        let deadline = Instant::now() + PATIENCE;
        while state.held.as_deref() == Some(name) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// A running server and handles on what is behind it.
struct Server {
    addr: SocketAddr,
    store: CredentialStore,
    cache: SealCache,
    gate: Arc<Gate>,
    keys: server::SeededKeys,
    _shutdown: oneshot::Sender<()>,
}

impl Server {
    async fn start() -> Self {
        let gate = Arc::new(Gate::default());
        let hook = Arc::clone(&gate);
        let store = CredentialStore::create(StoreOptions {
            latency: Duration::ZERO,
            after_query: Some(Arc::new(move |name: &str| hook.pass(name))),
        })
        .expect("create the database");
        let keys = server::seed(&store, 3).expect("seed keys");
        let cache = SealCache::builder().build().expect("build the cache");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let state = server::AppState::new(cache.clone(), store.clone()).expect("read key ids");
        tokio::spawn(server::serve(listener, state, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            store,
            cache,
            gate,
            keys,
            _shutdown: shutdown,
        }
    }

    fn client_key(&self, n: usize) -> String {
        self.keys.clients[n - 1].as_str().to_owned()
    }

    fn admin_key(&self) -> String {
        self.keys.admin.as_str().to_owned()
    }

    async fn whoami(&self, key: &str) -> u16 {
        call(self.addr, "GET", "/whoami", &api_key_header(key))
            .await
            .0
    }

    /// Rotates client `n`'s key; returns the new key.
    async fn rotate(&self, n: usize) -> String {
        let path = format!("/admin/rotate/{}", server::client_id(n));
        let (status, body) =
            call(self.addr, "POST", &path, &api_key_header(&self.admin_key())).await;
        assert_eq!(status, 200, "rotation failed: {body}");
        body.trim().to_owned()
    }

    fn coalesced(&self) -> u64 {
        self.cache.stats().coalesced_waits
    }
}

fn api_key_header(key: &str) -> String {
    format!("x-api-key: {key}\r\n")
}

/// One HTTP/1.1 exchange on a fresh connection: (status, body).
async fn call(addr: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String) {
    tokio::time::timeout(PATIENCE, exchange(addr, method, path, headers))
        .await
        .expect("the server answers in time")
        .expect("HTTP exchange")
}

async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{headers}connection: close\r\ncontent-length: 0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok((status, body.to_owned()))
}

/// Waits (bounded, yielding) until `ready` holds.
async fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !ready() {
        assert!(Instant::now() < deadline, "gave up waiting until {what}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_are_authorised_by_api_key() {
    let server = Server::start().await;
    let key = server.client_key(1);
    let addr = server.addr;
    assert_eq!(server.whoami(&key).await, 200);
    let (status, body) = call(
        addr,
        "GET",
        "/whoami",
        &format!("authorization: Bearer {key}\r\n"),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (200, "authorised as client-0001\n")
    );

    let wrong_secret = format!("{}x", key);
    let other_id = key.replacen("client-0001", "client-0002", 1);
    for bad in [
        wrong_secret.as_str(),
        other_id.as_str(),
        "client-9999.abc",
        "nodot",
        ".",
        "Admin.x",
    ] {
        assert_eq!(server.whoami(bad).await, 401, "key {bad:?}");
    }
    assert_eq!(call(addr, "GET", "/whoami", "").await.0, 401, "no key");
    let basic = "authorization: Basic dXNlcjpwYXNz\r\n";
    assert_eq!(
        call(addr, "GET", "/whoami", basic).await.0,
        401,
        "not a bearer token"
    );

    let as_client = api_key_header(&key);
    assert_eq!(
        call(addr, "POST", "/admin/rotate/client-0002", &as_client)
            .await
            .0,
        403
    );
    assert_eq!(call(addr, "GET", "/admin/stats", &as_client).await.0, 403);
    let as_admin = api_key_header(&server.admin_key());
    assert_eq!(
        call(addr, "POST", "/admin/rotate/nobody", &as_admin)
            .await
            .0,
        404
    );
    assert_eq!(call(addr, "GET", "/admin/stats", &as_admin).await.0, 200);
}

/// Requests with the old key run concurrently with the rotation; every one
/// sent after the rotation's response must be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_request_after_a_rotation_is_authorised_with_the_old_key() {
    const CLIENTS: usize = 8;
    const AFTER: usize = 10;
    let server = Arc::new(Server::start().await);
    let old = server.client_key(1);
    assert_eq!(server.whoami(&old).await, 200, "cached before the rotation");
    let rotated = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(hammer(
                Arc::clone(&server),
                old.clone(),
                Arc::clone(&rotated),
                AFTER,
            ))
        })
        .collect();
    let new = server.rotate(1).await;
    rotated.store(true, Ordering::SeqCst);
    for client in clients {
        let after: Vec<u16> = client.await.expect("client task");
        assert_eq!(after.len(), AFTER);
        assert!(
            after.iter().all(|&s| s == 401),
            "old key accepted after rotation: {after:?}"
        );
    }
    assert_eq!(server.whoami(&old).await, 401);
    assert_eq!(server.whoami(&new).await, 200);
}

/// Sends requests with `key` until `after` of them were sent after
/// `rotated` was set; returns the statuses of those.
async fn hammer(
    server: Arc<Server>,
    key: String,
    rotated: Arc<AtomicBool>,
    after: usize,
) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(after);
    for _ in 0..100_000 {
        let sent_after = rotated.load(Ordering::SeqCst);
        let status = server.whoami(&key).await;
        if sent_after {
            statuses.push(status);
            if statuses.len() == after {
                break;
            }
        }
    }
    statuses
}

/// A load that read the old secret before the rotation, and is still in
/// flight when the rotation's response is sent, must not authorise a
/// request that arrives after that response (nor be cached).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_in_flight_during_a_rotation_does_not_authorise_later_requests() {
    let server = Arc::new(Server::start().await);
    let old = server.client_key(2);
    let admin = server.admin_key();
    assert_eq!(server.whoami(&admin).await, 200, "admin key cached");

    server.gate.hold("client-0002");
    let before = tokio::spawn({
        let (server, old) = (Arc::clone(&server), old.clone());
        async move { server.whoami(&old).await }
    });
    wait_until("the old secret is read", || server.gate.arrived() == 1).await;
    let new = server.rotate(2).await;

    let coalesced = server.coalesced();
    let after = tokio::spawn({
        let (server, old) = (Arc::clone(&server), old.clone());
        async move { server.whoami(&old).await }
    });
    wait_until(
        "the later request joined a flight or started a load",
        || server.coalesced() > coalesced || server.gate.arrived() == 2,
    )
    .await;
    server.gate.release();

    let before = before.await.expect("request task");
    assert!(
        before == 200 || before == 401,
        "sent before the rotation's response: {before}"
    );
    assert_eq!(
        after.await.expect("request task"),
        401,
        "old key accepted after the rotation"
    );
    assert_eq!(server.whoami(&old).await, 401, "the old secret was cached");
    assert_eq!(server.whoami(&new).await, 200);
}

/// Made-up key ids are refused before the cache: a flood of them (each a
/// miss no cache can absorb) costs the database nothing.
#[tokio::test]
async fn requests_naming_unknown_key_ids_never_reach_the_database() {
    let server = Server::start().await;
    let queries = server.store.queries();
    for n in 0..10 {
        for id in [format!("client-{:04}", 9_000 + n), format!("zzz{n}")] {
            assert_eq!(server.whoami(&format!("{id}.abc")).await, 401, "{id}");
        }
    }
    assert_eq!(server.store.queries() - queries, 0, "database queries");
    // A known id with a wrong secret is refused too, after one read.
    assert_eq!(server.whoami("client-0001.wrong").await, 401);
    assert_eq!(server.store.queries() - queries, 1, "database queries");
    assert_eq!(server.whoami(&server.client_key(1)).await, 200);
    assert_eq!(server.store.queries() - queries, 1, "served from the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_100_requests_for_an_uncached_key_makes_one_database_query() {
    const BURST: u64 = 100;
    let server = Arc::new(Server::start().await);
    let key = server.client_key(3);
    let queries = server.store.queries();
    let loads = server.cache.stats().loads;
    let coalesced = server.coalesced();

    server.gate.hold("client-0003");
    let requests: Vec<_> = (0..BURST)
        .map(|_| {
            let (server, key) = (Arc::clone(&server), key.clone());
            tokio::spawn(async move { server.whoami(&key).await })
        })
        .collect();
    wait_until(
        "one read is held and every other request waits on it",
        || server.gate.arrived() == 1 && server.coalesced() - coalesced >= BURST - 1,
    )
    .await;
    server.gate.release();

    for request in requests {
        assert_eq!(request.await.expect("request task"), 200);
    }
    assert_eq!(server.store.queries() - queries, 1, "database queries");
    assert_eq!(server.cache.stats().loads - loads, 1, "loads");
}
