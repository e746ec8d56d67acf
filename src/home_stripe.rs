//! Each thread's home stripe: an index assigned round-robin on a thread's
//! first use, so that threads spread over striped locks and pools and each
//! stripe's cache line stays in one core's cache.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The calling thread's home stripe among `stripes` (at least one).
pub(crate) fn home_stripe(stripes: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static HOME: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    HOME.with(|home| *home) % stripes.max(1)
}

#[cfg(test)]
mod tests {
    use super::home_stripe;

    #[test]
    fn a_thread_keeps_its_stripe_and_threads_spread_over_stripes() {
        let mine = home_stripe(8);
        assert_eq!(home_stripe(8), mine);
        let others: std::collections::HashSet<usize> = (0..8)
            .map(|_| std::thread::spawn(|| home_stripe(8)).join().unwrap())
            .collect();
        // Eight threads started one after another take eight consecutive
        // indices (other tests may take some in between, never all).
        assert!(others.len() >= 2, "{others:?}");
        assert_eq!(home_stripe(0), 0);
    }
}
