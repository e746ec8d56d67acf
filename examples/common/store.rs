//! The credential store behind the examples: an embedded SQLite database
//! whose rows hold secrets encrypted at rest, as a real server keeps them.
//!
//! Each secret is sealed with XChaCha20-Poly1305 under a key-encryption key
//! (KEK) that only this process holds (in production it would come from a
//! KMS or HSM), with the credential's name as associated data, so a row
//! copied onto another name fails to decrypt. Every read is counted, which
//! is how the demo and the HTTP test measure what the cache saves.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use sealcache::SecretBytes;

const NONCE_LEN: usize = 24;
const SCHEMA: &str = "PRAGMA journal_mode = WAL;
     CREATE TABLE credentials (
         name    TEXT PRIMARY KEY NOT NULL,
         nonce   BLOB NOT NULL,
         sealed  BLOB NOT NULL,
         version INTEGER NOT NULL
     ) WITHOUT ROWID;";

/// Called by [`StoreConn::fetch`] after each query, before decrypting; tests
/// use it to hold a load open at a known point.
pub type AfterQuery = Arc<dyn Fn(&str) + Send + Sync>;

/// Why a store operation failed. Never carries secret material.
#[derive(Debug)]
pub enum StoreError {
    /// Creating the database directory failed.
    Io(std::io::Error),
    /// SQLite refused a statement.
    Sqlite(rusqlite::Error),
    /// The operating system's random generator failed.
    Random,
    /// A row failed to authenticate under the KEK (tampered or misplaced).
    Corrupt {
        /// The credential whose row is bad.
        name: String,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(err) => write!(f, "database directory: {err}"),
            Self::Sqlite(err) => write!(f, "sqlite: {err}"),
            Self::Random => f.write_str("the system random generator failed"),
            Self::Corrupt { name } => write!(f, "credential {name:?} failed to decrypt"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        Self::Sqlite(err)
    }
}

/// Fills `buf` from the operating system's random generator.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), StoreError> {
    getrandom::fill(buf).map_err(|_| StoreError::Random)
}

/// A fresh random secret: `bytes` random bytes, hex-encoded.
pub fn random_secret(bytes: usize) -> Result<String, StoreError> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut raw = vec![0u8; bytes];
    random_bytes(&mut raw)?;
    // Sized once and written in place: no temporary strings, no growth
    // that would leave parts of the secret in freed buffers.
    let mut hex = String::with_capacity(2 * bytes);
    for byte in &raw {
        hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    zeroize::Zeroize::zeroize(&mut raw);
    Ok(hex)
}

/// How the store behaves on reads.
#[derive(Clone, Default)]
pub struct StoreOptions {
    /// Extra time each read takes (simulates a remote database).
    pub latency: Duration,
    /// Runs after each query; see [`AfterQuery`].
    pub after_query: Option<AfterQuery>,
}

/// A handle to the credential database (cheap to clone).
#[derive(Clone)]
pub struct CredentialStore {
    shared: Arc<Shared>,
}

struct Shared {
    dir: TempDir,
    kek: XChaCha20Poly1305,
    queries: AtomicU64,
    options: StoreOptions,
}

impl CredentialStore {
    /// Creates an empty database in a fresh temporary directory, under a
    /// fresh random KEK.
    pub fn create(options: StoreOptions) -> Result<Self, StoreError> {
        let dir = TempDir::new()?;
        let mut kek = [0u8; 32];
        random_bytes(&mut kek)?;
        let cipher = XChaCha20Poly1305::new(&kek.into());
        zeroize::Zeroize::zeroize(&mut kek);
        let store = Self {
            shared: Arc::new(Shared {
                dir,
                kek: cipher,
                queries: AtomicU64::new(0),
                options,
            }),
        };
        store.connect()?.conn.execute_batch(SCHEMA)?;
        Ok(store)
    }

    /// Where the database file lives.
    pub fn path(&self) -> PathBuf {
        self.shared.dir.path().join("credentials.sqlite3")
    }

