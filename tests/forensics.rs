//! Memory-forensics tests: a parent process reads a child's memory from
//! outside (`/proc/CHILD/mem`, `gcore`, a kernel core dump) and counts the
//! child's secrets and epoch keys it finds. Claims C1–C6, L1, L2 and C13 of
//! THREAT_MODEL.md.
//!
//! Each test re-executes this binary as a child (see `forensics/mod.rs`).
//! The child draws 48-byte secrets from `getrandom` into a stack buffer,
//! inserts them, sends them hex-encoded to the parent and zeroizes its
//! buffers; it keeps only 64-bit fingerprints to check what it reads back.
//! Epoch keys are exported (test hook) on a helper thread that wipes its own
//! stack before it ends, so no copy made by the test can be mistaken for
//! residue left by the library.

#![cfg(all(target_os = "linux", feature = "test-hooks"))]

#[path = "forensics/mod.rs"]
mod forensics;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use forensics::{Kind, NEEDLE_LEN, Needles, Scan};
use sealcache::{Backend, ExposeSecret, ManualClock, SealCache, SecretBytes, testing};
use zeroize::Zeroize;

/// Secrets per child.
const N: usize = 200;
/// Bytes per secret. The needle the parent looks for is a secret's last
/// [`NEEDLE_LEN`] bytes: glibc writes its free-list links over the first 16
/// bytes of a freed small buffer, so a needle covering a whole 32-byte
/// secret could never match a freed `SecretBytes` that was not wiped, and
/// the scans would pass whether or not `get`'s buffers are zeroized. A
/// freed 48-byte buffer keeps its last 32 bytes.
const SECRET_LEN: usize = 48;
const TTL: Duration = Duration::from_secs(60);
/// Default epoch length (TTL / 4).
const EPOCH: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// The child.
// ---------------------------------------------------------------------------

/// What a child does after filling its cache.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Finish {
    /// Stay as is (keys live) while the parent looks.
    Block,
    /// Advance the clock past every key's deadline first.
    Expire,
    /// `invalidate_all()` first.
    InvalidateAll,
    /// Let the parent look, then `abort()` (kernel core dump).
    Abort,
}

fn backend_named(name: &str) -> Backend {
    match name {
        "anon" => Backend::LockedAnonymous,
        "memfd" => Backend::MemfdSecret,
        other => panic!("unknown backend {other}"),
    }
}

