//! What the webhook service keeps in the backend's `Kv`: endpoints and the
//! attempt log, and the shapes the API shows of them.
//!
//! | what | bucket | key |
//! |---|---|---|
//! | endpoints | `webhooks.endpoints` | endpoint id |
//! | attempts, in pages, newest first | `webhooks.attempts` | `<endpoint>/<page id>` |
//! | attempts per message: runs of offsets in a page | `webhooks.attempts.by_offset` | `<endpoint>/<topic>.<partition>/<first offset>.<span>.<page id>` |
//! | attempts per message, logged before runs | `webhooks.attempts.by_message` | `<endpoint>/<message id>/<attempt id>` |
//!
//! A page's attempts are indexed by message as runs: per topic and
//! partition, its offsets in order, cut where one is missing or a run
//! would span more than [`RUN_SPAN`] offsets (a delivery's fetches take
//! offsets in order, so a page's attempts make a few runs). The first
//! offset is 16 hex digits and the span 2, so the runs that may hold an
//! offset are a key range; a lookup reads the pages they name.
//!
//! The attempt log writes an endpoint's attempts of one write as one page,
//! compact ([`encode_page`]: each record without what the page's key and
//! id say; pages written before are JSON arrays of whole records, and an
//! attempt logged before pages is a page of one, a JSON object). A page id starts with `u64::MAX -
//! at_ms` in 20 digits, so an endpoint's pages list newest first and
//! everything older than a time is a key range (the retention sweep
//! deletes from there on); an attempt id is its page's id and its place in
//! the page ([`page_of`]), so ids sort as the pages and records do.

use std::collections::BTreeMap;

use herald_types::TopicName;
use serde::{Deserialize, Serialize};

use crate::attempt::ErrorClass;
use crate::endpoint::Filter;

/// Endpoints.
pub const ENDPOINTS_BUCKET: &str = "webhooks.endpoints";
/// The attempt log, per endpoint, newest first.
pub const ATTEMPTS_BUCKET: &str = "webhooks.attempts";
/// The attempt log indexed per endpoint and message as it was before
/// [`BY_OFFSET_BUCKET`]: keys only (`endpoint/message/attempt`), the record
/// in [`ATTEMPTS_BUCKET`] (entries written before d91d2c3 also hold a
/// copy, never read). Read and swept; no longer written.
pub const BY_MESSAGE_BUCKET: &str = "webhooks.attempts.by_message";

/// The attempt log indexed per endpoint and message: runs of offsets of
/// one page (keys only).
pub const BY_OFFSET_BUCKET: &str = "webhooks.attempts.by_offset";

/// Most offsets one run of [`BY_OFFSET_BUCKET`] spans.
pub const RUN_SPAN: u64 = 256;

/// The [`BY_OFFSET_BUCKET`] keys of `endpoint`'s page `page`, holding
/// `records` (message ids that do not parse are not indexed).
pub fn run_keys(endpoint: &str, page: &str, records: &[AttemptRecord]) -> Vec<String> {
    let mut offsets: Vec<(TopicName, u32, u64)> = records
        .iter()
        .filter_map(|record| parse_message_id(&record.message_id))
        .collect();
    offsets.sort_by(|a, b| (a.0.as_str(), a.1, a.2).cmp(&(b.0.as_str(), b.1, b.2)));
    offsets.dedup();
    let mut keys = Vec::new();
    let mut run: Option<(&TopicName, u32, u64, u64)> = None;
    for (topic, partition, offset) in &offsets {
        match &mut run {
            Some((t, p, first, last))
                if *t == topic
                    && *p == *partition
                    && *offset == *last + 1
                    && *offset - *first < RUN_SPAN =>
            {
                *last = *offset;
            }
            _ => {
                if let Some((t, p, first, last)) = run {
                    keys.push(run_key(endpoint, t, p, first, last, page));
                }
                run = Some((topic, *partition, *offset, *offset));
            }
        }
    }
    if let Some((t, p, first, last)) = run {
        keys.push(run_key(endpoint, t, p, first, last, page));
    }
    keys
}

fn run_key(
    endpoint: &str,
    topic: &TopicName,
    partition: u32,
    first: u64,
    last: u64,
    page: &str,
) -> String {
    format!(
        "{endpoint}/{topic}.{partition}/{first:016x}.{:02x}.{page}",
        last - first
    )
}

