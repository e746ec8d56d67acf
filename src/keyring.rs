//! Epoch keys in the slots of the locked slab: create one per epoch, look it
//! up by id, wipe one at its deadline, shred all at once.
//!
//! Time is cut into epochs of length R. The key of epoch `e` is made from 32
//! `getrandom` bytes written straight into its slab slot the first time an
//! entry is sealed in `e`, and is needed until `end(e) + key_life` (the TTL,
//! plus any stale-serving allowance): every entry sealed under it has expired
//! by then. Keys get increasing ids and live in slot `id % slots`; the slab
//! has at least `key_life / R + 2` slots, so a slot is only ever reused after
//! its previous key's deadline, and a late reaper is caught up inline.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Error;
use crate::memory::{self, Backend, LockedSlab, Protections, SharedSlab, SlabWrite};
use crate::seal::KEY_LEN;

/// The usable length of a slab for `live` keys on pages of `page` bytes
/// (whole pages less the canary: see [`memory::page_filling_len`]). 4,080
/// bytes for up to 127 keys on 4 KiB pages.
fn slab_len(live: usize, page: usize) -> usize {
    memory::page_filling_len(live.saturating_mul(KEY_LEN), page)
}

/// A key id that no key ever has.
const NO_KEY: u64 = 0;

/// Where a live key sits and when it must be gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    key_id: u64,
    epoch: u64,
    deadline: u64,
}

/// Bookkeeping of the slab's slots, guarded together with the key bytes.
#[derive(Debug)]
pub(crate) struct SlotTable {
    slots: Vec<Option<Slot>>,
    /// The key of the current epoch, if made: (epoch, key id).
    current: Option<(u64, u64)>,
    next_key_id: u64,
}

/// A key that was just created and must be handed to the reaper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NewKey {
    pub(crate) key_id: u64,
    pub(crate) deadline: u64,
}

