//! One process-wide budget for buffered bytes: request bodies kept whole (to route by `model`
//! and replay on failover) and answers held whole (to classify or translate them). Every
//! such buffer reserves its bytes as they arrive and gives them back when it is dropped, so
//! the sidecar's memory for request and answer data stays under one number however many
//! requests are in flight; a request that would go over it is refused with a clear error
//! (503, `buffer_budget_exhausted`) instead of the pod being OOM-killed with every request
//! in it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::class::Class;
use crate::providers::Failure;

/// The budget; clones share it.
#[derive(Debug, Clone)]
pub struct Budget(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    limit: usize,
    used: AtomicUsize,
}

/// The budget has no room for the bytes asked for.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the sidecar's buffer budget of {limit} bytes is in use by other requests (--max-buffered-bytes)")]
pub struct Exhausted {
    pub limit: usize,
}

impl Exhausted {
    /// An answer the budget has no room for, as an attempt's failure: 503
    /// `buffer_budget_exhausted` for the client, as for a request body. Classed as a client
    /// error: the target is not to blame (its breaker takes nothing from it), and another
    /// target's answer would need the same room, so it is returned, not failed over.
    pub fn failure(&self) -> Failure {
        let e = crate::error::Reason::BufferBudget(*self).to_api_error();
        let mut f =
            Failure::new(Class::ClientError, "the buffer budget has no room for the answer").status(e.status);
        f.body = Some(bytes::Bytes::from(e.to_json().to_string()));
        f
    }
}

impl Budget {
    pub fn new(limit: usize) -> Self {
        Self(Arc::new(Inner {
            limit,
            used: AtomicUsize::new(0),
        }))
    }

    /// An empty reservation, grown as bytes arrive.
    pub fn reservation(&self) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes: 0,
        }
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.0.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.0.limit
    }

    fn take(&self, n: usize) -> Result<(), Exhausted> {
        let limit = self.0.limit;
        self.0
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= limit)
            })
            .map(drop)
            .map_err(|_| Exhausted { limit })
    }

    fn give(&self, n: usize) {
        self.0.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Bytes held under the budget, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Budget,
    bytes: usize,
}

impl Reservation {
    /// Reserves `n` more bytes.
    pub fn grow(&mut self, n: usize) -> Result<(), Exhausted> {
        self.budget.take(n)?;
        self.bytes += n;
        Ok(())
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reservations add up to the limit and no further; dropping one gives its bytes back.
    #[test]
    fn reservations_stay_under_the_limit() {
        let b = Budget::new(100);
        let mut r1 = b.reservation();
        r1.grow(60).unwrap();
        let mut r2 = b.reservation();
        assert_eq!(r2.grow(41).unwrap_err().limit, 100);
        r2.grow(40).unwrap();
        assert_eq!(b.used(), 100);
        assert!(r2.grow(1).is_err());
        drop(r1);
        assert_eq!(b.used(), 40);
        r2.grow(60).unwrap();
        assert_eq!(r2.bytes(), 100);
        drop(r2);
        assert_eq!(b.used(), 0);
    }
}
