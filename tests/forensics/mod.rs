//! Plumbing shared by the forensics tests: re-executing the test binary as a
//! child process in a chosen role, a line protocol from the child to the
//! scanning parent, a needle scanner over `/proc/PID/mem` and core files,
//! and the raw helpers a child needs to handle secrets without leaving its
//! own copies (stack buffers written with `libc::write`, then zeroized).
//!
//! The parent never trusts the child's view of its memory: it reads the
//! child's address space from outside, region by region, through
//! `/proc/CHILD/mem`.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use zeroize::Zeroize;

/// Environment variable that turns a re-executed test into a child role.
pub const ROLE_ENV: &str = "SEALCACHE_FORENSICS_ROLE";
/// Prefix of every protocol line from a child.
const MARK: &str = "@@";
/// Longest a parent waits for one protocol step of a child.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Length of every needle (random secrets and epoch keys).
pub const NEEDLE_LEN: usize = 32;

/// The role this process plays, when it is a re-executed child.
pub fn child_role() -> Option<String> {
    std::env::var(ROLE_ENV).ok()
}

// ---------------------------------------------------------------------------
// Parent side: spawning and talking to a child.
// ---------------------------------------------------------------------------

/// A child process running one test of this binary in a role.
pub struct Spawned {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Receiver<String>,
    /// Protocol lines received so far (without the marker).
    pub received: Vec<String>,
}

/// Re-executes this test binary to run only `test` with `ROLE_ENV=role`.
pub fn spawn(test: &str, role: &str) -> Spawned {
    spawn_in(test, role, None)
}

/// As [`spawn`], with the child's working directory set to `dir`.
pub fn spawn_in(test: &str, role: &str, dir: Option<&std::path::Path>) -> Spawned {
    let exe = std::env::current_exe().expect("current_exe");
    let mut command = Command::new(exe);
    command
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let mut child = command.spawn().expect("spawn child test process");
    let stdout = child.stdout.take().expect("child stdout");
    let child_stderr = child.stderr.take().expect("child stderr");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(at) = line.find(MARK) {
                let _ = tx.send(line[at + MARK.len()..].to_string());
            }
        }
    });
    let (etx, stderr) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(child_stderr).lines() {
            let Ok(line) = line else { break };
            let _ = etx.send(line);
        }
    });
    let stdin = child.stdin.take();
    Spawned {
        child,
        stdin,
        lines,
        stderr,
        received: Vec::new(),
    }
}

impl Spawned {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        let mut text = String::new();
        while let Ok(line) = self.stderr.try_recv() {
            text.push_str(&line);
            text.push('\n');
        }
        text
    }

    /// Reads protocol lines until `ready` (kept in [`Self::received`]);
    /// panics, killing the child, if the child dies or stalls first.
    pub fn until_ready(&mut self) -> Vec<String> {
        let start = self.received.len();
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == "ready" => return self.received[start..].to_vec(),
                Ok(line) => self.received.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "child {} stalled before `ready`; stderr:\n{}",
                        self.pid(),
                        self.stderr_text()
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    panic!(
                        "child {} exited before `ready` ({status:?}); stderr:\n{}",
                        self.pid(),
                        self.stderr_text()
                    );
                }
            }
        }
    }

    /// Tells a child blocked in [`wait_for_parent`] to continue.
    pub fn release(&mut self) {
        if let Some(stdin) = self.stdin.as_mut() {
            // A child that has already died (the point of some tests) closed
            // its end: its exit status is what the caller checks next.
            let sent = stdin.write_all(b"go\n").and_then(|()| stdin.flush());
            if let Err(err) = sent {
                assert_eq!(
                    err.kind(),
                    std::io::ErrorKind::BrokenPipe,
                    "write to child stdin: {err}"
                );
            }
        }
    }

    /// Waits (at most [`STEP_TIMEOUT`]) for the child to exit; returns its
    /// status, its stderr and every protocol line it sent.
    pub fn wait(mut self) -> (ExitStatus, String, Vec<String>) {
        drop(self.stdin.take());
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Drain the reader thread until the child's stdout closes.
                loop {
                    match self.lines.recv_timeout(STEP_TIMEOUT) {
                        Ok(line) => self.received.push(line),
                        Err(RecvTimeoutError::Disconnected) => break,
                        Err(RecvTimeoutError::Timeout) => {
                            panic!("child {} exited but its stdout stayed open", self.pid())
                        }
                    }
                }
                let err = self.stderr_text();
                return (status, err, self.received);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "child {} did not exit in time; stderr:\n{}",
                    self.pid(),
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Lets the child finish and asserts it exited successfully.
    pub fn finish_ok(mut self) {
        self.release();
        let (status, err, _) = self.wait();
        assert!(
            status.success(),
            "child failed ({status:?}); stderr:\n{err}"
        );
    }
}

