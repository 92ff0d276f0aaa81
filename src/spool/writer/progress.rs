//! The bookkeeping of a live segment's durability, as plain structs: which bytes are written
//! ([`Watermark`], over out-of-order write completions), which are durable, which commits
//! wait for which offset, and whether the segment has failed ([`Progress`]).
//!
//! Pure: no io_uring, no files, no clock, no wakeups. The writer keeps one [`Progress`] per
//! segment in a `RefCell`, updates it from write and fdatasync completions, and wakes waiters
//! itself (see `syncer`); the tests below drive it directly.

use std::collections::BTreeMap;

use super::Failure;

/// The end of the contiguous written prefix of a file whose writes complete out of order.
///
/// Writes are reserved back to back; each completed range is reported with
/// [`Watermark::complete`]. Ranges above a gap wait in a map until the gap is filled.
#[derive(Debug, Default)]
pub(super) struct Watermark {
    /// Every byte below this offset is written.
    written: u64,
    /// Completed ranges above the watermark (not contiguous with it): start -> end. Holds the
    /// largest end seen for a start.
    done: BTreeMap<u64, u64>,
}

impl Watermark {
    /// Every byte below this offset is written.
    pub(super) fn get(&self) -> u64 {
        self.written
    }

    /// Marks `start..end` written and advances the watermark over contiguous ranges. Ranges
    /// that overlap or repeat ones already reported are absorbed (the writer reserves disjoint
    /// ranges, so they do not happen there).
    pub(super) fn complete(&mut self, start: u64, end: u64) {
        if start > self.written {
            let e = self.done.entry(start).or_insert(end);
            *e = (*e).max(end);
            return;
        }
        self.written = self.written.max(end);
        while let Some((&s, &e)) = self.done.first_key_value() {
            if s > self.written {
                break;
            }
            self.done.pop_first();
            self.written = self.written.max(e);
        }
    }

    /// Completed ranges waiting above a gap.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.done.len()
    }
}

/// Written and durable offsets, waiting commits and the failure of one segment.
///
/// A commit waits at a *target*, the end offset of its last frame. It is released with
/// success once the durable offset reaches its target ([`Progress::poll`]), or with the
/// segment's failure, whichever comes first.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// The written prefix (write completions arrive out of order).
    written: Watermark,
    /// Every byte below this offset is durable: an fdatasync that began after it was written
    /// has completed. Never above `written`.
    synced: u64,
    /// Commit targets waiting for an fdatasync -> number of commits waiting there. A commit
    /// leaves with [`Progress::release`] when its wait ends (or is cancelled).
    waiters: BTreeMap<u64, u32>,
    /// Why the segment failed, once it has: every waiter gets it, and nothing more is written.
    failure: Option<Failure>,
}

impl Progress {
    /// Every byte below this offset is written.
    pub(super) fn written(&self) -> u64 {
        self.written.get()
    }

    /// Every byte below this offset is durable.
    pub(super) fn synced(&self) -> u64 {
        self.synced
    }

    /// Marks `start..end` written (see [`Watermark::complete`]).
    pub(super) fn complete(&mut self, start: u64, end: u64) {
        self.written.complete(start, end);
    }

    /// An fdatasync that began when everything below `written` was written has completed.
    pub(super) fn synced_to(&mut self, written: u64) {
        self.synced = self.synced.max(written);
    }

    /// The failure, if the segment has failed.
    pub(super) fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// Whether the segment has failed.
    pub(super) fn failed(&self) -> bool {
        self.failure.is_some()
    }

    /// Records the segment's failure; returns `false` (and keeps the first) if it had failed
    /// already.
    pub(super) fn fail(&mut self, f: Failure) -> bool {
        if self.failure.is_some() {
            return false;
        }
        self.failure = Some(f);
        true
    }

    /// Registers `n` commits waiting at `target`.
    pub(super) fn wait(&mut self, target: u64, n: u32) {
        if n > 0 {
            *self.waiters.entry(target).or_insert(0) += n;
        }
    }

    /// One commit waiting at `target` leaves (its wait ended or was cancelled).
    pub(super) fn release(&mut self, target: u64) {
        if let Some(n) = self.waiters.get_mut(&target) {
            *n -= 1;
            if *n == 0 {
                self.waiters.remove(&target);
            }
        }
    }

    /// Whether any commit is waiting.
    pub(super) fn has_waiters(&self) -> bool {
        !self.waiters.is_empty()
    }

    /// Commits that an fdatasync now would make durable: those waiting at targets above the
    /// durable offset and at or below `written`.
    pub(super) fn batch(&self, written: u64) -> u64 {
        if written <= self.synced {
            return 0;
        }
        self.waiters
            .range(self.synced + 1..=written)
            .map(|(_, n)| u64::from(*n))
            .sum()
    }

    /// The highest target any commit waits at.
    pub(super) fn last_target(&self) -> Option<u64> {
        self.waiters.last_key_value().map(|(t, _)| *t)
    }

