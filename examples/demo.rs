//! sealcache in front of a real database, in under 30 seconds.
//!
//! Creates an SQLite database of credentials encrypted at rest under a
//! key-encryption key, then lets worker threads request credentials with a
//! Zipf-distributed popularity (a few are hot, most are cold): first straight
//! from the database, then through `SealCache::get_or_try_load`. Prints both
//! runs side by side, then walks through a credential rotation and the
//! reaper wiping epoch keys after a short TTL.
//!
//! Run with `cargo run --release --example demo` (`-- --help` for flags).

#[allow(dead_code)] // Shared with the HTTP server example, which uses more of it.
#[path = "common/store.rs"]
mod store;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use sealcache::{Error, ExposeSecret, Protection, SealCache, SecretBytes, Stats};
use store::{CredentialStore, StoreConn, StoreOptions};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The Zipf exponent of key popularity (1.0: the k-th key is requested
/// about 1/k as often as the first).
const ZIPF_EXPONENT: f64 = 1.0;
/// Bytes of randomness per credential (hex-encoded when stored).
const SECRET_BYTES: usize = 24;
/// The shortened TTL of the lifecycle part, unless `--ttl` is shorter.
const LIFECYCLE_TTL_SECS: u64 = 2;

fn main() -> ExitCode {
    let args = match cli::parse(std::env::args().skip(1)) {
        Ok(cli::Parsed::Run(args)) => args,
        Ok(cli::Parsed::Help) => {
            print!("{}", cli::HELP);
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("demo: {err}\nRun with --help for usage.");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("\ndemo failed: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &cli::Args) -> Result<(), BoxError> {
    let started = Instant::now();
    let store = CredentialStore::create(StoreOptions {
        latency: args.db_latency,
        after_query: None,
    })?;
    let names = seed_database(&store, args.keys)?;
    println!(
        "sealcache demo: {} credentials encrypted at rest in SQLite ({}), {} workers, {} s per run, Zipf({ZIPF_EXPONENT}) popularity{}",
        args.keys,
        store.path().display(),
        args.workers,
        args.duration.as_secs(),
        latency_note(args.db_latency),
    );
    let (cache, warning) = build_cache(args.ttl, args.keys)?;
    if let Some(warning) = warning {
        println!("warning: {warning}");
    }
    let workload = Arc::new(Workload {
        names,
        zipf: Zipf::new(args.keys, ZIPF_EXPONENT),
    });
    let baseline = bench::run_phase(&store, &workload, None, args)?;
    let cached = bench::run_phase(&store, &workload, Some(&cache), args)?;
    report::table(&baseline, &cached);
    lifecycle::rotation(&store, &cache, &workload.names[0])?;
    lifecycle::expiry(&store, &workload.names, args.ttl.min(LIFECYCLE_TTL_SECS))?;
    println!("\ndone in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn latency_note(latency: Duration) -> String {
    if latency.is_zero() {
        String::new()
    } else {
        format!(", +{} ms per database read", latency.as_millis())
    }
}

/// Fills the database with `keys` random credentials; returns their names.
fn seed_database(store: &CredentialStore, keys: usize) -> Result<Vec<String>, BoxError> {
    let names: Vec<String> = (0..keys).map(|i| format!("db/tenant-{i:06}")).collect();
    let secrets = names
        .iter()
        .map(|_| store::random_secret(SECRET_BYTES).map(zeroize::Zeroizing::new))
        .collect::<Result<Vec<_>, _>>()?;
    let rows = names
        .iter()
        .zip(&secrets)
        .map(|(n, s)| (n.as_str(), s.as_bytes()));
    store.connect()?.insert_all(rows)?;
    Ok(names)
}

/// The cache under test. Locked memory is required; if this machine cannot
/// give it (a low `ulimit -l`, say) the demo runs best-effort and says so.
fn build_cache(ttl_secs: u64, keys: usize) -> Result<(SealCache, Option<String>), Error> {
    let builder = || {
        SealCache::builder()
            .ttl(Duration::from_secs(ttl_secs))
            .max_entries(keys)
    };
    match builder().build() {
        Ok(cache) => Ok((cache, None)),
        Err(Error::Protection(failure)) => {
            let cache = builder().protection(Protection::BestEffort).build()?;
            Ok((cache, Some(format!("running best-effort: {failure}"))))
        }
        Err(err) => Err(err),
    }
}

/// What the workers request: credential names and their popularity.
struct Workload {
    names: Vec<String>,
    zipf: Zipf,
}

/// One request for `name`: from the database, or through the cache.
fn request(
    cache: Option<&SealCache>,
    conn: &mut StoreConn,
    name: &str,
) -> Result<SecretBytes, BoxError> {
    let secret = match cache {
        None => conn.fetch(name)?,
        Some(cache) => cache.get_or_try_load(name, || conn.fetch(name))?,
    };
    secret.ok_or_else(|| format!("credential {name} is missing").into())
}

mod bench {
    //! The two timed runs.

    use super::*;

    /// What one run measured.
    pub struct PhaseResult {
        pub label: &'static str,
        pub requests: u64,
        pub elapsed: Duration,
        pub queries: u64,
        pub latency: Histogram,
        pub cache: Option<CacheReport>,
    }

    /// What the cache reported at the end of its run.
    pub struct CacheReport {
        pub stats: Stats,
        pub locked_bytes: usize,
        pub protections: String,
    }

    /// State shared by the workers of one run.
    struct Phase<'a> {
        label: &'static str,
        workload: &'a Workload,
        cache: Option<&'a SealCache>,
        stop: AtomicBool,
        counts: Vec<CachePadded<AtomicU64>>,
    }

    pub fn run_phase(
        store: &CredentialStore,
        workload: &Workload,
        cache: Option<&SealCache>,
        args: &cli::Args,
    ) -> Result<PhaseResult, BoxError> {
        let label = if cache.is_some() {
            "sealcache"
        } else {
            "no cache"
        };
        let phase = Phase {
            label,
            workload,
            cache,
            stop: AtomicBool::new(false),
            counts: (0..args.workers).map(|_| CachePadded::default()).collect(),
        };
        let conns = (0..args.workers)
            .map(|_| store.connect())
            .collect::<Result<Vec<_>, _>>()?;
        let queries_before = store.queries();
        let started = Instant::now();
        let histograms = thread::scope(|scope| {
            let handles: Vec<_> = conns
                .into_iter()
                .enumerate()
                .map(|(i, conn)| {
                    let phase = &phase;
                    scope.spawn(move || worker(phase, i, conn))
                })
                .collect();
            let progress = progress(&phase, store, queries_before, started, args.duration);
            phase.stop.store(true, Ordering::Relaxed);
            let results: Vec<_> = handles.into_iter().map(join).collect();
            progress.and(Ok(results))
        })?;
        let elapsed = started.elapsed();
        let mut latency = Histogram::default();
        for histogram in histograms {
            latency.merge(&histogram?);
        }
        Ok(PhaseResult {
            label,
            requests: latency.count(),
            elapsed,
            queries: store.queries() - queries_before,
            latency,
            cache: cache.map(|cache| CacheReport {
                stats: cache.stats(),
                locked_bytes: cache.locked_bytes(),
                protections: cache.protections().to_string(),
            }),
        })
    }

    fn join(
        handle: thread::ScopedJoinHandle<'_, Result<Histogram, BoxError>>,
    ) -> Result<Histogram, BoxError> {
        handle
            .join()
            .unwrap_or_else(|_| Err("a worker thread panicked".into()))
    }

    /// Requests credentials until told to stop; returns its latencies.
    fn worker(phase: &Phase<'_>, index: usize, mut conn: StoreConn) -> Result<Histogram, BoxError> {
        let mut rng = XorShift::new(index as u64);
        let mut latency = Histogram::default();
        let count = &phase.counts[index];
        while !phase.stop.load(Ordering::Relaxed) {
            let name = &phase.workload.names[phase.workload.zipf.sample(&mut rng)];
            let start = Instant::now();
            let secret = request(phase.cache, &mut conn, name);
            latency.record(start.elapsed());
            std::hint::black_box(secret?.len());
            count.fetch_add(1, Ordering::Relaxed);
        }
        Ok(latency)
    }

    /// Shows a progress line (rewritten in place on a terminal, one line a
    /// second otherwise) until `duration` has passed.
    fn progress(
        phase: &Phase<'_>,
        store: &CredentialStore,
        queries_before: u64,
        started: Instant,
        duration: Duration,
    ) -> Result<(), BoxError> {
        let tty = std::io::stdout().is_terminal();
        let tick = Duration::from_millis(if tty { 200 } else { 1000 });
        let mut out = std::io::stdout().lock();
        loop {
            let left = duration.saturating_sub(started.elapsed());
            thread::sleep(tick.min(left));
            let elapsed = started.elapsed();
            let requests: u64 = phase.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum();
            let done = elapsed >= duration;
            write!(
                out,
                "  [{:>9}] {:4.1} s  {:>11} requests  {:>11} req/s  {:>9} db queries{}",
                phase.label,
                elapsed.as_secs_f64(),
                report::thousands(requests),
                report::thousands(per_second(requests, elapsed)),
                report::thousands(store.queries() - queries_before),
                if tty && !done { "\r" } else { "\n" },
            )?;
            out.flush()?;
            if done {
                return Ok(());
            }
        }
    }

    pub fn per_second(count: u64, elapsed: Duration) -> u64 {
        let secs = elapsed.as_secs_f64();
        if secs > 0.0 {
            (count as f64 / secs) as u64
        } else {
            0
        }
    }
}

mod report {
    //! The side-by-side table.

    use super::bench::{PhaseResult, per_second};
    use super::*;

    pub fn table(base: &PhaseResult, cached: &PhaseResult) {
        println!();
        row("", base.label.into(), cached.label.into());
        row("requests/s", rate(base), rate(cached));
        row(
            "requests",
            thousands(base.requests),
            thousands(cached.requests),
        );
        row(
            "database queries",
            thousands(base.queries),
            thousands(cached.queries),
        );
        row("hit ratio", hit_ratio(base), hit_ratio(cached));
        for (name, q) in [("latency p50", 0.50), ("latency p99", 0.99)] {
            row(
                name,
                micros(base.latency.quantile(q)),
                micros(cached.latency.quantile(q)),
            );
        }
        row(
            "latency max",
            micros(base.latency.max()),
            micros(cached.latency.max()),
        );
        let stat = |f: fn(&bench::CacheReport) -> String| {
            (
                base.cache.as_ref().map_or("-".into(), f),
                cached.cache.as_ref().map_or("-".into(), f),
            )
        };
        let (a, b) = stat(|c| thousands(c.stats.coalesced_waits));
        row("loads coalesced", a, b);
        let (a, b) = stat(|c| c.stats.live_keys.to_string());
        row("live epoch keys", a, b);
        let (a, b) = stat(|c| thousands(c.locked_bytes as u64));
        row("locked bytes", a, b);
        if let Some(report) = &cached.cache {
            println!("  active protections: {}", report.protections);
        }
        summary(base, cached);
    }

    fn summary(base: &PhaseResult, cached: &PhaseResult) {
        let speedup = rate_f(cached) / rate_f(base).max(f64::MIN_POSITIVE);
        let query_share = 100.0 * cached.queries as f64 / cached.requests.max(1) as f64;
        println!(
            "\n  the cache served {speedup:.1}x the requests per second; {query_share:.2}% of its requests reached the database"
        );
    }

    fn row(name: &str, a: String, b: String) {
        println!("  {name:<24}{a:>16}{b:>16}");
    }

    fn rate_f(phase: &PhaseResult) -> f64 {
        phase.requests as f64 / phase.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    fn rate(phase: &PhaseResult) -> String {
        thousands(per_second(phase.requests, phase.elapsed))
    }

    fn hit_ratio(phase: &PhaseResult) -> String {
        let served = phase.requests.saturating_sub(phase.queries);
        format!(
            "{:.2}%",
            100.0 * served as f64 / phase.requests.max(1) as f64
        )
    }

    fn micros(nanos: u64) -> String {
        if nanos < 1_000_000 {
            format!("{:.1} µs", nanos as f64 / 1e3)
        } else {
            format!("{:.1} ms", nanos as f64 / 1e6)
        }
    }

    /// `1234567` as `1,234,567`.
    pub fn thousands(n: u64) -> String {
        let digits = n.to_string();
        let mut out = String::with_capacity(digits.len() + digits.len() / 3);
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    }
}

mod lifecycle {
    //! Rotation with invalidation, and expiry with key wiping.

    use super::*;

    /// Rotates `name` in the database and invalidates it in the cache.
    pub fn rotation(
        store: &CredentialStore,
        cache: &SealCache,
        name: &str,
    ) -> Result<(), BoxError> {
        println!("\nLifecycle of {name}");
        let mut conn = store.connect()?;
        let before = store.queries();
        let old = request(Some(cache), &mut conn, name)?;
        println!(
            "  request:                  the current secret (db queries +{})",
            store.queries() - before
        );
        let new_secret = zeroize::Zeroizing::new(store::random_secret(SECRET_BYTES)?);
        conn.rotate(name, new_secret.as_bytes())?;
        let stale = request(Some(cache), &mut conn, name)?;
        // Compared, never printed (`SecretBytes` compares in constant time).
        let answer = if stale == old {
            "the old secret"
        } else {
            "another secret"
        };
        println!("  rotated in the database:  the cache still answers {answer} until told");
        let removed = cache.invalidate(name);
        let before = store.queries();
        let fresh = request(Some(cache), &mut conn, name)?;
        let verdict = if fresh.expose_secret() == new_secret.as_bytes() {
            "the rotated secret"
        } else {
            "NOT the rotated secret"
        };
        println!(
            "  cache.invalidate() = {removed}: next request (db queries +{}), {verdict}",
            store.queries() - before,
        );
        Ok(())
    }

    /// Loads credentials into a short-TTL cache, then waits for the reaper
    /// to wipe the epoch keys they were sealed under.
    pub fn expiry(
        store: &CredentialStore,
        names: &[String],
        ttl_secs: u64,
    ) -> Result<(), BoxError> {
        let (cache, _) = build_cache(ttl_secs, names.len())?;
        let mut conn = store.connect()?;
        let loaded = names.len().min(100);
        for name in &names[..loaded] {
            request(Some(&cache), &mut conn, name)?;
        }
        let start = Instant::now();
        println!(
            "\nA cache with ttl {ttl_secs} s (epochs of {} ms): {loaded} credentials loaded",
            cache.epoch_length().as_millis()
        );
        print_keys("  now", &cache.stats(), cache.len());
        // The last key is wiped one epoch plus one TTL after it was created.
        let deadline = start + cache.epoch_length() + cache.ttl() + Duration::from_secs(2);
        while cache.stats().live_keys > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let label = format!("  after {:.2} s", start.elapsed().as_secs_f64());
        print_keys(&label, &cache.stats(), cache.len());
        let after =
            request(Some(&cache), &mut conn, &names[0]).map(|_| "reloaded from the database");
        println!("  next request for {}: {}", names[0], after?);
        Ok(())
    }

    fn print_keys(label: &str, stats: &Stats, len: usize) {
        println!(
            "{label:<14} epoch keys created {}, wiped {}, live {}; entries cached {len}, expired {}",
            stats.keys_created, stats.keys_wiped, stats.live_keys, stats.expirations
        );
    }
}

mod cli {
    //! Flags, their ranges, and errors that name them.

    use std::fmt;
    use std::ops::RangeInclusive;
    use std::time::Duration;

    pub const HELP: &str = "\
sealcache demo: a credential database with and without sealcache in front.

USAGE: cargo run --release --example demo -- [FLAGS]

FLAGS:
  --keys <N>           credentials in the database, 1..=1000000 (default 1000)
  --workers <N>        worker threads, 1..=1024 (default: cores x 4)
  --seconds <N>        length of each of the two runs, 1..=600 (default 5)
  --ttl <SECS>         cache TTL, 1..=3600 (default 60); the lifecycle part
                       uses min(ttl, 2) to show keys being wiped
  --db-latency <MS>    extra milliseconds per database read, 0..=10000 (default 0)
  -h, --help           print this help
";

    pub struct Args {
        pub keys: usize,
        pub workers: usize,
        pub duration: Duration,
        pub ttl: u64,
        pub db_latency: Duration,
    }

    pub enum Parsed {
        Run(Args),
        Help,
    }

    #[derive(Debug)]
    pub enum CliError {
        Unknown(String),
        MissingValue(&'static str),
        BadValue {
            flag: &'static str,
            value: String,
            range: RangeInclusive<u64>,
        },
    }

    impl fmt::Display for CliError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Self::Unknown(arg) => write!(f, "unknown argument {arg:?}"),
                Self::MissingValue(flag) => write!(f, "{flag} needs a value"),
                Self::BadValue { flag, value, range } => write!(
                    f,
                    "{flag} {value:?} is not valid: expected a whole number in {}..={}",
                    range.start(),
                    range.end()
                ),
            }
        }
    }

    const KEYS: RangeInclusive<u64> = 1..=1_000_000;
    const WORKERS: RangeInclusive<u64> = 1..=1024;
    const SECONDS: RangeInclusive<u64> = 1..=600;
    const TTL: RangeInclusive<u64> = 1..=3600;
    const LATENCY: RangeInclusive<u64> = 0..=10_000;

    pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Parsed, CliError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut parsed = Args {
            keys: 1000,
            workers: (cores * 4).min(*WORKERS.end() as usize),
            duration: Duration::from_secs(5),
            ttl: 60,
            db_latency: Duration::ZERO,
        };
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
                None => (arg, None),
            };
            if flag == "-h" || flag == "--help" {
                return Ok(Parsed::Help);
            }
            let flag = known_flag(&flag)?;
            let value = inline
                .or_else(|| args.next())
                .ok_or(CliError::MissingValue(flag))?;
            apply(&mut parsed, flag, &value)?;
        }
        Ok(Parsed::Run(parsed))
    }

    fn known_flag(flag: &str) -> Result<&'static str, CliError> {
        ["--keys", "--workers", "--seconds", "--ttl", "--db-latency"]
            .into_iter()
            .find(|known| *known == flag)
            .ok_or_else(|| CliError::Unknown(flag.to_owned()))
    }

    fn apply(args: &mut Args, flag: &'static str, value: &str) -> Result<(), CliError> {
        match flag {
            "--keys" => args.keys = number(flag, value, KEYS)? as usize,
            "--workers" => args.workers = number(flag, value, WORKERS)? as usize,
            "--seconds" => args.duration = Duration::from_secs(number(flag, value, SECONDS)?),
            "--ttl" => args.ttl = number(flag, value, TTL)?,
            _ => args.db_latency = Duration::from_millis(number(flag, value, LATENCY)?),
        }
        Ok(())
    }

    fn number(
        flag: &'static str,
        value: &str,
        range: RangeInclusive<u64>,
    ) -> Result<u64, CliError> {
        value
            .parse::<u64>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| CliError::BadValue {
                flag,
                value: value.to_owned(),
                range,
            })
    }
}