/// Waits for a child expected to die of `signal`; returns the protocol
/// lines it sent.
pub fn expect_signal(spawned: Spawned, signal: i32) -> Vec<String> {
    let (status, err, received) = spawned.wait();
    assert_eq!(
        status.signal(),
        Some(signal),
        "expected death by signal {signal}, got {status:?}; stderr:\n{err}"
    );
    received
}

/// The protocol lines of `lines` that start with `tag ` (the rest of each).
pub fn tagged<'a>(lines: &'a [String], tag: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter_map(|line| line.strip_prefix(tag)?.strip_prefix(' '))
        .collect()
}

/// The value of the first `tag value` line.
pub fn value<'a>(lines: &'a [String], tag: &str) -> &'a str {
    tagged(lines, tag)
        .first()
        .copied()
        .unwrap_or_else(|| panic!("child sent no `{tag}` line: {lines:?}"))
}

/// Decodes a hex needle.
pub fn unhex(hex: &str) -> [u8; NEEDLE_LEN] {
    assert_eq!(hex.len(), 2 * NEEDLE_LEN, "bad needle {hex}");
    let mut out = [0u8; NEEDLE_LEN];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

// ---------------------------------------------------------------------------
// Child side: talking to the parent without leaving copies.
// ---------------------------------------------------------------------------

/// Writes `@@<parts...>\n` to stdout with one `write(2)` from a stack
/// buffer, which is zeroized afterwards. Parts must fit in 512 bytes.
pub fn send(parts: &[&[u8]]) {
    let mut buf = [0u8; 512];
    let mut len = 0;
    for part in [b"\n", MARK.as_bytes()]
        .into_iter()
        .chain(parts.iter().copied())
    {
        buf[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    }
    buf[len] = b'\n';
    len += 1;
    write_all_raw(&buf[..len]);
    buf.zeroize();
}

/// Sends `tag <hex of bytes>`; the hex is built in a stack buffer that is
/// zeroized after the write.
pub fn send_hex(tag: &str, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; 4 * NEEDLE_LEN];
    assert!(bytes.len() <= 2 * NEEDLE_LEN);
    for (i, b) in bytes.iter().enumerate() {
        hex[2 * i] = DIGITS[usize::from(b >> 4)];
        hex[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
    send(&[tag.as_bytes(), b" ", &hex[..2 * bytes.len()]]);
    hex.zeroize();
}

/// Sends `tag value` for a non-secret value.
pub fn send_value(tag: &str, value: impl std::fmt::Display) {
    let text = format!("{value}");
    send(&[tag.as_bytes(), b" ", text.as_bytes()]);
}

fn write_all_raw(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a live, initialised slice; write(2) only reads
        // `bytes.len()` bytes from it.
        let n = unsafe { libc::write(1, bytes.as_ptr().cast(), bytes.len()) };
        assert!(n > 0, "write to parent failed");
        bytes = &bytes[n as usize..];
    }
}

/// Sends `ready` and blocks until the parent writes a line to stdin.
pub fn wait_for_parent() {
    send(&[b"ready"]);
    let mut byte = [0u8; 1];
    loop {
        // SAFETY: reads at most one byte into a live one-byte buffer.
        let n = unsafe { libc::read(0, byte.as_mut_ptr().cast(), 1) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 || byte[0] == b'\n' {
            return;
        }
    }
}

/// Fills a stack buffer with `getrandom` bytes.
pub fn random_secret(buf: &mut [u8]) {
    getrandom::fill(buf).expect("getrandom");
}

/// A 64-bit FNV-1a fingerprint: lets a child check that it read back the
/// right secret without keeping a copy of it.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Overwrites 64 KiB of the calling thread's stack below the caller's
/// frame (volatile writes), so the test's own temporaries on this thread
/// cannot be mistaken for the library's residue.
#[inline(never)]
pub fn wipe_own_stack() {
    let mut area = [0u8; 64 * 1024];
    area.zeroize();
    std::hint::black_box(&area);
}

/// Sets RLIMIT_CORE to 0 in this process, so a child killed on purpose
/// does not write a core file into the working directory.
pub fn no_core_files() {
    let limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads a valid rlimit struct; result checked.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &limit) };
    assert_eq!(rc, 0, "setrlimit(RLIMIT_CORE, 0)");
}

// ---------------------------------------------------------------------------
// The scanner.
// ---------------------------------------------------------------------------

/// What a needle is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A random secret the child inserted.
    Plaintext,
    /// An epoch key exported before expiry.
    Key,
    /// A per-entry XChaCha20 subkey, HChaCha20(epoch key, nonce[..16]):
    /// with it and the entry's ciphertext, that one entry opens.
    Subkey,
    /// Random, non-secret bytes the child keeps on its heap on purpose: a
    /// dump that lacks them did not capture the heap, and finding no
    /// secret in it proves nothing.
    Marker,
}