    /// Where a commit waiting at `target` stands: `Some(Err)` once the segment has failed,
    /// `Some(Ok)` once the durable offset has reached `target`, `None` while it must wait (or
    /// while its target is not known yet: a group not sealed).
    pub(super) fn poll(&self, target: Option<u64>) -> Option<Result<(), Failure>> {
        if let Some(f) = &self.failure {
            return Some(Err(f.clone()));
        }
        match target {
            Some(t) if self.synced >= t => Some(Ok(())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_completions_advance_at_once() {
        let mut w = Watermark::default();
        w.complete(0, 10);
        w.complete(10, 25);
        assert_eq!((w.get(), w.pending()), (25, 0));
    }

    #[test]
    fn out_of_order_completions_wait_for_the_gap() {
        let mut w = Watermark::default();
        w.complete(20, 30);
        w.complete(10, 20);
        assert_eq!(
            (w.get(), w.pending()),
            (0, 2),
            "nothing below the gap at 0..10"
        );
        w.complete(40, 50);
        w.complete(0, 10);
        assert_eq!((w.get(), w.pending()), (30, 1), "stops at the gap 30..40");
        w.complete(30, 40);
        assert_eq!((w.get(), w.pending()), (50, 0));
    }

    #[test]
    fn every_completion_order_of_a_few_ranges_ends_at_the_end() {
        let ranges = [(0, 3), (3, 4), (4, 10), (10, 11), (11, 20)];
        // All 120 orders.
        let mut idx = [0usize, 1, 2, 3, 4];
        let mut orders = Vec::new();
        permute(&mut idx, 0, &mut orders);
        assert_eq!(orders.len(), 120);
        for order in orders {
            let mut w = Watermark::default();
            let mut completed = [false; 5];
            for &i in &order {
                w.complete(ranges[i].0, ranges[i].1);
                completed[i] = true;
                // The end of the longest completed prefix.
                let prefix = completed.iter().take_while(|&&c| c).count();
                let expect = prefix.checked_sub(1).map_or(0, |k| ranges[k].1);
                assert_eq!(w.get(), expect, "{order:?}");
            }
            assert_eq!((w.get(), w.pending()), (20, 0), "{order:?}");
        }
    }

    fn permute(v: &mut [usize; 5], k: usize, out: &mut Vec<[usize; 5]>) {
        if k == v.len() {
            out.push(*v);
            return;
        }
        for i in k..v.len() {
            v.swap(k, i);
            permute(v, k + 1, out);
            v.swap(k, i);
        }
    }

    #[test]
    fn duplicate_and_overlapping_ranges_are_absorbed() {
        let mut w = Watermark::default();
        w.complete(10, 20);
        w.complete(10, 15); // the same start again, shorter: the longer end is kept
        w.complete(15, 30); // overlaps a pending range
        w.complete(0, 12); // overlaps the first pending range
        assert_eq!((w.get(), w.pending()), (30, 0));
        w.complete(5, 25); // entirely below the watermark: no change
        w.complete(0, 30);
        assert_eq!((w.get(), w.pending()), (30, 0));
        w.complete(25, 40); // starts below, ends above
        assert_eq!(w.get(), 40);
    }

    fn failure() -> Failure {
        Failure::Os(libc::EIO)
    }

    #[test]
    fn waiters_are_released_in_target_order_as_the_durable_offset_passes() {
        let mut p = Progress::default();
        for t in [30, 10, 20, 10] {
            p.wait(t, 1);
        }
        assert!(p.has_waiters());
        assert_eq!(p.last_target(), Some(30));
        // Writes complete out of order: only the prefix counts.
        p.complete(20, 30);
        p.complete(0, 10);
        assert_eq!(p.written(), 10);
        assert_eq!(p.batch(p.written()), 2, "the two commits at 10");
        p.synced_to(p.written());
        assert!(matches!(p.poll(Some(10)), Some(Ok(()))));
        assert!(p.poll(Some(20)).is_none());
        assert!(p.poll(Some(30)).is_none());
        assert!(p.poll(None).is_none(), "an unsealed group waits");
        p.release(10);
        p.release(10);
        assert_eq!(p.batch(p.written()), 0, "nothing new to sync");
        p.complete(10, 20);
        assert_eq!((p.written(), p.batch(p.written())), (30, 2));
        p.synced_to(p.written());
        assert!(matches!(p.poll(Some(20)), Some(Ok(()))));
        assert!(matches!(p.poll(Some(30)), Some(Ok(()))));
        p.release(20);
        p.release(30);
        assert!(!p.has_waiters());
        assert_eq!(p.last_target(), None);
    }

    #[test]
    fn the_durable_offset_never_moves_back() {
        let mut p = Progress::default();
        p.complete(0, 50);
        p.synced_to(50);
        p.synced_to(20); // a late, older fdatasync
        assert_eq!(p.synced(), 50);
    }

    #[test]
    fn several_commits_at_one_target_leave_one_by_one() {
        let mut p = Progress::default();
        p.wait(40, 3);
        p.wait(40, 0);
        p.complete(0, 40);
        assert_eq!(p.batch(40), 3);
        p.release(40);
        assert_eq!(p.batch(40), 2);
        p.release(40);
        p.release(40);
        assert!(!p.has_waiters());
        p.release(40); // an extra release is harmless
        assert!(!p.has_waiters());
    }

    #[test]
    fn failure_releases_every_waiter_with_the_first_error() {
        let mut p = Progress::default();
        p.wait(10, 1);
        p.wait(20, 1);
        p.complete(0, 10);
        p.synced_to(10);
        assert!(p.fail(failure()));
        assert!(!p.fail(Failure::Closed), "the first failure stays");
        assert!(p.failed());
        for target in [Some(10), Some(20), None] {
            assert!(
                matches!(p.poll(target), Some(Err(Failure::Os(libc::EIO)))),
                "{target:?}"
            );
        }
        assert!(matches!(p.failure(), Some(Failure::Os(libc::EIO))));
    }
}