/// A xorshift64* generator: fast, good enough to pick keys, not for secrets.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // Spread small seeds (0, 1, 2, ...) over the state space; never 0.
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Samples ranks `0..n` with probability proportional to `1 / (rank + 1)^s`
/// by binary search in the cumulative distribution.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|k| {
                total += 1.0 / (k as f64).powf(s);
                total
            })
            .collect();
        cdf.iter_mut().for_each(|c| *c /= total);
        Self { cdf }
    }

    fn sample(&self, rng: &mut XorShift) -> usize {
        let u = rng.next_f64();
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }
}

/// Latencies in log-linear buckets: 8 per power of two (at most 12.5 %
/// error), recorded without allocation or locking.
struct Histogram {
    buckets: Vec<u64>,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: vec![0; 64 << SUB_BITS],
            max: 0,
        }
    }
}

const SUB_BITS: u32 = 3;

impl Histogram {
    fn record(&mut self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(nanos)] += 1;
        self.max = self.max.max(nanos);
    }

    fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.max = self.max.max(other.max);
    }

    fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    fn max(&self) -> u64 {
        self.max
    }

    /// The upper bound of the bucket holding the `q`-quantile, in nanoseconds.
    fn quantile(&self, q: f64) -> u64 {
        let rank = ((self.count() as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_upper(index).min(self.max);
            }
        }
        self.max
    }
}

fn bucket_of(nanos: u64) -> usize {
    let exp = 63 - nanos.max(1).leading_zeros();
    if exp < SUB_BITS {
        return nanos as usize;
    }
    let sub = (nanos >> (exp - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    (((exp - SUB_BITS + 1) << SUB_BITS) as u64 + sub) as usize
}

fn bucket_upper(index: usize) -> u64 {
    let sub_count = 1usize << SUB_BITS;
    if index < 2 * sub_count {
        return index as u64;
    }
    let exp = (index >> SUB_BITS) as u32 + SUB_BITS - 1;
    let sub = (index & (sub_count - 1)) as u64;
    let lower = (sub_count as u64 + sub) << (exp - SUB_BITS);
    lower + (1u64 << (exp - SUB_BITS)) - 1
}
