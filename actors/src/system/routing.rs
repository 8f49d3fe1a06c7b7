//! Which shard owns a ticket and which persistence actor writes it: `fnv1a(ticket_id) % n`, stable across
//! restarts and builds. Every such choice goes through [`slot_of`], so cluster mode has one place to change.

/// A hash of a ticket id that is stable across restarts and builds (also what replicas agree on shard
/// placement with: `src/cluster/leases.rs`).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The index, among `n` (≥ 1) shards or writers, of the one for ticket `id`.
pub fn slot_of(id: &str, n: usize) -> usize {
    (fnv1a(id.as_bytes()) % n.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_of_a_ticket_never_changes() {
        // Fixed values: a changed hash would move live tickets to other shards and writers after an upgrade.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!((slot_of("t-1", 1), slot_of("anything", 0)), (0, 0));
        assert!((0..1000).all(|i| slot_of(&format!("t-{i}"), 7) < 7));
    }
}
