//! Timestamps: Herald keeps milliseconds since the Unix epoch (`i64`) and
//! shows them as RFC 3339 strings in UTC with millisecond precision, e.g.
//! `2024-05-01T12:00:00.250Z`.
//!
//! RFC 3339 has four-digit years, so only instants from
//! `0000-01-01T00:00:00.000Z` ([`MIN_RFC3339_MS`]) to
//! `9999-12-31T23:59:59.999Z` ([`MAX_RFC3339_MS`]) have a representation.
//! [`parse_rfc3339_ms`] rejects anything outside that range, and
//! [`format_rfc3339_ms`] clamps to it, so it is total and never panics.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::names::Echo;

/// `0000-01-01T00:00:00.000Z`, the earliest instant RFC 3339 can express, in
/// ms since the Unix epoch.
pub const MIN_RFC3339_MS: i64 = -62_167_219_200_000;

/// `9999-12-31T23:59:59.999Z`, the latest instant RFC 3339 can express, in ms
/// since the Unix epoch.
pub const MAX_RFC3339_MS: i64 = 253_402_300_799_999;

const MS_PER_DAY: i64 = 86_400_000;

/// Formats ms since the Unix epoch as RFC 3339 in UTC with exactly three
/// fractional digits and a `Z`, e.g. `1970-01-01T00:00:00.000Z`. Values
/// outside [`MIN_RFC3339_MS`]..=[`MAX_RFC3339_MS`] are clamped to that range.
pub fn format_rfc3339_ms(ms: i64) -> String {
    let ms = ms.clamp(MIN_RFC3339_MS, MAX_RFC3339_MS);
    let days = ms.div_euclid(MS_PER_DAY);
    let ms_of_day = ms.rem_euclid(MS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60);
    let (second, milli) = (ms_of_day / 1000 % 60, ms_of_day % 1000);
    // By hand rather than `format!`: every event served (REST, SSE, a
    // webhook's body) shows its `appendedat`, and padded formatting was a
    // visible share of a webhook delivery's CPU.
    let mut text = String::with_capacity(24);
    let mut digits = |value: i64, width: u32, then: char| {
        for place in (0..width).rev() {
            let digit = value / 10_i64.pow(place) % 10;
            text.push(char::from(b'0' + u8::try_from(digit).unwrap_or(0)));
        }
        text.push(then);
    };
    digits(year, 4, '-');
    digits(month, 2, '-');
    digits(day, 2, 'T');
    digits(hour, 2, ':');
    digits(minute, 2, ':');
    digits(second, 2, '.');
    digits(milli, 3, 'Z');
    text
}

/// Parses an RFC 3339 timestamp (any offset, any number of fractional digits)
/// into ms since the Unix epoch, rounding sub-millisecond digits down.
pub fn parse_rfc3339_ms(text: &str) -> Result<i64, InvalidTimestamp> {
    let instant = OffsetDateTime::parse(text, &Rfc3339).map_err(|source| InvalidTimestamp {
        value: text.to_owned(),
        reason: source.to_string(),
        source: Some(source),
    })?;
    let ms = instant.unix_timestamp_nanos().div_euclid(1_000_000);
    match i64::try_from(ms) {
        Ok(ms) if (MIN_RFC3339_MS..=MAX_RFC3339_MS).contains(&ms) => Ok(ms),
        _ => Err(InvalidTimestamp {
            value: text.to_owned(),
            reason: "it is outside years 0000 to 9999 in UTC".to_owned(),
            source: None,
        }),
    }
}

/// A string that is not an RFC 3339 timestamp Herald can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} is not an RFC 3339 timestamp like 2024-05-01T12:00:00Z: {reason}",
    Echo(value)
)]
pub struct InvalidTimestamp {
    /// The rejected text.
    pub value: String,
    reason: String,
    #[source]
    source: Option<time::error::Parse>,
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
/// Howard Hinnant's `civil_from_days`, exact for every `i64` input we pass
/// (|days| < 4 million).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let shifted = days + 719_468; // days since 0000-03-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use time::format_description::well_known::Rfc3339;

    use super::*;

    #[test]
    fn given_epoch_when_formatted_should_show_millis_and_z() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339_ms(1_714_564_800_250),
            "2024-05-01T12:00:00.250Z"
        );
        assert_eq!(format_rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            format_rfc3339_ms(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn given_out_of_range_ms_when_formatted_should_clamp_not_panic() {
        assert_eq!(format_rfc3339_ms(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_rfc3339_ms(i64::MIN), "0000-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339_ms(MAX_RFC3339_MS),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(
            format_rfc3339_ms(MIN_RFC3339_MS),
            "0000-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn given_timestamps_with_offsets_and_fractions_when_parsed_should_give_utc_ms() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_rfc3339_ms("1970-01-01T01:00:00+01:00").unwrap(), 0);
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T12:00:00.25Z").unwrap(),
            1_714_564_800_250
        );
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00.0019Z").unwrap(), 1);
        assert_eq!(parse_rfc3339_ms("1969-12-31T23:59:59.9995Z").unwrap(), -1);
    }

    #[test]
    fn given_non_rfc3339_text_when_parsed_should_name_value_and_expected_format() {
        for text in [
            "",
            "yesterday",
            "2024-05-01",
            "2024-05-01 12:00:00",
            "2024-13-01T00:00:00Z",
        ] {
            let error = parse_rfc3339_ms(text).unwrap_err();
            assert_eq!(error.value, text);
            let message = error.to_string();
            assert!(
                message.contains("is not an RFC 3339 timestamp like"),
                "{message}"
            );
            assert!(std::error::Error::source(&error).is_some());
        }
    }

    #[test]
    fn given_instant_before_year_zero_in_utc_when_parsed_should_reject() {
        let error = parse_rfc3339_ms("0000-01-01T00:00:00+01:00").unwrap_err();
        assert!(
            error.to_string().contains("outside years 0000 to 9999"),
            "{error}"
        );
        assert_eq!(
            parse_rfc3339_ms("0000-01-01T00:00:00Z").unwrap(),
            MIN_RFC3339_MS
        );
        assert_eq!(
            parse_rfc3339_ms("9999-12-31T23:59:59.999Z").unwrap(),
            MAX_RFC3339_MS
        );
    }

    proptest! {
        #[test]
        fn given_any_ms_in_range_when_formatted_and_parsed_should_round_trip(
            ms in MIN_RFC3339_MS..=MAX_RFC3339_MS
        ) {
            let text = format_rfc3339_ms(ms);
            prop_assert_eq!(parse_rfc3339_ms(&text).unwrap(), ms);
            // Agrees with the `time` crate's own RFC 3339 formatting.
            let nanos = i128::from(ms) * 1_000_000;
            let reference = OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap();
            let reference = reference.format(&Rfc3339).unwrap();
            prop_assert_eq!(&text[..19], &reference[..19]);
        }

        #[test]
        fn given_any_text_when_parsed_should_not_panic(text in ".{0,40}") {
            let _ = parse_rfc3339_ms(&text);
        }
    }
}