/// Runs the child side: `role` is `<backend>:<read>:<finish>`, or
/// `<backend>:<read>:<finish>:busy` for a child whose [`WORKERS`] threads
/// keep reading its entries while the parent looks (see [`under_traffic`]).
fn run_child(role: &str) {
    let parts: Vec<&str> = role.split(':').collect();
    let backend = backend_named(parts[0]);
    let read_back = parts[1] == "read";
    let busy = parts.get(3) == Some(&"busy");
    let finish = match parts[2] {
        "block" => Finish::Block,
        "expire" => Finish::Expire,
        "invalidate" => Finish::InvalidateAll,
        "abort" => Finish::Abort,
        other => panic!("unknown finish {other}"),
    };
    if finish == Finish::Abort {
        allow_core_dump();
    }
    let clock = ManualClock::new();
    let cache = SealCache::builder()
        .ttl(TTL)
        .max_entries(1000)
        .backend(backend)
        .clock(clock.clone())
        .build()
        .expect("build cache (the protections these tests attack must be available)");
    // The dump tests' positive control: kept on the heap until the end.
    let mut marker = vec![0u8; NEEDLE_LEN];
    forensics::random_secret(&mut marker);
    forensics::send_hex("marker", &marker);
    let mut fingerprints = Vec::with_capacity(N);
    let names: Vec<String> = (0..N).map(|i| format!("secret-{i:03}")).collect();
    // Every other secret goes in as an owned value, which `insert` must
    // wipe once sealed, in each of the forms of [`Owned`]. All of them are
    // allocated before the first insert, so each has its own heap chunk: a
    // freed, unwiped one is not handed straight to the next value and
    // overwritten.
    let mut owned: Vec<(Owned, Vec<u8>)> = (0..N / 2)
        .map(|i| {
            let form = Owned::ALL[i % Owned::ALL.len()];
            (form, form.random_secret())
        })
        .collect();
    // Two epochs: half the secrets at t = 0, half at t = 15 s. A busy
    // child uses four (t = 0, 15, 30, 45 s: every entry still live), so
    // that its bound of one epoch key per worker can fail.
    let epochs = if busy { 4 } else { 2 };
    for (i, name) in names.iter().enumerate() {
        if i > 0 && i % (N / epochs) == 0 {
            clock.advance(EPOCH);
        }
        if i % 2 == 0 {
            let (form, secret) = owned.pop().expect("one owned secret per even index");
            insert_owned(&cache, name, form, secret, &mut fingerprints);
        } else {
            insert_random(&cache, name, &mut fingerprints);
        }
    }
    export_keys(&cache);
    for name in &names {
        // The nonce (bytes 1..25 of the sealed entry) is public; the parent
        // derives each entry's subkey from it and the exported keys.
        assert!(testing::tamper(&cache, name.as_bytes(), |sealed| {
            forensics::send_hex("nonce", &sealed[1..25]);
        }));
    }
    if read_back {
        // Every `SecretBytes` is held until all are read, so each has its
        // own heap chunk when they are dropped (and must be wiped).
        let mut held = Vec::with_capacity(N);
        for (name, want) in names.iter().zip(&fingerprints) {
            let secret = cache.get(name).expect("get").expect("live");
            assert_eq!(forensics::fingerprint(secret.expose_secret()), *want);
            held.push(secret);
            let seen = cache
                .with(name, forensics::fingerprint)
                .expect("with")
                .expect("live");
            assert_eq!(seen, *want);
        }
        drop(held);
    }
    match finish {
        Finish::Block | Finish::Abort => {}
        Finish::Expire => {
            // Key of epoch 1 is due at (1 + 1) * 15 s + 60 s = 90 s.
            clock.advance(Duration::from_secs(100) - EPOCH);
            assert!(cache.get(&names[0]).expect("get").is_none());
        }
        Finish::InvalidateAll => {
            cache.invalidate_all();
            assert!(cache.sync_reaper(), "reaper alive");
        }
    }
    let stats = cache.stats();
    let slab = testing::slab_range(&cache);
    forensics::send_value("slab", format!("{} {}", slab.start, slab.end));
    forensics::send_value("live_keys", stats.live_keys);
    forensics::send_value("keys_wiped", stats.keys_wiped);
    forensics::send_value("len", cache.len());
    // Checked here too: a memfd_secret slab is unreadable from outside, so
    // the parent cannot see for itself that it was wiped.
    forensics::send_value("slab_zero", testing::slab_is_zero(&cache));
    forensics::send_value("protections", cache.protections());
    let let_parent_look = || {
        forensics::wait_for_parent();
        if finish == Finish::Abort {
            std::process::abort();
        }
    };
    if busy {
        under_traffic(&cache, &names, &fingerprints, let_parent_look);
    } else {
        let_parent_look();
    }
    std::hint::black_box(&marker);
    drop(cache);
}

/// Inserts one fresh random secret under `name` and sends it to the parent;
/// the only copy the child keeps is a fingerprint.
fn insert_random(cache: &SealCache, name: &str, fingerprints: &mut Vec<u64>) {
    let mut secret = [0u8; SECRET_LEN];
    forensics::random_secret(&mut secret);
    fingerprints.push(forensics::fingerprint(&secret));
    cache.insert(name, &secret[..]).expect("insert");
    forensics::send_hex("plain", &secret[SECRET_LEN - NEEDLE_LEN..]);
    secret.zeroize();
}

/// The owned forms a secret is inserted in. Each is consumed by `insert`,
/// which must wipe it once sealed, spare capacity included.
#[derive(Clone, Copy)]
enum Owned {
    /// A `Vec` with no spare capacity.
    Exact,
    /// A `Vec` whose spare capacity holds a copy of the secret's end.
    Spare,
    /// A [`SecretBytes`] made from a `Vec` like [`Owned::Spare`]'s, which
    /// `From` copies into an exact buffer (wiping the vector) and `insert`
    /// takes by value.
    SecretBytesFromSpare,
    /// A `Box<[u8]>`.
    Boxed,
}

impl Owned {
    const ALL: [Self; 4] = [
        Self::Exact,
        Self::Spare,
        Self::SecretBytesFromSpare,
        Self::Boxed,
    ];