/// Bytes of a key or subkey needle that glibc leaves intact in a freed
/// small buffer: it writes its free-list links over the first 16 bytes, so
/// a freed, unwiped 32-byte copy keeps only its last 16.
const TAIL_LEN: usize = NEEDLE_LEN - 16;

/// The byte strings to look for, indexed by their first two bytes. Keys
/// and subkeys are also looked for by their last [`TAIL_LEN`] bytes alone
/// (indexed by the first two of those), so a freed copy is found too.
pub struct Needles {
    needles: Vec<(Kind, [u8; NEEDLE_LEN])>,
    /// What each plaintext, subkey or key needle is a copy of: the entry
    /// of a plaintext or subkey, the index of its `plain` line or of the
    /// `nonce` line it was derived from (a child sends both in the order of
    /// its entries); the index of a key's `key` line.
    sources: Vec<Option<usize>>,
    by_prefix: HashMap<u16, Vec<usize>>,
    present: Vec<bool>,
    tails_by_prefix: HashMap<u16, Vec<usize>>,
    tail_present: Vec<bool>,
}

impl Needles {
    /// Builds the set from the child's `plain` and `key` lines.
    pub fn from_lines(lines: &[String]) -> Self {
        let mut needles = Vec::new();
        let mut sources = Vec::new();
        for (entry, hex) in tagged(lines, "plain").into_iter().enumerate() {
            needles.push((Kind::Plaintext, unhex(hex)));
            sources.push(Some(entry));
        }
        for hex in tagged(lines, "marker") {
            needles.push((Kind::Marker, unhex(hex)));
            sources.push(None);
        }
        let keys: Vec<[u8; NEEDLE_LEN]> = tagged(lines, "key").into_iter().map(unhex).collect();
        for (index, key) in keys.iter().enumerate() {
            needles.push((Kind::Key, *key));
            sources.push(Some(index));
        }
        // Every (key, nonce) pair: only the right ones could ever appear.
        for (entry, hex) in tagged(lines, "nonce").into_iter().enumerate() {
            let mut input = [0u8; 16];
            for (i, byte) in input.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
            }
            for key in &keys {
                let subkey = chacha20::hchacha::<chacha20::R20>(key.into(), (&input).into());
                let mut bytes = [0u8; NEEDLE_LEN];
                bytes.copy_from_slice(&subkey);
                needles.push((Kind::Subkey, bytes));
                sources.push(Some(entry));
            }
        }
        let mut by_prefix: HashMap<u16, Vec<usize>> = HashMap::new();
        let mut present = vec![false; 1 << 16];
        let mut tails_by_prefix: HashMap<u16, Vec<usize>> = HashMap::new();
        let mut tail_present = vec![false; 1 << 16];
        for (i, (kind, bytes)) in needles.iter().enumerate() {
            let prefix = u16::from_le_bytes([bytes[0], bytes[1]]);
            by_prefix.entry(prefix).or_default().push(i);
            present[usize::from(prefix)] = true;
            if matches!(kind, Kind::Key | Kind::Subkey) {
                let tail = NEEDLE_LEN - TAIL_LEN;
                let prefix = u16::from_le_bytes([bytes[tail], bytes[tail + 1]]);
                tails_by_prefix.entry(prefix).or_default().push(i);
                tail_present[usize::from(prefix)] = true;
            }
        }
        Self {
            needles,
            sources,
            by_prefix,
            present,
            tails_by_prefix,
            tail_present,
        }
    }

    /// How many needles of `kind` there are.
    pub fn count(&self, kind: Kind) -> usize {
        self.needles.iter().filter(|(k, _)| *k == kind).count()
    }

    /// What the needles of `kind` that `scan` found (whole or by their
    /// last bytes) are copies of, each once: entries for plaintexts and
    /// subkeys, keys for keys.
    pub fn sources_found(&self, scan: &Scan, kind: Kind) -> std::collections::BTreeSet<usize> {
        scan.hits
            .iter()
            .filter(|hit| hit.kind == kind)
            .filter_map(|hit| self.sources[hit.needle])
            .collect()
    }

    /// Appends every occurrence in `data` (which starts at address `base`):
    /// whole needles, and key or subkey tails that are not the end of a
    /// whole occurrence.
    fn scan(&self, data: &[u8], base: usize, label: &str, hits: &mut Vec<Hit>) {
        if data.len() < TAIL_LEN {
            return;
        }
        let head = NEEDLE_LEN - TAIL_LEN;
        for i in 0..=data.len() - TAIL_LEN {
            let prefix = usize::from(u16::from_le_bytes([data[i], data[i + 1]]));
            if self.present[prefix] && i + NEEDLE_LEN <= data.len() {
                for &n in &self.by_prefix[&(prefix as u16)] {
                    let (kind, bytes) = &self.needles[n];
                    if data[i..i + NEEDLE_LEN] == bytes[..] {
                        hits.push(Hit {
                            kind: *kind,
                            needle: n,
                            address: base + i,
                            location: label.to_string(),
                        });
                    }
                }
            }
            if self.tail_present[prefix] {
                for &n in &self.tails_by_prefix[&(prefix as u16)] {
                    let (kind, bytes) = &self.needles[n];
                    let whole = i >= head && data[i - head..i + TAIL_LEN] == bytes[..];
                    if data[i..i + TAIL_LEN] == bytes[head..] && !whole {
                        hits.push(Hit {
                            kind: *kind,
                            needle: n,
                            address: base + i,
                            location: format!("{label} (its last {TAIL_LEN} bytes only)"),
                        });
                    }
                }
            }
        }
    }
}