/// Where the [`BY_OFFSET_BUCKET`] runs that may hold `offset` of `topic`'s
/// `partition` are: the keys' prefix, and the key they all sort after.
pub fn runs_around(
    endpoint: &str,
    topic: &TopicName,
    partition: u32,
    offset: u64,
) -> (String, String) {
    let prefix = format!("{endpoint}/{topic}.{partition}/");
    let after = format!("{prefix}{:016x}", offset.saturating_sub(RUN_SPAN));
    (prefix, after)
}

/// A run key's first offset, last offset and page (after its prefix).
pub fn parse_run(rest: &str) -> Option<(u64, u64, &str)> {
    let mut parts = rest.splitn(3, '.');
    let first = u64::from_str_radix(parts.next()?, 16).ok()?;
    let span = u64::from_str_radix(parts.next()?, 16).ok()?;
    Some((first, first.checked_add(span)?, parts.next()?))
}

/// A signing secret and, once rotated out, when it stops being used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSecret {
    /// `whsec_…`.
    pub secret: String,
    /// Rotated out: signs until then (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// An endpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub endpoint_id: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub filter: Filter,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_s: Option<u32>,
    pub ordered: bool,
    pub enabled: bool,
    /// The current secret first, then rotated-out ones still in overlap.
    pub secrets: Vec<StoredSecret>,
    /// Why it was disabled by Herald (auto-disable, 410 Gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// When its current run of failures began (ms): no success since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Endpoint {
    /// The topics it reads (checked when it was stored).
    pub fn topics(&self) -> Vec<TopicName> {
        self.filter
            .topics
            .iter()
            .filter_map(|topic| topic.parse().ok())
            .collect()
    }
}

/// An endpoint's state as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum State {
    Enabled,
    CircuitOpen,
    Disabled,
}

/// What the delivery loops counted for an endpoint since this process
/// started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EndpointStats {
    pub attempts: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub consecutive_failures: u32,
    pub in_flight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<String>,
}

/// An endpoint as the API shows it: the stored fields but the secrets
/// (`secret` only on create and rotate), with its state and counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EndpointView {
    pub endpoint_id: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub filter: Filter,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_s: Option<u32>,
    pub ordered: bool,
    pub enabled: bool,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<String>,
    /// The signing secret: only in the answer to a create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub stats: EndpointStats,
}

/// What triggered an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Trigger {
    /// The message's own schedule.
    Scheduled,
    /// `POST …/messages/{id}/redeliver`.
    Manual,
}

/// One attempt, as logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptRecord {
    pub attempt_id: String,
    pub endpoint_id: String,
    /// `webhook-id`: `<topic>.<partition>.<offset>`.
    pub message_id: String,
    /// 1 for the message's first attempt.
    pub attempt: u32,
    /// When it was logged, RFC 3339 (its answer came a moment before),
    /// so the attempts list newest first by this time as by their ids.
    pub at: String,
    pub succeeded: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    /// `none`, `status`, `timeout`, `connect`, `target_not_allowed`,
    /// `circuit_open`.
    pub error_class: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub response_excerpt: String,
    pub trigger: Trigger,
    /// What follows: `acked`, `retry_in_ms:<n>`, `dead_lettered`,
    /// `endpoint_disabled`, `none` (manual).
    pub next: String,
}

/// An id for `at_ms`: newest sorts first; `unique` keeps two of one
/// millisecond apart. A page's id ([`page_id`]); before pages, each
/// attempt's own.
pub fn attempt_id(at_ms: i64, unique: u64) -> String {
    let at = u64::try_from(at_ms).unwrap_or(0);
    format!("{:020}{:016x}", u64::MAX - at, unique)
}

/// Characters of an attempt id that name its page.
pub const PAGE_ID_LEN: usize = 36;

/// The id of the `counter`-th page a writer wrote at `at_ms`: a later page
/// of the same millisecond sorts first, as a later one does.
pub fn page_id(at_ms: i64, counter: u64) -> String {
    attempt_id(at_ms, u64::MAX - counter)
}

/// The id of the `index`-th of `count` attempts (oldest first) of page
/// `page`: the later sorts first.
pub fn attempt_in_page(page: &str, index: usize, count: usize) -> String {
    format!("{page}{:04x}", count.saturating_sub(index + 1))
}