    /// The capacity of this form's vector. A spare capacity holds a copy of
    /// the secret's last [`NEEDLE_LEN`] bytes (what the parent looks for),
    /// as a vector that held a longer value before it was truncated would.
    /// The two forms with spare capacity each have a heap size class of
    /// their own, which nothing else the child allocates uses (96 bytes
    /// would share one with sealed 48-byte secrets, and the next insert
    /// would overwrite the freed vector, wiped or not). glibc keeps up to 7
    /// freed buffers of each class in a per-thread cache for requests of
    /// that class alone, so several of each form survive to be scanned.
    fn capacity(self) -> usize {
        match self {
            Self::Exact | Self::Boxed => SECRET_LEN,
            Self::Spare => SECRET_LEN + NEEDLE_LEN,
            Self::SecretBytesFromSpare => 4 * SECRET_LEN,
        }
    }

    /// A fresh random secret in a vector of this form's capacity.
    fn random_secret(self) -> Vec<u8> {
        let mut secret = vec![0u8; self.capacity()];
        forensics::random_secret(&mut secret[..SECRET_LEN]);
        if secret.len() > SECRET_LEN {
            secret.copy_within(SECRET_LEN - NEEDLE_LEN..SECRET_LEN, SECRET_LEN);
            secret.truncate(SECRET_LEN);
        }
        secret
    }
}

/// Inserts `secret`, an owned vector the cache consumes (in `form`) and
/// must wipe, and sends it to the parent first.
fn insert_owned(
    cache: &SealCache,
    name: &str,
    form: Owned,
    secret: Vec<u8>,
    fingerprints: &mut Vec<u64>,
) {
    fingerprints.push(forensics::fingerprint(&secret));
    forensics::send_hex("plain", &secret[SECRET_LEN - NEEDLE_LEN..]);
    match form {
        Owned::Exact | Owned::Spare => cache.insert(name, secret),
        Owned::SecretBytesFromSpare => cache.insert(name, SecretBytes::from(secret)),
        Owned::Boxed => cache.insert(name, secret.into_boxed_slice()),
    }
    .expect("insert");
}

/// Worker threads of a busy child: the most entries a dump of it may
/// expose, one in flight per worker.
const WORKERS: usize = 2;

/// Runs `let_parent_look` while [`WORKERS`] threads read the entries in a
/// loop, each with `get` and then `with`, and check what they read against
/// its fingerprint; worker `w` reads entries `w`, `w + WORKERS`, and so on.
/// The parent is told the child is ready only after `2 × N` reads between
/// them (each worker's entries about twice over), so entries have been
/// opened, and their subkeys wiped, by threads that are still running.
fn under_traffic(
    cache: &SealCache,
    names: &[String],
    fingerprints: &[u64],
    let_parent_look: impl FnOnce(),
) {
    let stop = AtomicBool::new(false);
    let reads = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|worker| {
                let (stop, reads) = (&stop, &reads);
                std::thread::Builder::new()
                    .name(format!("worker-{worker}"))
                    .spawn_scoped(scope, move || {
                        let mine = names.iter().zip(fingerprints).skip(worker);
                        for (name, want) in mine.step_by(WORKERS).cycle() {
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            let secret = cache.get(name).expect("get").expect("live");
                            assert_eq!(forensics::fingerprint(secret.expose_secret()), *want);
                            drop(secret);
                            let seen = cache
                                .with(name, forensics::fingerprint)
                                .expect("with")
                                .expect("live");
                            assert_eq!(seen, *want);
                            reads.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                    .expect("spawn worker")
            })
            .collect();
        while reads.load(Ordering::Relaxed) < 2 * names.len() {
            assert!(
                !workers
                    .iter()
                    .any(std::thread::ScopedJoinHandle::is_finished),
                "a worker stopped"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let_parent_look();
        stop.store(true, Ordering::Relaxed);
    });
}

/// Sends every live epoch key to the parent from a helper thread that wipes
/// its stack afterwards.
fn export_keys(cache: &SealCache) {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let mut keys = testing::export_live_keys(cache);
                assert!(!keys.is_empty(), "no live key to look for");
                for key in &keys {
                    forensics::send_hex("key", key);
                }
                keys.zeroize();
                drop(keys);
                forensics::wipe_own_stack();
            })
            .join()
            .expect("key export thread");
    });
}

