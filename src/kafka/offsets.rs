//! Which offset of a partition may be committed: the first one not yet durably handled.
//!
//! Messages of a partition are handled concurrently and finish in any order; the committed offset may only
//! move past a message once it *and every message before it* is stored (or dead-lettered). A message that
//! keeps failing (store down) holds the offset back, however many later ones succeed.

use std::collections::BTreeMap;

/// One partition's messages in flight.
#[derive(Debug, Default)]
pub struct PartitionOffsets {
    /// offset → done.
    pending: BTreeMap<i64, bool>,
    /// The next offset to commit: everything below it is done.
    committable: Option<i64>,
}

impl PartitionOffsets {
    /// A message was received.
    pub fn started(&mut self, offset: i64) {
        self.pending.entry(offset).or_insert(false);
    }

    /// A message was handled; returns the new committable offset if it moved.
    pub fn finished(&mut self, offset: i64) -> Option<i64> {
        if let Some(done) = self.pending.get_mut(&offset) {
            *done = true;
        }
        let mut moved = None;
        while let Some(entry) = self.pending.first_entry() {
            if !*entry.get() {
                break;
            }
            let (offset, _) = entry.remove_entry();
            moved = Some(offset + 1);
        }
        if moved.is_some() {
            self.committable = moved;
        }
        moved
    }

    /// The offset a commit may name (the next message to read), if any message finished.
    pub fn committable(&self) -> Option<i64> {
        self.committable
    }

    /// Messages received and not yet handled.
    pub fn in_flight(&self) -> usize {
        self.pending.values().filter(|done| !**done).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_a_contiguous_done_prefix() {
        let mut p = PartitionOffsets::default();
        (10..15).for_each(|o| p.started(o));
        assert_eq!(p.finished(12), None, "10 and 11 are still in flight");
        assert_eq!(p.finished(10), Some(11));
        assert_eq!(p.finished(13), None, "11 holds the offset back");
        assert_eq!(p.committable(), Some(11));
        assert_eq!(p.finished(11), Some(14), "11, 12, 13 done: 14 is next");
        assert_eq!(p.in_flight(), 1);
        assert_eq!(p.finished(14), Some(15));
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn a_stuck_message_holds_back_every_later_one() {
        let mut p = PartitionOffsets::default();
        (0..1000).for_each(|o| p.started(o));
        (1..1000).for_each(|o| assert_eq!(p.finished(o), None));
        assert_eq!(p.committable(), None);
        assert_eq!(p.finished(0), Some(1000));
    }
}