/// The id of the page holding `attempt_id` (an attempt logged before
/// pages is its own page).
pub fn page_of(attempt_id: &str) -> &str {
    attempt_id.get(..PAGE_ID_LEN).unwrap_or(attempt_id)
}

/// The first byte of a page in the compact format: then a JSON array of
/// its records, oldest first, each a [`Compact`] tuple. Pages written
/// before it (2026-12-05) are a JSON array of whole records (`[`), or one
/// record (`{`), and are read as they are.
const COMPACT_PAGE: u8 = 0x02;

/// A record in a compact page: what its page's key does not say (the
/// endpoint, and the page's id, which gives each attempt's id by its place
/// and the time they were logged): `message_id`, `attempt`, `status_code`,
/// `latency_ms`, `error_class`, `error`, `response_excerpt`, `trigger`,
/// `next`, without member names. About a fifth of a whole record's JSON:
/// the log is written on every delivery, thousands a second.
type Compact = (
    String,
    u32,
    Option<u16>,
    u64,
    String,
    Option<String>,
    String,
    Trigger,
    String,
);

/// A page of `records` (oldest first, as their places in the page give
/// their ids: [`attempt_in_page`]), compact.
pub fn encode_page(records: &[AttemptRecord]) -> bytes::Bytes {
    let tuples: Vec<_> = records
        .iter()
        .map(|record| {
            (
                &record.message_id,
                record.attempt,
                record.status_code,
                record.latency_ms,
                &record.error_class,
                &record.error,
                &record.response_excerpt,
                record.trigger,
                &record.next,
            )
        })
        .collect();
    let mut bytes = Vec::with_capacity(1 + records.len() * 64);
    bytes.push(COMPACT_PAGE);
    // Strings, numbers and options: cannot fail.
    let _ = serde_json::to_writer(&mut bytes, &tuples);
    bytes.into()
}

/// The records of page `page` of `endpoint_id` as stored (`bytes`),
/// newest first; `None` when they do not parse.
pub fn decode_page(endpoint_id: &str, page: &str, bytes: &[u8]) -> Option<Vec<AttemptRecord>> {
    let mut records = match bytes.split_first() {
        Some((&COMPACT_PAGE, rest)) => {
            let tuples: Vec<Compact> = serde_json::from_slice(rest).ok()?;
            let count = tuples.len();
            let at = herald_types::format_rfc3339_ms(attempt_time(page)?);
            tuples
                .into_iter()
                .enumerate()
                .map(|(place, tuple)| {
                    let (
                        message_id,
                        attempt,
                        status_code,
                        latency_ms,
                        error_class,
                        error,
                        excerpt,
                        trigger,
                        next,
                    ) = tuple;
                    AttemptRecord {
                        attempt_id: attempt_in_page(page, place, count),
                        endpoint_id: endpoint_id.to_owned(),
                        message_id,
                        attempt,
                        at: at.clone(),
                        succeeded: error_class == ErrorClass::None.as_str(),
                        status_code,
                        latency_ms,
                        error_class,
                        error,
                        response_excerpt: excerpt,
                        trigger,
                        next,
                    }
                })
                .collect()
        }
        Some((b'[', _)) => serde_json::from_slice::<Vec<AttemptRecord>>(bytes).ok()?,
        _ => vec![serde_json::from_slice::<AttemptRecord>(bytes).ok()?],
    };
    records.sort_by(|a, b| a.attempt_id.cmp(&b.attempt_id));
    Some(records)
}

/// Whether stored attempt bytes are a page (indexed by runs of offsets),
/// not one attempt logged before pages (indexed by its message).
pub fn is_page(bytes: &[u8]) -> bool {
    bytes.first() != Some(&b'{')
}

/// The time an attempt (or page) id carries, ms.
pub fn attempt_time(attempt_id: &str) -> Option<i64> {
    let inverted: u64 = attempt_id.get(..20)?.parse().ok()?;
    i64::try_from(u64::MAX - inverted).ok()
}

/// The first key of `endpoint`'s attempts older than `before_ms`.
pub fn attempts_older_than(endpoint: &str, before_ms: i64) -> String {
    let at = u64::try_from(before_ms).unwrap_or(0);
    // Keys of attempts at `before_ms - 1` or earlier sort after this one,
    // those at `before_ms` or later before it.
    format!("{endpoint}/{:020}", (u64::MAX - at).saturating_add(1))
}