/// One occurrence of a needle.
#[derive(Clone, Debug)]
pub struct Hit {
    /// Plaintext or key.
    pub kind: Kind,
    /// Which needle.
    pub needle: usize,
    /// Address in the child (or offset in a file).
    pub address: usize,
    /// The mapping (and thread stack) it lies in.
    pub location: String,
}

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug)]
pub struct Region {
    /// Start address.
    pub start: usize,
    /// End address (exclusive).
    pub end: usize,
    /// Permissions, e.g. `rw-p`.
    pub perms: String,
    /// Path or pseudo-name (may be empty).
    pub name: String,
}

/// Parses `/proc/PID/maps`.
pub fn maps(pid: u32) -> Vec<Region> {
    let text = fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps");
    text.lines()
        .map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next().expect("range");
            let perms = fields.next().expect("perms").to_string();
            let name = fields.nth(3).unwrap_or("").to_string();
            let (start, end) = range.split_once('-').expect("range dash");
            Region {
                start: usize::from_str_radix(start, 16).expect("start"),
                end: usize::from_str_radix(end, 16).expect("end"),
                perms,
                name,
            }
        })
        .collect()
}

/// Stack pointers of the child's threads, with their names, once every
/// thread is blocked in a system call (the child has just written "ready"
/// and may still be on its way into `read`; poll until it is, bounded).
fn thread_stacks(pid: u32) -> Vec<(usize, String)> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| tasks.count())
        .unwrap_or(0);
    let mut found = Vec::new();
    for _ in 0..2000 {
        found = blocked_thread_stacks(pid);
        if found.len() >= tasks {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    found
}

/// Stack pointers of the child's threads blocked in a system call.
fn blocked_thread_stacks(pid: u32) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let comm = fs::read_to_string(path.join("comm")).unwrap_or_default();
        let syscall = fs::read_to_string(path.join("syscall")).unwrap_or_default();
        // "nr arg1 .. arg6 sp pc" for a thread blocked in a system call.
        let fields: Vec<&str> = syscall.split_whitespace().collect();
        if fields.len() == 9
            && let Ok(sp) = usize::from_str_radix(fields[7].trim_start_matches("0x"), 16)
        {
            out.push((sp, comm.trim().to_string()));
        }
    }
    out
}