/// The epoch keys of one cache.
pub(crate) struct Keyring {
    slab: SharedSlab<SlotTable>,
    epoch_nanos: u64,
    key_life_nanos: u64,
    created: AtomicU64,
    wiped: AtomicU64,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("epoch_nanos", &self.epoch_nanos)
            .field("created", &self.created.load(Ordering::Relaxed))
            .field("wiped", &self.wiped.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// Allocates a slab with room for every key that can be live at once.
    pub(crate) fn new(
        epoch_nanos: u64,
        key_life_nanos: u64,
        stripes: usize,
        backend: Backend,
    ) -> Result<(Self, Protections), Error> {
        let epoch_nanos = epoch_nanos.max(1);
        let live = key_life_nanos.div_ceil(epoch_nanos).saturating_add(2);
        // At most ttl·2 / (ttl/64) + 2 = 130 with validated settings.
        let live = usize::try_from(live).unwrap_or(usize::MAX);
        let page = memory::page_size().map_err(Error::Protection)?;
        let len = slab_len(live, page);
        let (slab, protections) = LockedSlab::allocate(len, backend).map_err(Error::Protection)?;
        let slots = len / KEY_LEN;
        let table = SlotTable {
            slots: vec![None; slots],
            current: None,
            next_key_id: NO_KEY + 1,
        };
        let keyring = Self {
            slab: SharedSlab::new(slab, table, stripes),
            epoch_nanos,
            key_life_nanos,
            created: AtomicU64::new(0),
            wiped: AtomicU64::new(0),
        };
        keyring.slab.write().slab_mut().wipe();
        Ok((keyring, protections))
    }

    /// The epoch a clock reading falls in.
    pub(crate) fn epoch_of(&self, now: u64) -> u64 {
        now / self.epoch_nanos
    }

    /// Runs `f` with the current epoch's key (making it if needed) and
    /// returns its result, the key id, and the key to schedule if new.
    pub(crate) fn with_current<R>(
        &self,
        now: u64,
        f: impl FnOnce(u64, &[u8; KEY_LEN]) -> R,
    ) -> Result<(R, u64, Option<NewKey>), Error> {
        if self.slab.forked() {
            return Err(Error::Forked);
        }
        let epoch = self.epoch_of(now);
        // A thread whose reading is older than the current key's epoch (it
        // read the clock just before another thread made the next epoch's
        // key) seals under that newer key: its deadline is later, so it
        // still outlives the entry, and no extra key is made.
        {
            let guard = self.slab.read();
            if let Some((key_epoch, key_id, key)) = current_key(guard.bytes(), guard.meta(), epoch)
            {
                return Ok((f(key_epoch, key), key_id, None));
            }
        }
        let mut guard = self.slab.write();
        if let Some((key_epoch, key_id, key)) = current_key(guard.bytes(), guard.meta(), epoch) {
            return Ok((f(key_epoch, key), key_id, None));
        }
        // Catch up on any key whose deadline has passed (a late or stopped
        // reaper): while inserts continue, no key outlives its deadline by
        // more than one epoch.
        let overdue: Vec<u64> = guard
            .meta()
            .slots
            .iter()
            .flatten()
            .filter(|slot| slot.deadline <= now)
            .map(|slot| slot.key_id)
            .collect();
        for key_id in overdue {
            wipe_locked(&mut guard, key_id);
            self.wiped.fetch_add(1, Ordering::Relaxed);
        }
        let table = guard.meta_mut();
        let key_id = table.next_key_id;
        table.next_key_id += 1;
        let slots = table.slots.len() as u64;
        let index = (key_id % slots) as usize;
        let stale = table.slots[index].take();
        let deadline = epoch
            .saturating_add(1)
            .saturating_mul(self.epoch_nanos)
            .saturating_add(self.key_life_nanos);
        table.slots[index] = Some(Slot {
            key_id,
            epoch,
            deadline,
        });
        table.current = Some((epoch, key_id));
        let range = index * KEY_LEN..(index + 1) * KEY_LEN;
        let bytes = &mut guard.bytes_mut()[range.clone()];
        if stale.is_some() {
            // Only a clock anomaly can leave a live key here (the slab has
            // room for every key that can be live): it is overwritten.
            self.wiped.fetch_add(1, Ordering::Relaxed);
        }
        if getrandom::fill(bytes).is_err() {
            bytes.iter_mut().for_each(|b| *b = 0);
            let table = guard.meta_mut();
            table.slots[index] = None;
            table.current = None;
            return Err(Error::Random);
        }
        self.created.fetch_add(1, Ordering::Relaxed);
        // The slot was just filled, so the key is there; should that ever not
        // hold, refusing to seal is the safe answer.
        let key = key_at(guard.bytes(), guard.meta(), key_id).ok_or(Error::Random)?;
        Ok((f(epoch, key), key_id, Some(NewKey { key_id, deadline })))
    }

    /// Runs `f` with the key `key_id` and its epoch, or returns `None` if
    /// that key has been wiped.
    pub(crate) fn with_key<R>(
        &self,
        key_id: u64,
        f: impl FnOnce(u64, &[u8; KEY_LEN]) -> R,
    ) -> Result<Option<R>, Error> {
        if self.slab.forked() {
            return Err(Error::Forked);
        }
        let guard = self.slab.read();
        let table = guard.meta();
        let Some(slot) = slot_of(table, key_id) else {
            return Ok(None);
        };
        Ok(key_at(guard.bytes(), table, key_id).map(|key| f(slot.epoch, key)))
    }

    /// Wipes key `key_id` if it is still live; returns whether it was.
    pub(crate) fn wipe(&self, key_id: u64) -> bool {
        if self.slab.forked() {
            return false;
        }
        let mut guard = self.slab.write();
        let wiped = wipe_locked(&mut guard, key_id);
        if wiped {
            self.wiped.fetch_add(1, Ordering::Relaxed);
        }
        wiped
    }

    /// Wipes every key at once (crypto-erase); returns how many were live.
    pub(crate) fn shred_all(&self) -> usize {
        if self.slab.forked() {
            return 0;
        }
        let mut guard = self.slab.write();
        let table = guard.meta_mut();
        let live = table.slots.iter().filter(|slot| slot.is_some()).count();
        table.slots.iter_mut().for_each(|slot| *slot = None);
        table.current = None;
        guard.slab_mut().wipe();
        self.wiped.fetch_add(live as u64, Ordering::Relaxed);
        live
    }

    /// Ids and deadlines of the live keys whose deadline is at or before `now`.
    pub(crate) fn due(&self, now: u64) -> Vec<u64> {
        if self.slab.forked() {
            return Vec::new();
        }
        let guard = self.slab.read();
        guard
            .meta()
            .slots
            .iter()
            .flatten()
            .filter(|slot| slot.deadline <= now)
            .map(|slot| slot.key_id)
            .collect()
    }

    /// Number of keys live right now.
    pub(crate) fn live_keys(&self) -> usize {
        if self.slab.forked() {
            return 0;
        }
        let guard = self.slab.read();
        guard.meta().slots.iter().filter(|s| s.is_some()).count()
    }

    /// Whether this process is a fork child of the one that made the slab.
    pub(crate) fn forked(&self) -> bool {
        self.slab.forked()
    }

    /// Keys created so far.
    pub(crate) fn created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }

