//! Positions in a topic: `<partition>:<offset>`, and comma-separated lists
//! of them (`0:15,1:7`), the form SSE event ids and `Last-Event-ID` use so a
//! reconnecting client resumes exactly where it left off, and the form of the
//! `from=` query parameter.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::names::Echo;

/// One event's coordinates in a topic, shown as `<partition>:<offset>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    /// The partition.
    pub partition: u32,
    /// The offset within the partition.
    pub offset: u64,
}

/// One position per partition, shown as `0:15,1:7` (in the order held).
/// Parsing rejects an empty list and a partition given twice.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Positions(pub Vec<Position>);

/// A position or position list that does not parse; the message names the
/// value, what is wrong and the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid position {}: {reason}; expected <partition>:<offset>, comma-separated for several, \
     like 0:15,1:7",
    Echo(value)
)]
pub struct InvalidPosition {
    /// The rejected text.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Position {
    /// The position of `offset` in `partition`.
    pub fn new(partition: u32, offset: u64) -> Self {
        Self { partition, offset }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}:{}", self.partition, self.offset)
    }
}

impl FromStr for Position {
    type Err = InvalidPosition;

    fn from_str(text: &str) -> Result<Self, InvalidPosition> {
        parse_position(text.trim()).map_err(|reason| InvalidPosition {
            value: text.to_owned(),
            reason,
        })
    }
}

impl Positions {
    /// The offset held for `partition`, if any.
    pub fn get(&self, partition: u32) -> Option<u64> {
        self.0
            .iter()
            .find(|position| position.partition == partition)
            .map(|position| position.offset)
    }

    /// The positions, in the order held.
    pub fn iter(&self) -> std::slice::Iter<'_, Position> {
        self.0.iter()
    }

    /// How many positions there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a Positions {
    type Item = &'a Position;
    type IntoIter = std::slice::Iter<'a, Position>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for Positions {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, position) in self.0.iter().enumerate() {
            if index > 0 {
                formatter.write_str(",")?;
            }
            write!(formatter, "{position}")?;
        }
        Ok(())
    }
}

impl FromStr for Positions {
    type Err = InvalidPosition;

    fn from_str(text: &str) -> Result<Self, InvalidPosition> {
        let invalid = |reason: String| InvalidPosition {
            value: text.to_owned(),
            reason,
        };
        if text.trim().is_empty() {
            return Err(invalid("it is empty".to_owned()));
        }
        let mut positions = Vec::new();
        let mut seen = HashSet::new();
        for entry in text.split(',') {
            let position = parse_position(entry.trim()).map_err(invalid)?;
            if !seen.insert(position.partition) {
                return Err(invalid(format!(
                    "partition {} appears twice",
                    position.partition
                )));
            }
            positions.push(position);
        }
        Ok(Self(positions))
    }
}

impl TryFrom<String> for Positions {
    type Error = InvalidPosition;

    fn try_from(text: String) -> Result<Self, InvalidPosition> {
        text.parse()
    }
}

impl From<Positions> for String {
    fn from(positions: Positions) -> String {
        positions.to_string()
    }
}

impl From<Vec<Position>> for Positions {
    fn from(positions: Vec<Position>) -> Self {
        Self(positions)
    }
}

/// Parses one trimmed `<partition>:<offset>`; the error is the reason.
fn parse_position(entry: &str) -> Result<Position, String> {
    if entry.is_empty() {
        return Err("an entry is empty".to_owned());
    }
    let Some((partition, offset)) = entry.split_once(':') else {
        return Err(format!("{} has no ':'", Echo(entry)));
    };
    let partition = parse_digits::<u32>(partition).ok_or_else(|| {
        format!(
            "partition {} is not a number from 0 to {}",
            Echo(partition),
            u32::MAX
        )
    })?;
    let offset = parse_digits::<u64>(offset).ok_or_else(|| {
        format!(
            "offset {} is not a number from 0 to {}",
            Echo(offset),
            u64::MAX
        )
    })?;
    Ok(Position { partition, offset })
}

/// Plain decimal digits only: no sign, no spaces, no empty string (which
/// `u64::from_str` would partly accept with a `+`).
fn parse_digits<T: FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn given_position_when_displayed_should_be_partition_colon_offset() {
        assert_eq!(Position::new(3, 15).to_string(), "3:15");
        assert_eq!("3:15".parse::<Position>().unwrap(), Position::new(3, 15));
        assert_eq!(" 0:0 ".parse::<Position>().unwrap(), Position::new(0, 0));
    }

    #[test]
    fn given_positions_when_displayed_should_be_comma_separated_in_order() {
        let positions = Positions(vec![Position::new(1, 7), Position::new(0, 15)]);
        assert_eq!(positions.to_string(), "1:7,0:15");
        assert_eq!("1:7,0:15".parse::<Positions>().unwrap(), positions);
        assert_eq!("1:7, 0:15".parse::<Positions>().unwrap(), positions);
        assert_eq!(positions.get(0), Some(15));
        assert_eq!(positions.get(2), None);
        assert_eq!(positions.len(), 2);
    }

    #[test]
    fn given_duplicate_partition_when_parsed_should_say_which() {
        let error = "0:1,1:2,0:3".parse::<Positions>().unwrap_err();
        assert_eq!(error.reason, "partition 0 appears twice");
        assert!(
            error
                .to_string()
                .starts_with(r#"invalid position "0:1,1:2,0:3": partition 0"#)
        );
    }

    #[test]
    fn given_garbage_when_parsed_should_reject_with_expected_form() {
        for text in [
            "",
            " ",
            "0",
            "0:",
            ":5",
            "a:1",
            "0:b",
            "-1:0",
            "0:-1",
            "+1:2",
            "0:1:2",
            "0:1,",
            ",0:1",
            "0:1,,1:2",
            "4294967296:0",
            "0:18446744073709551616",
            "0 :1",
            "0x1:0",
        ] {
            let error = text.parse::<Positions>().unwrap_err();
            assert!(
                error.to_string().contains("expected <partition>:<offset>"),
                "{text}: {error}"
            );
        }
        assert!("0:1,1:2".parse::<Position>().is_err());
    }

    #[test]
    fn given_bad_entry_when_parsed_should_name_the_entry() {
        let error = "0:1,x:2".parse::<Positions>().unwrap_err();
        assert_eq!(
            error.reason,
            r#"partition "x" is not a number from 0 to 4294967295"#
        );
        let error = "0:1,7".parse::<Positions>().unwrap_err();
        assert_eq!(error.reason, r#""7" has no ':'"#);
    }

    #[test]
    fn given_positions_when_serialized_should_use_the_text_form() {
        let positions: Positions = "0:15,1:7".parse().unwrap();
        let json = serde_json::to_string(&positions).unwrap();
        assert_eq!(json, r#""0:15,1:7""#);
        assert_eq!(serde_json::from_str::<Positions>(&json).unwrap(), positions);
        assert!(serde_json::from_str::<Positions>(r#""0:1,0:2""#).is_err());
    }

    proptest! {
        #[test]
        fn given_distinct_partitions_when_displayed_and_parsed_should_round_trip(
            entries in proptest::collection::btree_map(any::<u32>(), any::<u64>(), 1..20)
        ) {
            let positions = Positions(
                entries.into_iter().map(|(partition, offset)| Position { partition, offset }).collect()
            );
            prop_assert_eq!(positions.to_string().parse::<Positions>().unwrap(), positions);
        }

        #[test]
        fn given_any_text_when_parsed_should_not_panic(text in ".{0,64}") {
            let _ = text.parse::<Positions>();
            let _ = text.parse::<Position>();
        }
    }
}