/// What a scan of a live process found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Every occurrence of a needle.
    pub hits: Vec<Hit>,
    /// Readable regions scanned.
    pub regions: usize,
    /// Bytes read and scanned.
    pub bytes: usize,
    /// Regions with pages whose read failed.
    pub unreadable: Vec<Unreadable>,
}

/// A region of which some pages could not be read.
#[derive(Debug)]
pub struct Unreadable {
    /// Start address of the region.
    pub start: usize,
    /// End address of the region.
    pub end: usize,
    /// Pages that failed.
    pub pages: usize,
    /// The `errno` of the last failure.
    pub errno: Option<i32>,
    /// The region's description.
    pub label: String,
}

impl Scan {
    /// Occurrences of needles of `kind`.
    pub fn found(&self, kind: Kind) -> usize {
        self.hits.iter().filter(|h| h.kind == kind).count()
    }

    /// One line per hit, for failure messages and the report.
    pub fn describe(&self) -> String {
        self.hits
            .iter()
            .map(|h| {
                format!(
                    "{:?} #{} at {:#x} in {}",
                    h.kind, h.needle, h.address, h.location
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Reads `len` bytes at `addr` of process `pid` through `/proc/PID/mem`.
pub fn read_mem(pid: u32, addr: usize, len: usize) -> std::io::Result<Vec<u8>> {
    let mem = fs::File::open(format!("/proc/{pid}/mem"))?;
    let mut buf = vec![0u8; len];
    mem.read_exact_at(&mut buf, addr as u64)?;
    Ok(buf)
}

/// Scans every readable region of process `pid` for `needles`, reading
/// from outside through `/proc/PID/mem`. Unreadable pages (e.g. `EIO` on
/// `memfd_secret` memory) are recorded, not skipped silently.
pub fn scan_process(pid: u32, needles: &Needles) -> Scan {
    let stacks = thread_stacks(pid);
    let mem = fs::File::open(format!("/proc/{pid}/mem")).expect("open /proc/PID/mem");
    let mut scan = Scan::default();
    for region in maps(pid) {
        if !region.perms.starts_with('r')
            || region.name == "[vvar]"
            || region.name == "[vvar_vclock]"
        {
            continue;
        }
        scan.regions += 1;
        let mut label = format!(
            "{:#x}-{:#x} {} {}",
            region.start, region.end, region.perms, region.name
        );
        for (sp, comm) in &stacks {
            if (region.start..region.end).contains(sp) {
                label.push_str(&format!(" (stack of thread `{comm}`)"));
            }
        }
        let len = region.end - region.start;
        let mut data = vec![0u8; len];
        if mem.read_exact_at(&mut data, region.start as u64).is_err() {
            // Fall back to page by page, recording the pages that fail.
            let mut failed = 0usize;
            let mut errno = None;
            for offset in (0..len).step_by(4096) {
                let page = &mut data[offset..offset + 4096];
                if let Err(err) = mem.read_exact_at(page, (region.start + offset) as u64) {
                    failed += 1;
                    errno = err.raw_os_error();
                    page.fill(0);
                }
            }
            if failed > 0 {
                scan.unreadable.push(Unreadable {
                    start: region.start,
                    end: region.end,
                    pages: failed,
                    errno,
                    label: label.clone(),
                });
            }
        }
        scan.bytes += len;
        needles.scan(&data, region.start, &label, &mut scan.hits);
    }
    scan
}

/// Scans a file (a core dump) for `needles`; addresses are file offsets.
/// In an ELF core, each hit's location also names the segment it lies in:
/// a `LOAD` segment (memory, by its address) or the `NOTE` segment (each
/// thread's saved registers, vector registers included).
pub fn scan_file(path: &std::path::Path, needles: &Needles) -> Scan {
    let data = fs::read(path).expect("read core file");
    let mut scan = Scan {
        regions: 1,
        bytes: data.len(),
        ..Scan::default()
    };
    needles.scan(&data, 0, &path.display().to_string(), &mut scan.hits);
    let segments = elf_segments(&data);
    for hit in &mut scan.hits {
        if let Some((_, label)) = segments
            .iter()
            .find(|(range, _)| range.contains(&hit.address))
        {
            hit.location.push_str(&format!(", in {label}"));
        }
    }
    scan
}

/// The file ranges of an ELF64 (little-endian) core's `LOAD` and `NOTE`
/// segments, with a label each; empty for anything else.
fn elf_segments(data: &[u8]) -> Vec<(std::ops::Range<usize>, String)> {
    let word = |at: usize, len: usize| -> Option<usize> {
        let bytes = data.get(at..at.checked_add(len)?)?;
        let mut le = [0u8; 8];
        le[..len].copy_from_slice(bytes);
        usize::try_from(u64::from_le_bytes(le)).ok()
    };
    if data.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Vec::new();
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (word(0x20, 8), word(0x36, 2), word(0x38, 2))
    else {
        return Vec::new();
    };
    (0..phnum)
        .filter_map(|i| {
            let header = phoff.checked_add(i.checked_mul(phentsize)?)?;
            let offset = word(header + 8, 8)?;
            let size = word(header + 32, 8)?;
            let label = match word(header, 4)? {
                1 => format!("LOAD segment of {:#x}", word(header + 16, 8)?),
                4 => "NOTE segment (saved registers)".to_string(),
                _ => return None,
            };
            Some((offset..offset.checked_add(size)?, label))
        })
        .collect()
}

/// A fresh directory under the system's temp dir, removed with everything
/// in it (a core file of hundreds of MB, say) when dropped, also when the
/// test fails before its end.
pub struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for TempDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Makes a [`TempDir`] named after `tag`, this process and a random nonce.
pub fn temp_dir(tag: &str) -> TempDir {
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).expect("getrandom");
    let dir = std::env::temp_dir().join(format!(
        "sealcache-{tag}-{}-{:016x}",
        std::process::id(),
        u64::from_le_bytes(nonce)
    ));
    fs::create_dir_all(&dir).expect("create temp dir");
    TempDir(dir)
}