/// `webhook-id` of the event at `topic`/`partition`/`offset`.
pub fn message_id(topic: &str, partition: u32, offset: u64) -> String {
    format!("{topic}.{partition}.{offset}")
}

/// A message id's topic, partition and offset.
pub fn parse_message_id(message_id: &str) -> Option<(TopicName, u32, u64)> {
    let mut parts = message_id.rsplitn(3, '.');
    let offset = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    let topic = parts.next()?.parse().ok()?;
    Some((topic, partition, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_attempt_ids_when_sorted_should_put_the_newest_first() {
        let old = attempt_id(1_000, 7);
        let new = attempt_id(2_000, 1);
        assert!(new < old);
        assert_eq!(attempt_time(&old), Some(1_000));
        // Everything at 1,999 ms or before sorts after the cut of 2,000.
        let cut = attempts_older_than("ep", 2_000);
        assert!(format!("ep/{old}") > cut);
        assert!(format!("ep/{new}") < cut);
    }

    #[test]
    fn given_pages_when_sorted_should_put_the_newest_page_and_attempt_first() {
        let earlier = page_id(1_000, 7);
        let later_same_ms = page_id(1_000, 8);
        let newer = page_id(2_000, 9);
        assert!(newer < later_same_ms && later_same_ms < earlier);
        let first = attempt_in_page(&earlier, 0, 3);
        let last = attempt_in_page(&earlier, 2, 3);
        assert!(last < first, "the later attempt of a page sorts first");
        // Every attempt of a newer page sorts before every one of an older.
        assert!(attempt_in_page(&later_same_ms, 0, 1) < last);
        assert!(attempt_in_page(&newer, 0, 1) < attempt_in_page(&later_same_ms, 0, 1));
        assert_eq!(page_of(&first), earlier);
        assert_eq!(page_of(&earlier), earlier, "an attempt logged before pages");
        assert_eq!(attempt_time(&first), Some(1_000));
        let record = |id: &str| AttemptRecord {
            attempt_id: id.to_owned(),
            endpoint_id: "ep".into(),
            message_id: "t.0.1".into(),
            attempt: 1,
            at: "2026-12-05T00:00:00.000Z".into(),
            succeeded: true,
            status_code: Some(204),
            latency_ms: 1,
            error_class: "none".into(),
            error: None,
            response_excerpt: String::new(),
            trigger: Trigger::Scheduled,
            next: "acked".into(),
        };
        // Pages written before the compact format: whole records.
        let page = serde_json::to_vec(&[record(&first), record(&last)]).unwrap();
        let read = decode_page("ep", &earlier, &page).unwrap();
        assert_eq!(read[0].attempt_id, last);
        assert!(is_page(&page));
        let single = serde_json::to_vec(&record(&earlier)).unwrap();
        assert_eq!(
            decode_page("ep", &earlier, &single).unwrap()[0].attempt_id,
            earlier
        );
        assert!(!is_page(&single));
        assert!(decode_page("ep", &earlier, b"{").is_none());
        assert!(decode_page("ep", &earlier, b"\x02[").is_none());
    }

    #[test]
    fn given_a_compact_page_when_read_back_should_give_whole_records_newest_first() {
        let page = page_id(1_764_633_600_123, 5);
        let at = "2025-12-02T00:00:00.123Z".to_owned();
        let written = [
            AttemptRecord {
                attempt_id: attempt_in_page(&page, 0, 3),
                endpoint_id: "ep_1".into(),
                message_id: "orders.0.41".into(),
                attempt: 1,
                at: at.clone(),
                succeeded: true,
                status_code: Some(204),
                latency_ms: 3,
                error_class: "none".into(),
                error: None,
                response_excerpt: String::new(),
                trigger: Trigger::Scheduled,
                next: "acked".into(),
            },
            AttemptRecord {
                attempt_id: attempt_in_page(&page, 1, 3),
                endpoint_id: "ep_1".into(),
                message_id: "orders.1.7".into(),
                attempt: 3,
                at: at.clone(),
                succeeded: false,
                status_code: Some(500),
                latency_ms: 12,
                error_class: "status".into(),
                error: Some("the receiver answered 500 \"quoted\"".into()),
                response_excerpt: "{\"error\":\"down\"}\n".into(),
                trigger: Trigger::Manual,
                next: "retry_in_ms:5000".into(),
            },
            AttemptRecord {
                attempt_id: attempt_in_page(&page, 2, 3),
                endpoint_id: "ep_1".into(),
                message_id: "orders.0.42".into(),
                attempt: 2,
                at,
                succeeded: false,
                status_code: None,
                latency_ms: 15_000,
                error_class: "timeout".into(),
                error: Some("no whole answer within 15000 ms".into()),
                response_excerpt: String::new(),
                trigger: Trigger::Scheduled,
                next: "dead_lettered".into(),
            },
        ];
        // Records as the writer has them: ids and times not given yet.
        let bare: Vec<AttemptRecord> = written
            .iter()
            .cloned()
            .map(|record| AttemptRecord {
                attempt_id: String::new(),
                at: String::new(),
                ..record
            })
            .collect();
        let bytes = encode_page(&bare);
        assert!(is_page(&bytes));
        let whole = serde_json::to_vec(&written).unwrap();
        assert!(
            bytes.len() * 3 < whole.len(),
            "{} of {}",
            bytes.len(),
            whole.len()
        );
        let read = decode_page("ep_1", &page, &bytes).unwrap();
        let newest_first: Vec<AttemptRecord> = written.into_iter().rev().collect();
        assert_eq!(read, newest_first);
    }

    #[test]
    fn given_a_page_of_offsets_should_index_runs_that_hold_each_one() {
        let record = |message: &str| AttemptRecord {
            attempt_id: String::new(),
            endpoint_id: "ep".into(),
            message_id: message.into(),
            attempt: 1,
            at: String::new(),
            succeeded: true,
            status_code: None,
            latency_ms: 0,
            error_class: "none".into(),
            error: None,
            response_excerpt: String::new(),
            trigger: Trigger::Scheduled,
            next: "acked".into(),
        };
        let mut records: Vec<AttemptRecord> =
            (10..300).map(|o| record(&format!("t.1.{o}"))).collect();
        records.extend(["t.1.5", "t.0.11", "t.1.11", "u.v.1.7", "nonsense"].map(record));
        let keys = run_keys("ep", "p", &records);
        let runs: Vec<(String, u64, u64)> = keys
            .iter()
            .map(|key| {
                let (prefix, rest) = key.rsplit_once('/').unwrap();
                let (first, last, page) = parse_run(rest).unwrap();
                assert_eq!(page, "p");
                (prefix.to_owned(), first, last)
            })
            .collect();
        // t.1: 5 alone, 10..=265 (256 offsets), 266..=299; t.0: 11; u.v.1: 7.
        assert_eq!(
            runs,
            vec![
                ("ep/t.0".into(), 11, 11),
                ("ep/t.1".into(), 5, 5),
                ("ep/t.1".into(), 10, 265),
                ("ep/t.1".into(), 266, 299),
                ("ep/u.v.1".into(), 7, 7),
            ]
        );
        // Every offset's runs sort after its lookup's start.
        for (topic, partition, offset) in [("t", 1, 5), ("t", 1, 265), ("t", 1, 299), ("t", 0, 11)]
        {
            let topic: TopicName = topic.parse().unwrap();
            let (prefix, after) = runs_around("ep", &topic, partition, offset);
            let holding: Vec<&String> = keys
                .iter()
                .filter(|key| key.starts_with(&prefix) && key.as_str() > after.as_str())
                .filter(|key| {
                    let (first, last, _) = parse_run(&key[prefix.len()..]).unwrap();
                    (first..=last).contains(&offset)
                })
                .collect();
            assert_eq!(holding.len(), 1, "{topic}.{partition}.{offset}");
        }
    }

    #[test]
    fn given_a_message_id_of_a_dotted_topic_should_parse_back() {
        let id = message_id("orders.eu", 3, 42);
        assert_eq!(id, "orders.eu.3.42");
        let (topic, partition, offset) = parse_message_id(&id).unwrap();
        assert_eq!((topic.as_str(), partition, offset), ("orders.eu", 3, 42));
        assert!(parse_message_id("orders").is_none());
        assert!(parse_message_id("orders.x.1").is_none());
    }
}