fn allow_core_dump() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid rlimit struct; result checked.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &limit) };
    assert_eq!(rc, 0, "setrlimit(RLIMIT_CORE, unlimited)");
}

// ---------------------------------------------------------------------------
// The parent.
// ---------------------------------------------------------------------------

/// What the parent learned from a child that is now blocked.
struct Observed {
    needles: Needles,
    lines: Vec<String>,
    slab: (usize, usize),
}

fn observe(spawned: &mut forensics::Spawned) -> Observed {
    let lines = spawned.until_ready();
    let needles = Needles::from_lines(&lines);
    assert_eq!(needles.count(Kind::Plaintext), N, "child sent {N} secrets");
    assert!(needles.count(Kind::Key) >= 1, "child sent its epoch keys");
    let slab = forensics::value(&lines, "slab");
    let (start, end) = slab.split_once(' ').expect("slab range");
    Observed {
        needles,
        slab: (start.parse().expect("start"), end.parse().expect("end")),
        lines,
    }
}

fn report(test: &str, scan: &Scan, observed: &Observed) {
    if std::env::var_os("FORENSICS_WHERE").is_some() {
        let mut places: std::collections::BTreeMap<String, usize> = Default::default();
        for hit in &scan.hits {
            *places
                .entry(format!("{:?} in {}", hit.kind, hit.location))
                .or_default() += 1;
        }
        eprintln!("[{test}] hits by location: {places:#?}");
    }
    eprintln!(
        "[{test}] scanned {} regions, {} bytes; plaintexts found {}/{}, keys found {} (of {} keys), \
         entry subkeys found {}; unreadable: {:?}; {}",
        scan.regions,
        scan.bytes,
        scan.found(Kind::Plaintext),
        observed.needles.count(Kind::Plaintext),
        scan.found(Kind::Key),
        observed.needles.count(Kind::Key),
        scan.found(Kind::Subkey),
        scan.unreadable
            .iter()
            .map(|r| format!("{} ({} pages, errno {:?})", r.label, r.pages, r.errno))
            .collect::<Vec<_>>(),
        forensics::value(&observed.lines, "protections"),
    );
}

/// Asserts that a scan of a live child really read its memory: it found the
/// marker the child keeps on its heap, and the only memory it could not
/// read is the slab's mapping (`memfd_secret`). Without this, a scan whose
/// reads all failed would find nothing and pass.
fn assert_scan_saw_everything(test: &str, scan: &Scan, observed: &Observed) {
    assert!(
        scan.found(Kind::Marker) >= 1,
        "[{test}] the scan missed the marker the child keeps on its heap: it read nothing"
    );
    let (start, end) = observed.slab;
    for region in &scan.unreadable {
        assert!(
            region.start <= start && end <= region.end,
            "[{test}] unreadable memory besides the slab: {} ({} pages, errno {:?})",
            region.label,
            region.pages,
            region.errno
        );
    }
}

/// Asserts the slab of a `memfd_secret` child cannot be read from outside.
fn assert_slab_unreadable(pid: u32, observed: &Observed) {
    let (start, end) = observed.slab;
    let err = forensics::read_mem(pid, start, end - start)
        .expect_err("root read the memfd_secret slab through /proc/PID/mem");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
}

/// Scans a child that expired (or shredded) everything: no plaintext and no
/// key may be left anywhere in its memory.
fn assert_no_trace_after(test: &str, role: &str) {
    let mut child = forensics::spawn(test, role);
    let observed = observe(&mut child);
    assert_eq!(forensics::value(&observed.lines, "live_keys"), "0");
    assert_eq!(forensics::value(&observed.lines, "len"), "0");
    assert_eq!(forensics::value(&observed.lines, "slab_zero"), "true");
    let scan = forensics::scan_process(child.pid(), &observed.needles);
    report(test, &scan, &observed);
    assert_scan_saw_everything(test, &scan, &observed);
    assert_eq!(
        (
            scan.found(Kind::Plaintext),
            scan.found(Kind::Key),
            scan.found(Kind::Subkey)
        ),
        (0, 0, 0),
        "residue of {role} (plaintexts, keys, entry subkeys):\n{}",
        scan.describe()
    );
    child.finish_ok();
}

