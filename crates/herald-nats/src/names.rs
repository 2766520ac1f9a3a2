//! Herald's names as JetStream stream names and subject tokens.
//!
//! A subject token cannot hold `.`, `*`, `>` or white space, and a stream
//! name cannot hold `.` either, while topic names may hold `.` and keys may
//! hold anything. Two escapes, both one-to-one:
//!
//! - names (topics, buckets: letters, digits, `.`, `_`, `-`): `_` becomes
//!   `_u` and `.` becomes `_d` (any other byte `_x` and two hex digits);
//!   valid in stream names and subjects alike;
//! - keys (any string): letters, digits, `-` and `_` stay, every other byte
//!   becomes `%` and two hex digits; the empty key is `=`.

use herald_backend::{Error, Result};
use herald_types::TopicName;

/// The names of one Herald system's streams and subjects.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Result<Self> {
        let valid = !prefix.is_empty()
            && prefix.len() <= 32
            && prefix
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
        if !valid {
            return Err(Error::InvalidArgument {
                field: "nats.prefix".into(),
                reason: format!(
                    "{prefix:?}: 1 to 32 letters, digits, '-' or '_' (it starts stream names and subjects)"
                ),
            });
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    /// The object store bucket of blobs (its stream: `OBJ_<bucket>`).
    pub(crate) fn blob_bucket(&self) -> String {
        format!("{}-blobs", self.prefix)
    }

    /// The stream holding every key-value bucket.
    pub(crate) fn kv_stream(&self) -> String {
        format!("{}-kv", self.prefix)
    }

    /// The subjects of [`Names::kv_stream`].
    pub(crate) fn kv_subjects(&self) -> String {
        format!("{}.kv.>", self.prefix)
    }

    /// The subject of `key` in `bucket`.
    pub(crate) fn kv_subject(&self, bucket: &str, key: &str) -> String {
        format!(
            "{}.kv.{}.{}",
            self.prefix,
            name_token(bucket),
            key_token(key)
        )
    }

    /// The subjects of every key of `bucket`.
    pub(crate) fn kv_bucket_filter(&self, bucket: &str) -> String {
        format!("{}.kv.{}.>", self.prefix, name_token(bucket))
    }

    /// The key of a subject of `bucket`, if it is one.
    pub(crate) fn kv_key(&self, bucket: &str, subject: &str) -> Option<String> {
        let head = format!("{}.kv.{}.", self.prefix, name_token(bucket));
        decode_key(subject.strip_prefix(&head)?)
    }

    /// The stream of partition `partition` of `topic`.
    pub(crate) fn partition_stream(&self, topic: &TopicName, partition: u32) -> String {
        format!(
            "{}-t-{}-{partition}",
            self.prefix,
            name_token(topic.as_str())
        )
    }

    /// The subject prefix of partition `partition` of `topic`: its stream
    /// holds `<prefix>.>`, plain events on `<prefix>.e` and the events of
    /// event-sourcing stream `s` on `<prefix>.s.<s>` ([`stream_subject`]).
    pub(crate) fn partition_prefix(&self, topic: &TopicName, partition: u32) -> String {
        format!(
            "{}.t.{}.{partition}",
            self.prefix,
            name_token(topic.as_str())
        )
    }

    /// The subject the owner of group `key` (`<topic>/<group>`) answers
    /// forwarded calls on.
    pub(crate) fn group_subject(&self, key: &str) -> String {
        format!("{}.g.{}", self.prefix, key_token(key))
    }
}

/// Where partition `partition`'s stream republishes each stored message's
/// headers (with its sequence): the partition prefix with `stored` for `t`.
pub(crate) fn stored_prefix(partition_prefix: &str) -> String {
    partition_prefix.replacen(".t.", ".stored.", 1)
}

/// The subject of event-sourcing stream `stream` in the partition whose
/// subject prefix is `prefix`.
pub(crate) fn stream_subject(prefix: &str, stream: &str) -> String {
    format!("{prefix}.s.{}", key_token(stream))
}

/// A name (letters, digits, `.`, `_`, `-`) as a token; any other byte
/// (none in a valid name) becomes `_x` and two hex digits.
fn name_token(name: &str) -> String {
    let mut token = String::with_capacity(name.len() + 4);
    for byte in name.bytes() {
        match byte {
            b'_' => token.push_str("_u"),
            b'.' => token.push_str("_d"),
            byte if byte.is_ascii_alphanumeric() || byte == b'-' => token.push(char::from(byte)),
            byte => token.push_str(&format!("_x{byte:02X}")),
        }
    }
    token
}

/// Any key as a token.
fn key_token(key: &str) -> String {
    if key.is_empty() {
        return "=".into();
    }
    let mut token = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            token.push(char::from(byte));
        } else {
            token.push_str(&format!("%{byte:02X}"));
        }
    }
    token
}

fn decode_key(token: &str) -> Option<String> {
    if token == "=" {
        return Some(String::new());
    }
    let mut bytes = Vec::with_capacity(token.len());
    let mut rest = token.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn keys_round_trip_through_tokens_without_subject_separators() {
        let names = Names::new("herald").unwrap();
        for key in ["", "j1", "a.b", "x/y:z", "*>", " space", "é", "%41", "="] {
            let subject = names.kv_subject("workflows.schedules", key);
            let token = subject.rsplit('.').next().unwrap();
            assert!(!token.is_empty() && !token.contains(['*', '>', ' ', '.']));
            assert_eq!(
                names.kv_key("workflows.schedules", &subject).as_deref(),
                Some(key)
            );
        }
    }

    #[test]
    fn distinct_topic_names_get_distinct_streams() {
        let names = Names::new("herald").unwrap();
        let stream =
            |topic: &str, partition| names.partition_stream(&topic.parse().unwrap(), partition);
        assert_ne!(stream("a.b", 0), stream("a_b", 0));
        assert_ne!(stream("a_d", 0), stream("a.d", 0));
        assert!(!stream("a.b.c", 3).contains('.'));
    }

    #[test]
    fn a_prefix_must_be_a_plain_token() {
        assert!(Names::new("herald-prod_2").is_ok());
        for bad in ["", "a.b", "a b", "a*", &"x".repeat(33)] {
            assert!(Names::new(bad).is_err(), "{bad:?}");
        }
    }
}