    /// Database reads made so far (every [`StoreConn::fetch`]).
    pub fn queries(&self) -> u64 {
        self.shared.queries.load(Ordering::Relaxed)
    }

    /// A new connection. SQLite connections are not shared between
    /// threads: each worker opens its own.
    pub fn connect(&self) -> Result<StoreConn, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(self.path(), flags)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        Ok(StoreConn {
            conn,
            store: self.clone(),
        })
    }

    /// Encrypts `secret` under the KEK for the row `name`: `(nonce, sealed)`.
    fn seal(&self, name: &str, secret: &[u8]) -> Result<([u8; NONCE_LEN], Vec<u8>), StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        let mut sealed = Vec::with_capacity(secret.len() + 16);
        sealed.extend_from_slice(secret);
        self.shared
            .kek
            .encrypt_in_place(&XNonce::from(nonce), name.as_bytes(), &mut sealed)
            .map_err(|_| StoreError::Corrupt { name: name.into() })?;
        Ok((nonce, sealed))
    }

    /// Decrypts a row into an exact-size, zeroize-on-drop buffer.
    fn open(
        &self,
        name: &str,
        nonce: &[u8],
        mut sealed: Vec<u8>,
    ) -> Result<SecretBytes, StoreError> {
        let corrupt = || StoreError::Corrupt { name: name.into() };
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| corrupt())?;
        self.shared
            .kek
            .decrypt_in_place(&XNonce::from(nonce), name.as_bytes(), &mut sealed)
            .map_err(|_| corrupt())?;
        // Copies into an exact-size buffer and zeroizes `sealed`.
        Ok(SecretBytes::from(sealed))
    }
}

/// One connection to the credential database.
pub struct StoreConn {
    conn: Connection,
    store: CredentialStore,
}

impl StoreConn {
    /// Stores many credentials in one transaction.
    pub fn insert_all<'a>(
        &mut self,
        rows: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO credentials (name, nonce, sealed, version) VALUES (?1, ?2, ?3, 1)",
            )?;
            for (name, secret) in rows {
                let (nonce, sealed) = self.store.seal(name, secret)?;
                insert.execute(params![name, &nonce[..], sealed])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The names of every stored credential (not secret): one counted
    /// database query.
    pub fn names(&mut self) -> Result<Vec<String>, StoreError> {
        self.store.shared.queries.fetch_add(1, Ordering::Relaxed);
        let mut select = self.conn.prepare("SELECT name FROM credentials")?;
        let names = select
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(names)
    }

    /// Reads and decrypts one credential: one counted database query.
    /// `Ok(None)` if there is no such credential.
    pub fn fetch(&mut self, name: &str) -> Result<Option<SecretBytes>, StoreError> {
        let shared = &self.store.shared;
        shared.queries.fetch_add(1, Ordering::Relaxed);
        if !shared.options.latency.is_zero() {
            std::thread::sleep(shared.options.latency);
        }
        let row = self
            .conn
            .prepare_cached("SELECT nonce, sealed FROM credentials WHERE name = ?1")?
            .query_row([name], |row| Ok((row.get::<_, Vec<u8>>(0)?, row.get(1)?)))
            .optional()?;
        if let Some(hook) = &shared.options.after_query {
            hook(name);
        }
        row.map(|(nonce, sealed)| self.store.open(name, &nonce, sealed))
            .transpose()
    }

    /// Replaces the secret of `name` (a rotation). `Ok(false)` if there is
    /// no such credential.
    pub fn rotate(&mut self, name: &str, secret: &[u8]) -> Result<bool, StoreError> {
        let (nonce, sealed) = self.store.seal(name, secret)?;
        let changed = self.conn.execute(
            "UPDATE credentials SET nonce = ?2, sealed = ?3, version = version + 1 WHERE name = ?1",
            params![name, &nonce[..], sealed],
        )?;
        Ok(changed == 1)
    }
}

/// A directory under the system temporary directory, removed on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> Result<Self, StoreError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!(
            "sealcache-example-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path).map_err(StoreError::Io)?;
        Ok(Self { path })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