/// `roles` without the memfd_secret ones where the kernel lacks it.
fn available_roles<'a>(test: &str, roles: &[&'a str]) -> Vec<&'a str> {
    let memfd = testing::require_memfd_secret(test);
    roles
        .iter()
        .copied()
        .filter(|role| memfd || !role.starts_with("memfd:"))
        .collect()
}

/// Whether `kernel.core_pattern` writes a plain file into the crashing
/// process's working directory (not a pipe to systemd-coredump or apport,
/// not another directory), which is where the core tests look for it.
fn core_files_written_here(test: &str) -> bool {
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    let pattern = pattern.trim();
    testing::require(
        !pattern.is_empty() && !pattern.starts_with('|') && !pattern.contains('/'),
        test,
        &format!(
            "a kernel.core_pattern that writes a file to the working directory \
             (it is {pattern:?}; e.g. `sysctl kernel.core_pattern=core`)"
        ),
    )
}

// ---------------------------------------------------------------------------
// Claims C1 and L1: live dump at rest.
// ---------------------------------------------------------------------------

/// 200 secrets at rest, none exposed, keys in memfd_secret: root reading
/// every readable region finds no plaintext and no key, and its read of the
/// slab fails with EIO.
#[test]
fn live_dump_at_rest_finds_no_plaintext_and_no_key_behind_memfd_secret() {
    const TEST: &str = "live_dump_at_rest_finds_no_plaintext_and_no_key_behind_memfd_secret";
    if let Some(role) = forensics::child_role() {
        return run_child(&role);
    }
    if !testing::require_memfd_secret(TEST) {
        return;
    }
    let mut child = forensics::spawn(TEST, "memfd:none:block");
    let observed = observe(&mut child);
    assert!(
        forensics::value(&observed.lines, "protections").contains("backend=memfd_secret"),
        "memfd_secret must be active on this machine"
    );
    assert_slab_unreadable(child.pid(), &observed);
    let scan = forensics::scan_process(child.pid(), &observed.needles);
    report(TEST, &scan, &observed);
    assert_scan_saw_everything(TEST, &scan, &observed);
    let (start, end) = observed.slab;
    assert!(
        scan.unreadable
            .iter()
            .any(|r| r.start <= start && end <= r.end && r.errno == Some(libc::EIO)),
        "the slab must be among the regions the scan could not read: {:?}",
        scan.unreadable
    );
    assert_eq!(scan.found(Kind::Plaintext), 0, "{}", scan.describe());
    assert_eq!(scan.found(Kind::Key), 0, "{}", scan.describe());
    assert_eq!(scan.found(Kind::Subkey), 0, "{}", scan.describe());
    child.finish_ok();
}

/// The same attack on the locked-anonymous backend: still no plaintext, but
/// root reads every live epoch key in the slab (the limitation stated in
/// THREAT_MODEL.md: without memfd_secret, root on the live host wins).
#[test]
fn live_dump_of_the_anonymous_backend_finds_no_plaintext_but_root_reads_the_keys() {
    const TEST: &str =
        "live_dump_of_the_anonymous_backend_finds_no_plaintext_but_root_reads_the_keys";
    if let Some(role) = forensics::child_role() {
        return run_child(&role);
    }
    let mut child = forensics::spawn(TEST, "anon:none:block");
    let observed = observe(&mut child);
    let scan = forensics::scan_process(child.pid(), &observed.needles);
    report(TEST, &scan, &observed);
    assert_scan_saw_everything(TEST, &scan, &observed);
    assert_eq!(scan.found(Kind::Plaintext), 0, "{}", scan.describe());
    let (start, end) = observed.slab;
    let keys = observed.needles.count(Kind::Key);
    let in_slab = scan
        .hits
        .iter()
        .filter(|h| h.kind == Kind::Key && (start..end).contains(&h.address))
        .count();
    assert_eq!(in_slab, keys, "root reads each key in the slab");
    assert_eq!(
        scan.found(Kind::Key),
        keys,
        "and nowhere else:\n{}",
        scan.describe()
    );
    assert_eq!(scan.found(Kind::Subkey), 0, "{}", scan.describe());
    child.finish_ok();
}