    /// Keys wiped so far (at their deadline, inline, or by shredding).
    pub(crate) fn wiped(&self) -> u64 {
        self.wiped.load(Ordering::Relaxed)
    }

    /// Bytes of locked memory held for keys.
    pub(crate) fn locked_bytes(&self) -> usize {
        let range = self.slab.address_range();
        range.end - range.start
    }

    /// Address range of the slab's usable bytes (test hooks).
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    pub(crate) fn address_range(&self) -> std::ops::Range<usize> {
        self.slab.address_range()
    }

    /// Copies of the live keys (test hooks only: the forensics tests hand
    /// them to the scanning parent).
    #[cfg(feature = "test-hooks")]
    pub(crate) fn export_live_keys(&self) -> Vec<[u8; KEY_LEN]> {
        let guard = self.slab.read();
        let table = guard.meta();
        table
            .slots
            .iter()
            .flatten()
            .filter_map(|slot| key_at(guard.bytes(), table, slot.key_id).copied())
            .collect()
    }

    /// Whether every byte of the slab is zero (tests and test hooks).
    #[cfg(any(test, feature = "test-hooks"))]
    pub(crate) fn slab_is_zero(&self) -> bool {
        self.slab.read().bytes().iter().all(|&b| b == 0)
    }
}

fn slot_of(table: &SlotTable, key_id: u64) -> Option<Slot> {
    let slots = table.slots.len() as u64;
    if key_id == NO_KEY || slots == 0 {
        return None;
    }
    table.slots[(key_id % slots) as usize].filter(|slot| slot.key_id == key_id)
}

/// The current key, if it was made for `epoch` or a later one: (its epoch,
/// its id, its bytes).
fn current_key<'a>(
    bytes: &'a [u8],
    table: &SlotTable,
    epoch: u64,
) -> Option<(u64, u64, &'a [u8; KEY_LEN])> {
    let (key_epoch, key_id) = table.current?;
    if key_epoch < epoch {
        return None;
    }
    Some((key_epoch, key_id, key_at(bytes, table, key_id)?))
}

fn key_at<'a>(bytes: &'a [u8], table: &SlotTable, key_id: u64) -> Option<&'a [u8; KEY_LEN]> {
    slot_of(table, key_id)?;
    let index = (key_id % table.slots.len() as u64) as usize;
    let start = index.checked_mul(KEY_LEN)?;
    bytes
        .get(start..start.checked_add(KEY_LEN)?)?
        .try_into()
        .ok()
}

