//! Names of topics, consumer groups and streams.
//!
//! One rule for all three (the REST contract, `docs/api.md`): 1–200 characters of
//! `[A-Za-z0-9._-]`, starting with a letter or a digit. The rule keeps names
//! safe to use unescaped in URL paths, file names and NATS subjects (no `/`,
//! no spaces, no `*` or `>`), and the length bound keeps keys and paths
//! bounded. Every name type is validated on construction, so a value of the
//! type is always a valid name.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize, Serializer};

/// The longest name allowed, in characters (all allowed characters are ASCII,
/// so this is also its length in bytes).
pub const MAX_NAME_LEN: usize = 200;

/// How much of a rejected value an error message echoes back.
const ECHO_LIMIT: usize = 64;

/// A name that breaks the naming rule; the message names the value and what
/// to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} name {}: {reason}", Echo(value))]
pub struct InvalidName {
    /// What was being named: `"topic"`, `"group"` or `"stream"`.
    pub kind: &'static str,
    /// The rejected value, in full (the message shows at most its first 64
    /// characters).
    pub value: String,
    /// What is wrong with it, phrased as what to fix.
    pub reason: &'static str,
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        impl $name {
            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The name as an owned string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidName;

            fn from_str(value: &str) -> Result<Self, InvalidName> {
                validate($kind, value)?;
                Ok(Self(value.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidName;

            fn try_from(value: String) -> Result<Self, InvalidName> {
                validate($kind, &value)?;
                Ok(Self(value))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidName;

            fn try_from(value: &str) -> Result<Self, InvalidName> {
                value.parse()
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        // Sound: the derived `Eq`, `Ord` and `Hash` of a one-field newtype
        // agree with those of the `String` inside, hence with `str`'s.
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }
    };
}

name_type!(
    /// The name of a topic, e.g. `orders` or `billing.invoices-v2`.
    TopicName,
    "topic"
);

name_type!(
    /// The name of a consumer group on a topic, e.g. `email-sender`.
    GroupName,
    "group"
);

name_type!(
    /// The id of an event-sourcing stream (an aggregate), e.g. `order-42`.
    StreamId,
    "stream"
);

/// Checks `value` against the naming rule. The character check comes first so
/// that a name with a space gets the message about characters, whatever its
/// length.
fn validate(kind: &'static str, value: &str) -> Result<(), InvalidName> {
    let reason = if value.is_empty() {
        Some("must not be empty")
    } else if !value.bytes().all(is_name_byte) {
        Some("only letters, digits, '.', '_' and '-' are allowed")
    } else if !value.as_bytes()[0].is_ascii_alphanumeric() {
        Some("must start with a letter or a digit")
    } else if value.len() > MAX_NAME_LEN {
        Some("must be at most 200 characters long")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(InvalidName {
            kind,
            value: value.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn is_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-')
}

/// Shows a user-supplied value in an error message: quoted and escaped, and cut
/// after [`ECHO_LIMIT`] characters so a megabyte of input is not echoed back.
pub(crate) struct Echo<'a>(pub(crate) &'a str);

impl fmt::Display for Echo<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(ECHO_LIMIT) {
            Some((cut, _)) => write!(formatter, "{:?}… ({} bytes)", &self.0[..cut], self.0.len()),
            None => write!(formatter, "{:?}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn given_valid_names_when_parsed_should_keep_them_verbatim() {
        for name in [
            "a",
            "0",
            "orders",
            "Billing.invoices-v2_eu",
            "9lives",
            &"x".repeat(200),
        ] {
            let topic: TopicName = name.parse().unwrap();
            assert_eq!(topic.as_str(), name);
            assert_eq!(topic.to_string(), name);
            assert_eq!(topic.as_ref(), name);
            assert_eq!(topic.clone().into_string(), name);
        }
    }

    #[test]
    fn given_empty_name_when_parsed_should_say_it_must_not_be_empty() {
        let error = "".parse::<GroupName>().unwrap_err();
        assert_eq!(error.kind, "group");
        assert_eq!(
            error.to_string(),
            r#"invalid group name "": must not be empty"#
        );
    }

    #[test]
    fn given_name_with_space_when_parsed_should_name_value_and_allowed_characters() {
        let error = "a b".parse::<TopicName>().unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"invalid topic name "a b": only letters, digits, '.', '_' and '-' are allowed"#
        );
        assert_eq!(error.value, "a b");
    }

    #[test]
    fn given_forbidden_characters_when_parsed_should_reject_each() {
        for name in [
            "a/b",
            "a*",
            "a>",
            "ä",
            "a\u{0}",
            "a:b",
            "a,b",
            "é".repeat(3).as_str(),
        ] {
            let error = name.parse::<StreamId>().unwrap_err();
            assert_eq!(error.kind, "stream");
            assert_eq!(
                error.reason,
                "only letters, digits, '.', '_' and '-' are allowed"
            );
        }
    }

    #[test]
    fn given_name_starting_with_punctuation_when_parsed_should_ask_for_letter_or_digit() {
        for name in [".a", "_a", "-a", "."] {
            let error = name.parse::<TopicName>().unwrap_err();
            assert_eq!(
                error.reason, "must start with a letter or a digit",
                "{name}"
            );
        }
    }

    #[test]
    fn given_201_characters_when_parsed_should_reject_as_too_long() {
        let error = "a".repeat(201).parse::<TopicName>().unwrap_err();
        assert_eq!(error.reason, "must be at most 200 characters long");
    }

    #[test]
    fn given_megabyte_value_when_rejected_should_echo_only_its_start() {
        let huge = format!("a {}", "b".repeat(1 << 20));
        let error = huge.parse::<TopicName>().unwrap_err();
        let message = error.to_string();
        assert!(message.len() < 200, "{message}");
        assert!(message.contains("… (1048578 bytes)"), "{message}");
        assert_eq!(error.value.len(), huge.len());
    }

    #[test]
    fn given_control_characters_when_rejected_should_escape_them_in_message() {
        let error = "a\nb".parse::<TopicName>().unwrap_err();
        assert!(error.to_string().contains(r#""a\nb""#), "{error}");
    }

    #[test]
    fn given_name_when_serialized_should_be_plain_string_and_deserialize_back() {
        let topic: TopicName = "orders".parse().unwrap();
        let json = serde_json::to_string(&topic).unwrap();
        assert_eq!(json, r#""orders""#);
        assert_eq!(serde_json::from_str::<TopicName>(&json).unwrap(), topic);
    }

    #[test]
    fn given_invalid_name_in_json_when_deserialized_should_fail_with_reason() {
        let error = serde_json::from_str::<TopicName>(r#""a b""#).unwrap_err();
        assert!(error.to_string().contains("invalid topic name"), "{error}");
        assert!(serde_json::from_str::<GroupName>("7").is_err());
    }

    #[test]
    fn given_try_from_string_when_valid_should_reuse_it() {
        let group = GroupName::try_from(String::from("workers")).unwrap();
        assert_eq!(group, "workers");
        assert_eq!(String::from(group), "workers");
        assert!(StreamId::try_from("order 1").is_err());
    }

    #[test]
    fn given_names_in_hash_set_when_looked_up_by_str_should_find_them() {
        let set: HashSet<TopicName> = ["a".parse().unwrap(), "b".parse().unwrap()].into();
        assert!(set.contains("a"));
        assert!(!set.contains("c"));
    }

    proptest! {
        #[test]
        fn given_any_string_when_parsed_should_accept_exactly_the_rule(value in ".{0,210}") {
            let valid = !value.is_empty()
                && value.len() <= MAX_NAME_LEN
                && value.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte))
                && value.as_bytes()[0].is_ascii_alphanumeric();
            prop_assert_eq!(value.parse::<TopicName>().is_ok(), valid);
        }

        #[test]
        fn given_generated_valid_name_when_parsed_should_round_trip(
            value in "[A-Za-z0-9][A-Za-z0-9._-]{0,199}"
        ) {
            let stream: StreamId = value.parse().unwrap();
            prop_assert_eq!(stream.to_string().parse::<StreamId>().unwrap(), stream);
        }
    }
}