// ---------------------------------------------------------------------------
// Claims C2–C4: after expiry / invalidate_all; stack and heap residue.
// ---------------------------------------------------------------------------

/// 200 secrets inserted, read back with `get` and `with`, every
/// `SecretBytes` dropped, then the clock passes every key deadline (the
/// reaper runs): no plaintext and no epoch key is left anywhere readable —
/// slab, heap (freed or not), every thread's stack — on either backend.
#[test]
fn after_expiry_no_plaintext_and_no_epoch_key_remain_in_memory() {
    const TEST: &str = "after_expiry_no_plaintext_and_no_epoch_key_remain_in_memory";
    if let Some(role) = forensics::child_role() {
        return run_child(&role);
    }
    for role in available_roles(TEST, &["anon:read:expire", "memfd:read:expire"]) {
        assert_no_trace_after(TEST, role);
    }
}

/// As above, but `invalidate_all()` instead of expiry.
#[test]
fn after_invalidate_all_no_plaintext_and_no_epoch_key_remain_in_memory() {
    const TEST: &str = "after_invalidate_all_no_plaintext_and_no_epoch_key_remain_in_memory";
    if let Some(role) = forensics::child_role() {
        return run_child(&role);
    }
    for role in available_roles(TEST, &["anon:read:invalidate", "memfd:read:invalidate"]) {
        assert_no_trace_after(TEST, role);
    }
}

/// Stack and heap residue while keys are live: after 200 seals, 200 `get`s
/// and 200 `with`s (every `SecretBytes` dropped), a memfd_secret child holds
/// no copy of an epoch key and no plaintext outside the (unreadable) slab —
/// no thread stack, no freed heap chunk, no AEAD buffer.
#[test]
fn seal_and_open_leave_no_key_or_plaintext_on_stacks_or_heap() {
    const TEST: &str = "seal_and_open_leave_no_key_or_plaintext_on_stacks_or_heap";
    if let Some(role) = forensics::child_role() {
        return run_child(&role);
    }
    if !testing::require_memfd_secret(TEST) {
        return;
    }
    let mut child = forensics::spawn(TEST, "memfd:read:block");
    let observed = observe(&mut child);
    assert_slab_unreadable(child.pid(), &observed);
    let scan = forensics::scan_process(child.pid(), &observed.needles);
    report(TEST, &scan, &observed);
    assert_scan_saw_everything(TEST, &scan, &observed);
    assert_eq!(
        (
            scan.found(Kind::Plaintext),
            scan.found(Kind::Key),
            scan.found(Kind::Subkey)
        ),
        (0, 0, 0),
        "residue (plaintexts, keys, entry subkeys):\n{}",
        scan.describe()
    );
    child.finish_ok();
}

// ---------------------------------------------------------------------------
// Claims C5, C6 and C13: core dumps.
// ---------------------------------------------------------------------------

/// Whether `gcore` (gdb) is on the `PATH`.
fn gcore_installed(test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("gcore").is_file()));
    testing::require(found, test, "gcore (Debian/Ubuntu package gdb)")
}

