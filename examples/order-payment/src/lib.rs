//! Scenario 4 of the product: an order's life as an event stream.
//!
//! "Order created" and "payment succeeded" are appended to the order's stream
//! (`order-<id>` on the category topic `orders`) with optimistic
//! concurrency; a query returns the full history and the state folded from
//! it; a projection (revenue per day) follows the category through a
//! consumer group.
//!
//! - [`order`]: the aggregate as a decider — `initial_state`,
//!   `evolve(state, event)`, `decide(command, state) -> events` — pure.
//! - [`store`]: [`Orders`] runs commands against Herald over HTTP: load from
//!   the latest snapshot plus newer events, decide, append with the expected
//!   version, retry a bounded number of times on `version_conflict`, write a
//!   snapshot every N versions.
//! - [`projection`]: [`Revenue`], revenue per day from a consumer group.
//!
//! [`run`] plays the scenario against a running Herald and checks it; the
//! end-to-end test in `crates/herald-server/tests/server/order_payment.rs`
//! drives the same pieces and asserts each step.

pub mod order;
pub mod projection;
pub mod store;

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};

pub use order::{Command, OrderEvent, OrderState, Rejection, Status};
pub use projection::Revenue;
pub use store::{HandleError, Handled, Loaded, Orders};

/// What a run saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Orders created and paid.
    pub orders: usize,
    /// Revenue per day the projection computed, in cents.
    pub revenue: Vec<(String, u64)>,
}

/// Creates and pays `orders` orders (1,000 cents times their number) on
/// `topic`, then waits for the revenue projection to count them all.
pub async fn run(server: &str, topic: &str, orders: usize) -> Result<Report> {
    let store = Orders::new(server, topic, 2);
    store.create_topic().await?;
    let mut revenue = Revenue::start(server, topic, "revenue").await?;
    let day = "2026-11-26";
    let mut expected = 0;
    for number in 1..=orders {
        let id = format!("{}-{number}", std::process::id());
        let amount_cents = 1000 * number as u64;
        store
            .handle(
                &id,
                &Command::Create {
                    customer: format!("customer-{number}"),
                    amount_cents,
                },
            )
            .await?;
        store
            .handle(
                &id,
                &Command::Pay {
                    payment_id: format!("pay-{id}"),
                    amount_cents,
                    day: day.into(),
                },
            )
            .await?;
        let loaded = store.load(&id).await?;
        ensure!(loaded.state.status == Status::Paid, "order {id} not paid");
        expected += amount_cents;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while revenue.total(day) < expected {
        if Instant::now() > deadline {
            bail!(
                "the projection counted {} of {expected} cents",
                revenue.total(day)
            );
        }
        revenue.poll(500).await?;
    }
    Ok(Report {
        orders,
        revenue: revenue.per_day.into_iter().collect(),
    })
}
