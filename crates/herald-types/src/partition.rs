//! Which partition a keyed event goes to.
//!
//! Herald uses Kafka's default partitioner, so a key lands on the same
//! partition number in Herald as in a Kafka topic with the same partition
//! count, and people moving from Kafka keep their mapping:
//!
//! ```text
//! partition = (murmur2(key) & 0x7fffffff) % partitions
//! ```
//!
//! where `murmur2` is Kafka's 32-bit MurmurHash2 variant
//! (`org.apache.kafka.common.utils.Utils.murmur2`): seed `0x9747b28c`,
//! little-endian 4-byte blocks, multiplier `0x5bd1e995`, and the result read
//! as a signed `i32`. The mask (Kafka's `toPositive`) clears the sign bit; it
//! is not `abs`, so `i32::MIN` maps to 0. The key is the UTF-8 bytes of the
//! event's `key` attribute.
//!
//! The mapping is stable: it depends only on the key bytes and the partition
//! count. Changing a topic's partition count moves keys, as in Kafka.

/// The partition for `key` in a topic of `partitions` partitions, Kafka's way
/// (see the module docs).
///
/// `partitions == 0` is not a topic anyone can create; rather than panic on a
/// division by zero, it returns 0.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    if partitions == 0 {
        return 0;
    }
    // Masking with 0x7fffffff leaves a non-negative i32, so the cast is exact.
    let positive = (murmur2(key) & 0x7fff_ffff) as u32;
    positive % partitions
}

/// Kafka's `Utils.murmur2`: the 32-bit MurmurHash2 of `data` with seed
/// `0x9747b28c`, as the signed value Java returns.
///
/// Java takes the length as an `int`; inputs longer than `u32::MAX` bytes
/// (which Kafka cannot have) use the length modulo 2³².
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Java's `seed ^ length` on ints; the truncation is the documented rule.
    let mut hash = SEED ^ (data.len() as u32);

    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        hash = hash.wrapping_mul(M);
        hash ^= k;
    }

    let tail = blocks.remainder();
    if tail.len() >= 3 {
        hash ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        hash ^= u32::from(tail[1]) << 8;
    }
    if let Some(&first) = tail.first() {
        hash ^= u32::from(first);
        hash = hash.wrapping_mul(M);
    }

    hash ^= hash >> 13;
    hash = hash.wrapping_mul(M);
    hash ^= hash >> 15;
    // Reinterpret the bits as Java's signed int.
    hash as i32
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Kafka's `UtilsTest.testMurmur2` vectors.
    const KAFKA_VECTORS: [(&str, i32); 6] = [
        ("21", -973_932_308),
        ("foobar", -790_332_482),
        ("a-little-bit-long-string", -985_981_536),
        ("a-little-bit-longer-string", -1_486_304_829),
        (
            "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        ("abc", 479_470_107),
    ];

    #[test]
    fn given_kafka_test_vectors_when_hashed_should_match_kafka() {
        for (key, expected) in KAFKA_VECTORS {
            assert_eq!(murmur2(key.as_bytes()), expected, "murmur2({key:?})");
        }
    }

    #[test]
    fn given_every_tail_length_when_hashed_should_match_kafka() {
        // More published outputs of Kafka's murmur2 (from client libraries that
        // check themselves against it), covering tails of 0 to 3 bytes.
        let vectors: [(&str, i32); 6] = [
            ("1", -1_993_445_489),
            ("12", 126_087_238),
            ("123", -267_702_483),
            ("1234", -1_614_185_708),
            ("12345", -1_188_365_604),
            ("kafka", -798_503_068),
        ];
        for (key, expected) in vectors {
            assert_eq!(murmur2(key.as_bytes()), expected, "murmur2({key:?})");
        }
    }

    #[test]
    fn given_key_when_partitioned_should_use_masked_hash_modulo_count() {
        // murmur2("21") = -973932308; & 0x7fffffff = 1173551340.
        assert_eq!(partition_for_key(b"21", 1), 0);
        assert_eq!(partition_for_key(b"21", 7), 1_173_551_340 % 7);
        assert_eq!(partition_for_key(b"abc", 10), 479_470_107 % 10);
        assert_eq!(
            partition_for_key(b"", 3),
            (murmur2(b"") & 0x7fff_ffff) as u32 % 3
        );
    }

    #[test]
    fn given_zero_partitions_when_partitioned_should_return_zero_not_panic() {
        assert_eq!(partition_for_key(b"anything", 0), 0);
    }

    proptest! {
        #[test]
        fn given_any_key_when_partitioned_should_be_in_range_and_stable(
            key in proptest::collection::vec(any::<u8>(), 0..64),
            partitions in 1u32..1000,
        ) {
            let partition = partition_for_key(&key, partitions);
            prop_assert!(partition < partitions);
            prop_assert_eq!(partition, partition_for_key(&key, partitions));
        }
    }
}
