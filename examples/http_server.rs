//! An HTTP service that authorises every request by an API key, looked up
//! through sealcache in front of an SQLite database of keys encrypted at
//! rest.
//!
//! Run with `cargo run --release --features async --example http_server`,
//! then, with a key it prints:
//!
//! ```text
//! curl -H 'x-api-key: client-0001.<secret>' http://127.0.0.1:PORT/whoami
//! curl -H 'Authorization: Bearer admin.<secret>' http://127.0.0.1:PORT/admin/stats
//! curl -X POST -H 'x-api-key: admin.<secret>' http://127.0.0.1:PORT/admin/rotate/client-0001
//! ```
//!
//! Flags: `--port <N>` (default 0: any free port), `--clients <N>`
//! (default 100). It listens on 127.0.0.1 only and stops on Ctrl-C.

#[allow(dead_code)] // Shared with the demo, which uses other parts of it.
#[path = "common/store.rs"]
mod store;

#[path = "common/server.rs"]
mod server;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use sealcache::{Protection, SealCache};
use store::{CredentialStore, StoreOptions};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const HELP: &str = "\
USAGE: cargo run --release --features async --example http_server -- [FLAGS]

FLAGS:
  --port <N>       port on 127.0.0.1, 0..=65535 (default 0: any free port)
  --clients <N>    client API keys to create, 1..=100000 (default 100)
  -h, --help       print this help
";

struct Args {
    port: u16,
    clients: usize,
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("http_server: {err}\nRun with --help for usage.");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("http_server failed: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `Ok(None)` means `--help`.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut parsed = Args {
        port: 0,
        clients: 100,
    };
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--port" => parsed.port = number(&flag, &value, 0, 65_535)? as u16,
            "--clients" => parsed.clients = number(&flag, &value, 1, 100_000)? as usize,
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    Ok(Some(parsed))
}

fn number(flag: &str, value: &str, min: u64, max: u64) -> Result<u64, String> {
    value
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            format!("{flag} {value:?} is not valid: expected a whole number in {min}..={max}")
        })
}

fn run(args: &Args) -> Result<(), BoxError> {
    let store = CredentialStore::create(StoreOptions::default())?;
    let keys = server::seed(&store, args.clients)?;
    let cache = build_cache(args.clients + 1)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, args.port)))
                .await?;
        let addr = listener.local_addr()?;
        // Printed for the person trying the example; a real server never
        // prints its keys.
        println!("listening on http://{addr}");
        println!("admin key:  {}", keys.admin.as_str());
        if let Some(client) = keys.clients.first() {
            println!("client key: {}", client.as_str());
        }
        drop(keys);
        let state = server::AppState::new(cache, store)?;
        server::serve(listener, state, ctrl_c()).await?;
        println!("stopped");
        Ok(())
    })
}

async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        // No signal handling here: run until the process is killed.
        std::future::pending::<()>().await;
    }
}

/// Locked memory is required; without it (a low `ulimit -l`, say) the
/// example runs best-effort and says so.
fn build_cache(max_entries: usize) -> Result<SealCache, sealcache::Error> {
    let builder = || {
        SealCache::builder()
            .ttl(Duration::from_secs(60))
            .max_entries(max_entries)
    };
    match builder().build() {
        Err(sealcache::Error::Protection(failure)) => {
            eprintln!("warning: running best-effort: {failure}");
            builder().protection(Protection::BestEffort).build()
        }
        other => other,
    }
}
