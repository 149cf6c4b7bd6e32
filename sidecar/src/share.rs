//! Thresholds from a share: `spec.scoring.cheapShare` asks for a share of scored requests to
//! go to cheap targets first, and each route keeps a rolling histogram of its recent scores
//! from which `simpleBelow` is read as that quantile (and `complexAbove` as the quantile
//! halfway through the rest). The share then holds on the route's own traffic, whatever its
//! mix, instead of on the mix the default thresholds were calibrated on.
//!
//! Bounded: [`SLICES`] slices of [`BINS`] counters each; a slice takes [`SLICE_LEN`] scores,
//! then the oldest slice is cleared and reused, so the window is the last 1,536 to 2,048
//! scores. Until [`MIN_SCORES`] have been seen the policy's fixed thresholds apply. The
//! thresholds are recomputed every [`UPDATE_EVERY`] scores and read lock-free.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Histogram bins over [0, 1].
pub const BINS: usize = 200;
/// Slices of the rolling window.
pub const SLICES: usize = 4;
/// Scores per slice.
pub const SLICE_LEN: u32 = 512;
/// Scores seen before the share takes over from the fixed thresholds.
pub const MIN_SCORES: u32 = 200;
/// Scores between two recomputations of the thresholds.
pub const UPDATE_EVERY: u32 = 16;

/// The recent scores of one route under one scorer, and the thresholds derived from them.
#[derive(Debug)]
pub struct ScoreWindow {
    hist: Mutex<Hist>,
    /// `f64` bits of `simple_below` and `complex_above`; [`UNSET`] until calibrated.
    simple_below: AtomicU64,
    complex_above: AtomicU64,
}

const UNSET: u64 = u64::MAX;

#[derive(Debug)]
struct Hist {
    bins: [[u32; BINS]; SLICES],
    counts: [u32; SLICES],
    current: usize,
    since_update: u32,
}

impl Default for ScoreWindow {
    fn default() -> Self {
        Self {
            hist: Mutex::new(Hist {
                bins: [[0; BINS]; SLICES],
                counts: [0; SLICES],
                current: 0,
                since_update: 0,
            }),
            simple_below: AtomicU64::new(UNSET),
            complex_above: AtomicU64::new(UNSET),
        }
    }
}

impl ScoreWindow {
    /// The calibrated `(simple_below, complex_above)`, once enough scores have been seen.
    pub fn thresholds(&self) -> Option<(f64, f64)> {
        let lo = self.simple_below.load(Ordering::Relaxed);
        let hi = self.complex_above.load(Ordering::Relaxed);
        (lo != UNSET && hi != UNSET).then(|| (f64::from_bits(lo), f64::from_bits(hi)))
    }

    /// Records a score; every [`UPDATE_EVERY`] scores, recomputes the thresholds for
    /// `cheap_share` and returns them.
    pub fn observe(&self, score: f64, cheap_share: f64) -> Option<(f64, f64)> {
        let Ok(mut h) = self.hist.lock() else {
            return None;
        };
        let bin = bin_of(score);
        let cur = h.current;
        if let Some(c) = h.bins.get_mut(cur).and_then(|b| b.get_mut(bin)) {
            *c = c.saturating_add(1);
        }
        if let Some(n) = h.counts.get_mut(cur) {
            *n = n.saturating_add(1);
        }
        if h.counts.get(cur).is_some_and(|&n| n >= SLICE_LEN) {
            let next = (cur + 1) % SLICES;
            h.current = next;
            if let Some(b) = h.bins.get_mut(next) {
                *b = [0; BINS];
            }
            if let Some(n) = h.counts.get_mut(next) {
                *n = 0;
            }
        }
        h.since_update += 1;
        let total: u32 = h.counts.iter().sum();
        if total < MIN_SCORES || h.since_update < UPDATE_EVERY && self.thresholds().is_some() {
            return None;
        }
        h.since_update = 0;
        let share = if cheap_share.is_finite() {
            cheap_share.clamp(0.0, 1.0)
        } else {
            0.5
        };
        let lo = h.quantile(share, total);
        let hi = h.quantile(share + (1.0 - share) / 2.0, total).max(lo);
        drop(h);
        self.simple_below.store(lo.to_bits(), Ordering::Relaxed);
        self.complex_above.store(hi.to_bits(), Ordering::Relaxed);
        Some((lo, hi))
    }
}

