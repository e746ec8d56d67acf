//! A short tour: build a cache, insert, read, expire, and print what the
//! cache reports about its protections and its work.
//!
//! Run with `cargo run --release --example demo`.

use std::time::Duration;

use sealcache::{ExposeSecret, ManualClock, SealCache};

fn main() -> Result<(), sealcache::Error> {
    let clock = ManualClock::new();
    let cache = SealCache::builder()
        .ttl(Duration::from_secs(60))
        .max_entries(1000)
        .clock(clock.clone())
        .build()?;

    for i in 0..100 {
        cache.insert(&format!("tenant-{i}/db-password"), format!("pw-{i:04}"))?;
    }
    let secret = cache.get("tenant-7/db-password")?.expect("just inserted");
    println!(
        "tenant-7 password has {} bytes",
        secret.expose_secret().len()
    );
    let len = cache.with("tenant-8/db-password", <[u8]>::len)?;
    println!("read in locked memory: {len:?} bytes");

    println!("after 59 s: hit = {}", {
        clock.advance(Duration::from_secs(59));
        cache.get("tenant-7/db-password")?.is_some()
    });
    clock.advance(Duration::from_secs(1));
    println!(
        "after 60 s: hit = {}",
        cache.get("tenant-7/db-password")?.is_some()
    );
    clock.advance(Duration::from_secs(15));
    println!(
        "after 75 s the reaper has wiped the key: {:?}",
        cache.stats()
    );
    println!("protections: {}", cache.protections());
    println!("locked bytes for keys: {}", cache.locked_bytes());
    Ok(())
}