/// Zeroizes key `key_id`'s slot and frees it; false if it was not live.
fn wipe_locked(guard: &mut SlabWrite<'_, SlotTable>, key_id: u64) -> bool {
    let table = guard.meta_mut();
    let slots = table.slots.len() as u64;
    if slots == 0 {
        return false;
    }
    let index = (key_id % slots) as usize;
    if !matches!(table.slots[index], Some(slot) if slot.key_id == key_id) {
        return false;
    }
    table.slots[index] = None;
    if matches!(table.current, Some((_, id)) if id == key_id) {
        table.current = None;
    }
    if let Some(bytes) = guard
        .bytes_mut()
        .get_mut(index * KEY_LEN..(index + 1) * KEY_LEN)
    {
        zeroize::Zeroize::zeroize(bytes);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::CANARY_LEN;

    const SEC: u64 = 1_000_000_000;

    fn keyring() -> Keyring {
        Keyring::new(15 * SEC, 60 * SEC, 4, Backend::LockedAnonymous)
            .unwrap()
            .0
    }

    #[test]
    fn the_slab_fills_whole_pages_of_any_size() {
        // 4 KiB pages: the default settings' 130 keys, and the figures the
        // documents quote.
        assert_eq!(slab_len(130, 4096), 2 * 4096 - 16);
        assert_eq!(slab_len(127, 4096), 4080);
        assert_eq!(slab_len(6, 4096), 4080);
        // 16 and 64 KiB pages (aarch64, ppc64le): no slack before the canary.
        for page in [16 * 1024, 64 * 1024] {
            for live in [1, 6, 130, 511, 512, 2048, 5000] {
                let len = slab_len(live, page);
                assert_eq!((len + CANARY_LEN) % page, 0, "{live} keys, page {page}");
                assert!(len >= live * KEY_LEN, "{live} keys, page {page}");
                assert!(len - live * KEY_LEN < page, "{live} keys, page {page}");
            }
        }
        assert_eq!(slab_len(130, 16 * 1024), 16 * 1024 - 16);
        // The real page size: the slab starts a page after a boundary, less
        // the canary.
        let ring = keyring();
        let page = memory::page_size().unwrap();
        let range = ring.address_range();
        assert_eq!((range.start - CANARY_LEN) % page, 0);
        assert_eq!(range.end % page, 0);
    }

    #[test]
    fn one_key_per_epoch_with_deadline_end_plus_ttl() {
        let ring = keyring();
        let (_, id1, new1) = ring.with_current(0, |e, _| e).unwrap();
        let (_, id2, new2) = ring.with_current(14 * SEC, |e, _| e).unwrap();
        assert_eq!(id1, id2);
        assert_eq!(new1.unwrap().deadline, 75 * SEC);
        assert!(new2.is_none());
        let (epoch, id3, new3) = ring.with_current(15 * SEC, |e, _| e).unwrap();
        assert_eq!(epoch, 1);
        assert_ne!(id3, id1);
        assert_eq!(new3.unwrap().deadline, 90 * SEC);
        assert_eq!(ring.created(), 2);
        assert_eq!(ring.live_keys(), 2);
    }

    #[test]
    fn a_reading_from_before_the_current_epoch_reuses_its_key() {
        let ring = keyring();
        let (_, first, _) = ring.with_current(14 * SEC, |e, _| e).unwrap();
        let (epoch, current, new) = ring.with_current(15 * SEC, |e, _| e).unwrap();
        assert_eq!((epoch, new.is_some()), (1, true));
        // A thread that read the clock at 14.9 s seals only now.
        let (epoch, id, new) = ring.with_current(14 * SEC + SEC - 1, |e, _| e).unwrap();
        assert_eq!(
            (epoch, id, new),
            (1, current, None),
            "the newer key, not a third"
        );
        assert_ne!(id, first);
        assert_eq!(ring.created(), 2);
        // The key it sealed under opens with the epoch it reported.
        assert_eq!(ring.with_key(id, |e, _| e).unwrap(), Some(1));
    }

    #[test]
    fn keys_are_random_and_distinct() {
        let ring = keyring();
        let (k1, _, _) = ring.with_current(0, |_, k| *k).unwrap();
        let (k2, _, _) = ring.with_current(15 * SEC, |_, k| *k).unwrap();
        assert_ne!(k1, [0; 32]);
        assert_ne!(k1, k2);
    }

    #[test]
    fn wiped_key_is_gone_and_zeroed() {
        let ring = keyring();
        let (_, id, _) = ring.with_current(0, |_, _| ()).unwrap();
        assert!(ring.with_key(id, |_, _| ()).unwrap().is_some());
        assert_eq!(ring.due(75 * SEC - 1), Vec::<u64>::new());
        assert_eq!(ring.due(75 * SEC), vec![id]);
        assert!(!ring.slab_is_zero(), "a random key is in the slab");
        assert!(ring.wipe(id));
        assert!(ring.slab_is_zero(), "its bytes are zeroed");
        assert!(!ring.wipe(id), "wiping twice is a no-op");
        assert!(ring.with_key(id, |_, _| ()).unwrap().is_none());
        assert_eq!(ring.wiped(), 1);
        assert_eq!(ring.live_keys(), 0);
    }

    #[test]
    fn shred_all_wipes_everything_and_new_keys_follow() {
        let ring = keyring();
        let (_, old, _) = ring.with_current(0, |_, _| ()).unwrap();
        ring.with_current(20 * SEC, |_, _| ()).unwrap();
        assert_eq!(ring.shred_all(), 2);
        assert_eq!(ring.shred_all(), 0);
        assert!(ring.with_key(old, |_, _| ()).unwrap().is_none());
        let (_, new, fresh) = ring.with_current(20 * SEC, |_, _| ()).unwrap();
        assert_ne!(new, old);
        assert!(fresh.is_some());
    }

    #[test]
    fn slots_are_reused_only_after_the_deadline_even_without_a_reaper() {
        let ring = keyring();
        let mut ids = Vec::new();
        for epoch in 0..1000u64 {
            let (_, id, _) = ring.with_current(epoch * 15 * SEC, |_, _| ()).unwrap();
            ids.push(id);
        }
        // Keys of the last five epochs (deadline > now) are all still live;
        // every older one was wiped inline when a later key was made.
        for &id in &ids[995..] {
            assert!(ring.with_key(id, |_, _| ()).unwrap().is_some());
        }
        assert!(ring.with_key(ids[994], |_, _| ()).unwrap().is_none());
        assert_eq!(ring.live_keys(), 5);
        assert_eq!(ring.wiped(), 995);
    }
}