fn gcore(pid: u32, dir: &Path) -> std::path::PathBuf {
    let prefix = dir.join("core");
    let output = Command::new("gcore")
        .arg("-o")
        .arg(&prefix)
        .arg(pid.to_string())
        .output()
        .expect("run gcore");
    let path = dir.join(format!("core.{pid}"));
    assert!(
        output.status.success() && path.exists(),
        "gcore failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    path
}

/// How a core test dumps its child.
#[derive(Clone, Copy)]
enum Dump {
    /// `gcore` (gdb) of the running child.
    Gcore,
    /// The kernel's core file of the child, which calls `abort()` (its
    /// roles must finish with `abort`).
    KernelOnAbort,
}

/// The body of a core test: in the child, plays its role; in the parent,
/// where the machine can take `dump`s, dumps a child in each of `roles`
/// (those the kernel supports) and lets `check` judge the core's scan.
fn core_test(test: &str, dump: Dump, roles: &[&str], check: impl Fn(&str, &Scan, &Observed)) {
    if let Some(role) = forensics::child_role() {
        return run_child(&role);
    }
    let can_dump = match dump {
        Dump::Gcore => gcore_installed(test),
        Dump::KernelOnAbort => core_files_written_here(test),
    };
    if !can_dump {
        return;
    }
    for role in available_roles(test, roles) {
        let (observed, scan) = match dump {
            Dump::Gcore => scan_gcore_of(test, role),
            Dump::KernelOnAbort => scan_kernel_core_of(test, role),
        };
        check(role, &scan, &observed);
    }
}

/// Runs a child in `role`, dumps it with `gcore` once it is ready, lets it
/// finish and scans the core, which must hold the child's heap marker.
fn scan_gcore_of(test: &str, role: &str) -> (Observed, Scan) {
    let dir = forensics::temp_dir("gcore");
    let mut child = forensics::spawn(test, role);
    let observed = observe(&mut child);
    let core = gcore(child.pid(), &dir);
    child.finish_ok();
    let scan = forensics::scan_file(&core, &observed.needles);
    drop(dir);
    assert_core_holds_the_heap(test, role, &scan, &observed);
    (observed, scan)
}

/// Runs a child in `role` (which must finish with `abort`) in a fresh
/// directory, releases it once it is ready and scans the core file the
/// kernel writes there, which must hold the child's heap marker.
fn scan_kernel_core_of(test: &str, role: &str) -> (Observed, Scan) {
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").expect("core_pattern");
    let stem = pattern.trim().split('%').next().unwrap_or("core");
    let dir = forensics::temp_dir("kcore");
    let mut child = forensics::spawn_in(test, role, Some(&dir));
    let observed = observe(&mut child);
    child.release();
    let (status, err, _) = child.wait();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}\n{err}");
    assert!(
        status.core_dumped(),
        "the kernel did not dump core: {status:?}"
    );
    let core = std::fs::read_dir(&dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(stem))
        })
        .unwrap_or_else(|| panic!("no core file in {}", dir.display()));
    let scan = forensics::scan_file(&core, &observed.needles);
    drop(dir);
    assert_core_holds_the_heap(test, role, &scan, &observed);
    (observed, scan)
}

/// Reports a core's scan and asserts it is a real dump of the child: big
/// enough, and holding the marker the child keeps on its heap.
fn assert_core_holds_the_heap(test: &str, role: &str, scan: &Scan, observed: &Observed) {
    report(test, scan, observed);
    assert!(scan.bytes > 1 << 20, "core file too small: {}", scan.bytes);
    assert!(
        scan.found(Kind::Marker) >= 1,
        "{role}: the core lacks the marker the child keeps on its heap \
         (check /proc/self/coredump_filter): finding nothing in it proves nothing"
    );
}

/// Asserts a core of a child at rest holds no epoch key, no plaintext and
/// no subkey.
fn assert_core_holds_nothing(role: &str, scan: &Scan) {
    assert_eq!(scan.found(Kind::Key), 0, "{role}: {}", scan.describe());
    assert_eq!(
        scan.found(Kind::Plaintext),
        0,
        "{role}: {}",
        scan.describe()
    );
    assert_eq!(scan.found(Kind::Subkey), 0, "{role}: {}", scan.describe());
}

/// Asserts a core of a busy child (see [`under_traffic`]) holds secrets of
/// at most [`WORKERS`] entries and at most [`WORKERS`] epoch keys: what the
/// workers held when the dump stopped them, each inside one `get` or
/// `with`. A worker holds the subkey of the entry it is opening (on its
/// stack, in its saved registers), or the plaintext (in the `SecretBytes`
/// it reads), and, while it derives the subkey, the epoch key (HChaCha20's
/// state holds the key until its first round mixes it). Any other entry
/// or key found would be residue of a call that had finished.
fn assert_core_holds_only_what_is_in_flight(
    test: &str,
    role: &str,
    scan: &Scan,
    observed: &Observed,
) {
    let needles = &observed.needles;
    let keys = needles.sources_found(scan, Kind::Key);
    let subkeys = needles.sources_found(scan, Kind::Subkey);
    let plaintexts = needles.sources_found(scan, Kind::Plaintext);
    let entries: std::collections::BTreeSet<usize> = subkeys.union(&plaintexts).copied().collect();
    let found = format!(
        "epoch keys {keys:?}, subkeys of entries {subkeys:?}, plaintexts of entries {plaintexts:?}"
    );
    eprintln!("[{test}] {role}: {found}");
    assert!(
        entries.len() <= WORKERS && keys.len() <= WORKERS,
        "{role}: more than the {WORKERS} entries and keys in flight: {found}\n{}",
        scan.describe()
    );
}

