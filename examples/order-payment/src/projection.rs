//! Revenue per day, a projection of the `orders` category.
//!
//! It follows the category through a queue consumer group filtered to
//! `payment.succeeded`: fetch, apply, ack. Delivery is at least once, so a
//! payment is counted once per payment id however often it arrives.

use std::collections::{BTreeMap, HashSet};

use anyhow::{Context, Result, anyhow};
use serde_json::json;

use crate::order::{OrderEvent, PAID};
use crate::store::expect_success;

/// Revenue per day, in cents.
#[derive(Debug, Clone)]
pub struct Revenue {
    http: reqwest::Client,
    group_url: String,
    member: String,
    /// Day (`YYYY-MM-DD`) → cents.
    pub per_day: BTreeMap<String, u64>,
    counted: HashSet<String>,
}

impl Revenue {
    /// Creates (or reuses) the consumer group `group` on `topic` of the Herald
    /// at `server`, from the start of the category.
    pub async fn start(server: &str, topic: &str, group: &str) -> Result<Self> {
        let http = reqwest::Client::new();
        let group_url = format!(
            "{}/v1/topics/{topic}/groups/{group}",
            server.trim_end_matches('/')
        );
        let spec = json!({ "mode": "queue", "start": "earliest", "filter": { "types": [PAID] } });
        let response = http
            .put(&group_url)
            .json(&spec)
            .send()
            .await
            .context("cannot reach Herald")?;
        expect_success(response).await?;
        Ok(Self {
            http,
            group_url,
            member: format!("revenue-{}", std::process::id()),
            per_day: BTreeMap::new(),
            counted: HashSet::new(),
        })
    }

    /// One fetch (waiting up to `wait_ms` for the first delivery): applies and
    /// acks what it brings; returns how many deliveries that was.
    pub async fn poll(&mut self, wait_ms: u64) -> Result<usize> {
        let fetched = self
            .call(
                "fetch",
                json!({ "member": self.member, "max": 100, "wait_ms": wait_ms }),
            )
            .await?;
        let deliveries = fetched["deliveries"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut ids = Vec::with_capacity(deliveries.len());
        for delivery in &deliveries {
            let event = &delivery["event"];
            if let Some(OrderEvent::Paid {
                payment_id,
                amount_cents,
                day,
            }) = OrderEvent::from_cloudevent(event)
                && self.counted.insert(payment_id)
            {
                *self.per_day.entry(day).or_default() += amount_cents;
            }
            let id = delivery["delivery_id"]
                .as_str()
                .ok_or_else(|| anyhow!("a delivery without an id: {delivery}"))?;
            ids.push(id.to_owned());
        }
        if !ids.is_empty() {
            self.call("ack", json!({ "delivery_ids": ids })).await?;
        }
        Ok(deliveries.len())
    }

    /// The total of `day`, in cents.
    pub fn total(&self, day: &str) -> u64 {
        self.per_day.get(day).copied().unwrap_or(0)
    }

    async fn call(&self, action: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let response = self
            .http
            .post(format!("{}/{action}", self.group_url))
            .json(&body)
            .send()
            .await?;
        expect_success(response).await
    }
}
