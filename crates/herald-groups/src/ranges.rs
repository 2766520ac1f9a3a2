//! A set of `u64` offsets kept as disjoint half-open ranges: the offsets a
//! queue group has finished above its floor. Acks arrive mostly in order, so
//! the set stays a handful of ranges however many events pass through.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Disjoint, non-adjacent `[start, end)` ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSet {
    /// start → end.
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// Adds `offset`; returns whether it was new.
    pub fn insert(&mut self, offset: u64) -> bool {
        if self.contains(offset) {
            return false;
        }
        let mut start = offset;
        let mut end = offset + 1;
        // Merge with the range ending at `offset`.
        if let Some((&before_start, &before_end)) = self.ranges.range(..offset).next_back()
            && before_end == offset
        {
            start = before_start;
            self.ranges.remove(&before_start);
        }
        // Merge with the range starting right after.
        if let Some(after_end) = self.ranges.remove(&end) {
            end = after_end;
        }
        self.ranges.insert(start, end);
        true
    }

    /// Whether `offset` is in the set.
    pub fn contains(&self, offset: u64) -> bool {
        self.ranges
            .range(..=offset)
            .next_back()
            .is_some_and(|(_, &end)| offset < end)
    }

    /// Removes and returns the end of the range starting exactly at `start`.
    pub fn take_range_at(&mut self, start: u64) -> Option<u64> {
        self.ranges.remove(&start)
    }

    /// Drops everything below `floor`.
    pub fn drop_below(&mut self, floor: u64) {
        let below: Vec<u64> = self
            .ranges
            .range(..floor)
            .map(|(&start, _)| start)
            .collect();
        for start in below {
            if let Some(end) = self.ranges.remove(&start)
                && end > floor
            {
                self.ranges.insert(floor, end);
            }
        }
    }

    /// Drops everything at or above `end`.
    pub fn drop_from(&mut self, end: u64) {
        let above: Vec<u64> = self.ranges.range(end..).map(|(&start, _)| start).collect();
        for start in above {
            self.ranges.remove(&start);
        }
        if let Some((&start, &range_end)) = self.ranges.range(..end).next_back()
            && range_end > end
        {
            self.ranges.insert(start, end);
        }
    }

    /// How many ranges.
    #[cfg(test)]
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_out_of_order_inserts_when_adjacent_should_merge_into_one_range() {
        let mut set = RangeSet::default();
        for offset in [5, 7, 6, 3, 4] {
            assert!(set.insert(offset));
        }
        assert!(!set.insert(6));
        assert_eq!(set.range_count(), 1);
        assert!(set.contains(3) && set.contains(7) && !set.contains(2) && !set.contains(8));
        assert_eq!(set.take_range_at(3), Some(8));
        assert_eq!(set.range_count(), 0);
    }

    #[test]
    fn given_ranges_when_dropping_below_should_cut_the_straddling_one() {
        let mut set = RangeSet::default();
        for offset in [1, 2, 3, 10, 11] {
            set.insert(offset);
        }
        set.drop_below(2);
        assert!(!set.contains(1) && set.contains(2) && set.contains(10));
        set.drop_below(11);
        assert!(!set.contains(10) && set.contains(11));
    }

    #[test]
    fn given_ranges_when_dropping_from_should_cut_the_straddling_one() {
        let mut set = RangeSet::default();
        for offset in [1, 2, 3, 10, 11] {
            set.insert(offset);
        }
        set.drop_from(3);
        assert!(set.contains(2) && !set.contains(3) && !set.contains(10));
        assert_eq!(set.range_count(), 1);
    }
}