/// `gcore` (gdb) of a live child with 200 secrets read back and keys live:
/// the core holds no epoch key (MADV_DONTDUMP / memfd_secret) and no
/// plaintext, on both backends.
#[test]
fn gcore_of_a_live_process_holds_no_epoch_key() {
    const TEST: &str = "gcore_of_a_live_process_holds_no_epoch_key";
    core_test(
        TEST,
        Dump::Gcore,
        &["anon:read:block", "memfd:read:block"],
        |role, scan, _| assert_core_holds_nothing(role, scan),
    );
}

/// `gcore` of a child whose two worker threads read its 200 entries in a
/// loop (`get`, then `with`) while it is dumped: subkeys and plaintexts of
/// at most two entries and at most two epoch keys, the ones in flight, on
/// both backends (L2 in THREAT_MODEL.md, the limit of C4–C6). Without the
/// stack wipe after each seal/open, the subkeys of entries read earlier
/// stay in dead frames and this fails.
#[test]
fn gcore_of_a_busy_process_holds_only_the_keys_and_entries_in_flight() {
    const TEST: &str = "gcore_of_a_busy_process_holds_only_the_keys_and_entries_in_flight";
    core_test(
        TEST,
        Dump::Gcore,
        &["anon:none:block:busy", "memfd:none:block:busy"],
        |role, scan, observed| assert_core_holds_only_what_is_in_flight(TEST, role, scan, observed),
    );
}

/// The kernel's own core dump of a child that calls `abort()` with keys
/// live holds no epoch key and no plaintext, on both backends. Needs a
/// `kernel.core_pattern` that writes a file (not a pipe to a program).
#[test]
fn kernel_core_dump_on_abort_holds_no_epoch_key() {
    const TEST: &str = "kernel_core_dump_on_abort_holds_no_epoch_key";
    core_test(
        TEST,
        Dump::KernelOnAbort,
        &["anon:read:abort", "memfd:read:abort"],
        |role, scan, _| assert_core_holds_nothing(role, scan),
    );
}

/// As the `gcore` test of a busy child, with the kernel's core dump of a
/// child that calls `abort()` while its workers read: the kernel stops
/// every thread wherever it is.
#[test]
fn kernel_core_dump_of_a_busy_process_holds_only_the_keys_and_entries_in_flight() {
    const TEST: &str =
        "kernel_core_dump_of_a_busy_process_holds_only_the_keys_and_entries_in_flight";
    core_test(
        TEST,
        Dump::KernelOnAbort,
        &["anon:none:abort:busy", "memfd:none:abort:busy"],
        |role, scan, observed| assert_core_holds_only_what_is_in_flight(TEST, role, scan, observed),
    );
}

// ---------------------------------------------------------------------------
// Opt-in harden_process(): no kernel core file at all.
// ---------------------------------------------------------------------------

/// After the opt-in `harden_process()`, a child that aborts with keys live
/// writes no core file at all (the same abort without it does dump core:
/// `kernel_core_dump_on_abort_holds_no_epoch_key`).
#[test]
fn harden_process_stops_kernel_core_dumps() {
    const TEST: &str = "harden_process_stops_kernel_core_dumps";
    if forensics::child_role().is_some() {
        allow_core_dump();
        let report = sealcache::harden_process().expect("harden_process");
        assert!(report.not_dumpable && report.no_core_limit);
        let cache = SealCache::builder().build().expect("build");
        cache.insert("k", "v").expect("insert");
        forensics::wait_for_parent();
        std::process::abort();
    }
    // Without a core pattern that writes here, finding no file proves nothing.
    if !core_files_written_here(TEST) {
        return;
    }
    let dir = forensics::temp_dir("hardened");
    let mut child = forensics::spawn_in(TEST, "hardened", Some(&dir));
    child.until_ready();
    child.release();
    let (status, err, _) = child.wait();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}\n{err}");
    assert!(!status.core_dumped(), "a hardened process dumped core");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .expect("read dir")
        .flatten()
        .collect();
    assert!(files.is_empty(), "core files written: {files:?}");
}