fn bin_of(score: f64) -> usize {
    if score.is_nan() {
        return 0;
    }
    // Truncation is the binning: [0, 1/BINS) is bin 0, and 1.0 joins the last bin.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "clamped to [0, BINS - 1]"
    )]
    let b = (score.clamp(0.0, 1.0) * BINS as f64) as usize;
    b.min(BINS - 1)
}

impl Hist {
    /// The score below which `q` of the window lies, interpolated linearly inside its bin.
    fn quantile(&self, q: f64, total: u32) -> f64 {
        if q <= 0.0 {
            return 0.0;
        }
        if q >= 1.0 {
            return 1.0;
        }
        let want = q * f64::from(total);
        let mut below = 0.0;
        let width = 1.0 / BINS as f64;
        for bin in 0..BINS {
            let n: u32 = self.bins.iter().map(|s| s.get(bin).copied().unwrap_or(0)).sum();
            let n = f64::from(n);
            if below + n >= want && n > 0.0 {
                return ((bin as f64 + (want - below) / n) * width).clamp(0.0, 1.0);
            }
            below += n;
        }
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing is calibrated before `MIN_SCORES` scores; then `simpleBelow` sits at the
    /// requested quantile and `complexAbove` halfway through the rest.
    #[test]
    fn thresholds_follow_the_share_after_warm_up() {
        let w = ScoreWindow::default();
        let mut last = None;
        for i in 0..1000u32 {
            let s = f64::from(i % 100) / 100.0 + 0.005;
            let r = w.observe(s, 0.6);
            if i + 1 < MIN_SCORES {
                assert_eq!(r, None, "calibrated after {i} scores");
                assert_eq!(w.thresholds(), None);
            }
            last = r.or(last);
        }
        let (lo, hi) = w.thresholds().unwrap_or((f64::NAN, f64::NAN));
        assert!((lo - 0.6).abs() < 0.02, "{lo}");
        assert!((hi - 0.8).abs() < 0.02, "{hi}");
        assert!(last.is_some());
    }

    /// Whatever the mix, the share of scores under the calibrated `simpleBelow` is the share
    /// asked for: here a mix where nearly everything scores high.
    #[test]
    fn share_holds_on_a_skewed_mix() {
        let w = ScoreWindow::default();
        let mut rng = fastrand::Rng::with_seed(7);
        let draw = |rng: &mut fastrand::Rng| 0.7 + 0.3 * rng.f64().powi(3);
        for _ in 0..2000 {
            w.observe(draw(&mut rng), 0.3);
        }
        let (lo, _) = w.thresholds().unwrap_or((0.0, 0.0));
        let n = 5000;
        let cheap = (0..n).filter(|_| draw(&mut rng) < lo).count();
        let share = cheap as f64 / f64::from(n);
        assert!((share - 0.3).abs() < 0.04, "share {share} at threshold {lo}");
    }

    /// The window rolls: after the traffic changes, the thresholds follow the new scores
    /// within one window, and memory stays at `SLICES × BINS` counters.
    #[test]
    fn window_forgets_old_traffic() {
        let w = ScoreWindow::default();
        for _ in 0..3000 {
            w.observe(0.1, 0.5);
        }
        let (before, _) = w.thresholds().unwrap_or((f64::NAN, 0.0));
        assert!(before < 0.11, "{before}");
        for _ in 0..(SLICES as u32 * SLICE_LEN) {
            w.observe(0.9, 0.5);
        }
        let (after, _) = w.thresholds().unwrap_or((f64::NAN, 0.0));
        assert!(after > 0.89, "{after}");
    }

    /// Shares of 0 and 1 send nothing, and everything, to cheap targets.
    #[test]
    fn extreme_shares() {
        let w = ScoreWindow::default();
        for i in 0..400u32 {
            w.observe(f64::from(i) / 400.0, 0.0);
        }
        assert_eq!(w.thresholds().map(|t| t.0), Some(0.0));
        for i in 0..400u32 {
            w.observe(f64::from(i) / 400.0, 1.0);
        }
        assert_eq!(w.thresholds(), Some((1.0, 1.0)));
    }
}
