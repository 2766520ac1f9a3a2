//! Scenario 4 (examples/order-payment): an order aggregate in the decider
//! style over event streams, its history and folded state, a revenue
//! projection fed by a consumer group, and concurrent payments.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::time::{Duration, Instant};

use order_payment::{Command, HandleError, OrderEvent, Orders, Rejection, Revenue, Status};
use tokio::sync::Barrier;

use crate::support::TestServer;

fn create(amount_cents: u64) -> Command {
    Command::Create {
        customer: "ada".into(),
        amount_cents,
    }
}

fn pay(payment_id: &str, amount_cents: u64, day: &str) -> Command {
    Command::Pay {
        payment_id: payment_id.into(),
        amount_cents,
        day: day.into(),
    }
}

#[tokio::test]
async fn given_orders_created_and_paid_when_queried_should_return_history_folded_state_and_revenue_per_day()
 {
    let (server, _api) = TestServer::start_ready().await;
    let orders = Orders::new(&server.url(""), "orders", 2);
    orders.create_topic().await.unwrap();
    let mut revenue = Revenue::start(&server.url(""), "orders", "revenue")
        .await
        .unwrap();

    let created = orders.handle("a1", &create(1250)).await.unwrap();
    assert_eq!((created.first_version, created.conflicts), (0, 0));
    let paid = orders
        .handle("a1", &pay("pay-a1", 1250, "2026-11-26"))
        .await
        .unwrap();
    assert_eq!(paid.last_version, 1);

    let history = orders.history("a1").await.unwrap();
    assert_eq!(
        history,
        [
            (
                0,
                OrderEvent::Created {
                    customer: "ada".into(),
                    amount_cents: 1250
                }
            ),
            (
                1,
                OrderEvent::Paid {
                    payment_id: "pay-a1".into(),
                    amount_cents: 1250,
                    day: "2026-11-26".into()
                }
            ),
        ]
    );
    // Two versions: a snapshot was written at version 1, and the load
    // starts from it with nothing newer to read.
    let loaded = orders.load("a1").await.unwrap();
    assert_eq!(loaded.version, Some(1));
    assert_eq!(loaded.snapshot_version, Some(1));
    assert_eq!(loaded.events_read, 0);
    assert_eq!(loaded.state.status, Status::Paid);
    assert_eq!(loaded.state.amount_cents, 1250);
    assert_eq!(loaded.state.paid_on.as_deref(), Some("2026-11-26"));

    // Refused commands write nothing.
    let refused = orders.handle("a1", &create(1)).await.unwrap_err();
    assert!(
        matches!(
            refused,
            HandleError::Rejected {
                rejection: Rejection::AlreadyExists,
                ..
            }
        ),
        "{refused}"
    );
    let unknown = orders
        .handle("nope", &pay("p", 1, "2026-11-26"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            unknown,
            HandleError::Rejected {
                rejection: Rejection::NotFound,
                ..
            }
        ),
        "{unknown}"
    );
    assert_eq!(orders.history("a1").await.unwrap().len(), 2);

    for (id, amount, day) in [("a2", 800, "2026-11-26"), ("a3", 500, "2026-11-27")] {
        orders.handle(id, &create(amount)).await.unwrap();
        orders
            .handle(id, &pay(&format!("pay-{id}"), amount, day))
            .await
            .unwrap();
    }
    // An unpaid order counts for nothing.
    orders.handle("a4", &create(999)).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    while revenue.total("2026-11-26") < 2050 || revenue.total("2026-11-27") < 500 {
        assert!(Instant::now() < deadline, "{:?}", revenue.per_day);
        revenue.poll(200).await.unwrap();
    }
    // Nothing more arrives: every payment counted exactly once.
    while revenue.poll(200).await.unwrap() > 0 {}
    assert_eq!(
        revenue.per_day.into_iter().collect::<Vec<_>>(),
        [
            ("2026-11-26".to_owned(), 2050),
            ("2026-11-27".to_owned(), 500)
        ]
    );
}

#[tokio::test]
async fn given_two_concurrent_payments_of_an_order_when_handled_should_let_one_win_and_refuse_the_other_as_already_paid()
 {
    let (server, _api) = TestServer::start_ready().await;
    let orders = Orders::new(&server.url(""), "orders", 10);
    orders.create_topic().await.unwrap();
    orders.handle("b1", &create(700)).await.unwrap();

    // Both load version 0 before either appends.
    let barrier = Barrier::new(2);
    let (card, wallet) = (
        pay("card", 700, "2026-11-26"),
        pay("wallet", 700, "2026-11-26"),
    );
    let (first, second) = tokio::join!(
        orders.handle_with("b1", &card, Some(&barrier)),
        orders.handle_with("b1", &wallet, Some(&barrier)),
    );
    let (winner, loser) = match (first, second) {
        (Ok(won), Err(lost)) => (("card", won), lost),
        (Err(lost), Ok(won)) => (("wallet", won), lost),
        other => panic!("expected exactly one winner: {other:?}"),
    };
    assert_eq!(winner.1.last_version, 1);
    assert_eq!(winner.1.conflicts, 0);
    match loser {
        HandleError::Rejected {
            rejection: Rejection::AlreadyPaid { payment_id },
            conflicts,
        } => {
            assert_eq!(conflicts, 1, "the loser met the version conflict");
            assert_eq!(payment_id, winner.0);
        }
        other => panic!("the loser should be refused as already paid: {other}"),
    }
    let history = orders.history("b1").await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(
        orders.load("b1").await.unwrap().state.payment_id.as_deref(),
        Some(winner.0)
    );
}

#[tokio::test]
async fn given_a_running_server_when_the_example_runs_should_count_every_order() {
    let (server, _api) = TestServer::start_ready().await;
    let report = order_payment::run(&server.url(""), "shop", 3)
        .await
        .unwrap();
    assert_eq!(report.orders, 3);
    assert_eq!(report.revenue, [("2026-11-26".to_owned(), 6000)]);
}
