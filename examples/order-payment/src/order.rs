//! The order aggregate as a decider: pure functions, no I/O.
//!
//! ```text
//! initial_state()                       → OrderState::default()
//! evolve(state, event)                  → the state after the event
//! decide(command, state)                → the events the command causes, or a rejection
//! ```
//!
//! The state is what [`evolve`] folds from the stream's events; it is also
//! what snapshots hold (serialized as JSON), so its shape is part of the
//! stored format.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The CloudEvents `source` of the events this aggregate writes.
pub const SOURCE: &str = "/order-payment";
/// The type of [`OrderEvent::Created`].
pub const CREATED: &str = "order.created";
/// The type of [`OrderEvent::Paid`].
pub const PAID: &str = "payment.succeeded";

/// What happened to an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEvent {
    /// The order was placed.
    Created {
        /// Who ordered.
        customer: String,
        /// The amount due, in cents.
        amount_cents: u64,
    },
    /// The order was paid.
    Paid {
        /// The payment provider's id of the payment.
        payment_id: String,
        /// The amount paid, in cents.
        amount_cents: u64,
        /// The business day of the payment (`YYYY-MM-DD`).
        day: String,
    },
}

/// What a caller asks of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Place the order.
    Create {
        /// Who orders.
        customer: String,
        /// The amount due, in cents.
        amount_cents: u64,
    },
    /// Record a successful payment.
    Pay {
        /// The payment provider's id of the payment.
        payment_id: String,
        /// The amount paid, in cents.
        amount_cents: u64,
        /// The business day of the payment (`YYYY-MM-DD`).
        day: String,
    },
}

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// No such order yet.
    #[default]
    New,
    /// Placed, awaiting payment.
    Created,
    /// Paid.
    Paid,
}

/// The state folded from an order's events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    /// Where the order is.
    pub status: Status,
    /// Who ordered.
    pub customer: Option<String>,
    /// The amount due, in cents.
    pub amount_cents: u64,
    /// The payment that settled it.
    pub payment_id: Option<String>,
    /// The day it was paid.
    pub paid_on: Option<String>,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// `Create` of an order that exists.
    #[error("the order already exists")]
    AlreadyExists,
    /// `Pay` of an order that was never created.
    #[error("no such order")]
    NotFound,
    /// `Pay` of an order that is paid.
    #[error("the order is already paid (by payment {payment_id})")]
    AlreadyPaid {
        /// The payment that settled it.
        payment_id: String,
    },
    /// `Pay` of another amount than the one due.
    #[error("payment of {paid} cents for an order of {due} cents")]
    WrongAmount {
        /// The amount due.
        due: u64,
        /// The amount offered.
        paid: u64,
    },
}

/// The state of an order with no events.
pub fn initial_state() -> OrderState {
    OrderState::default()
}

/// The state after `event`.
pub fn evolve(mut state: OrderState, event: &OrderEvent) -> OrderState {
    match event {
        OrderEvent::Created {
            customer,
            amount_cents,
        } => {
            state.status = Status::Created;
            state.customer = Some(customer.clone());
            state.amount_cents = *amount_cents;
        }
        OrderEvent::Paid {
            payment_id, day, ..
        } => {
            state.status = Status::Paid;
            state.payment_id = Some(payment_id.clone());
            state.paid_on = Some(day.clone());
        }
    }
    state
}

/// The events `command` causes in `state`, or why it is refused.
pub fn decide(command: &Command, state: &OrderState) -> Result<Vec<OrderEvent>, Rejection> {
    match (command, state.status) {
        (
            Command::Create {
                customer,
                amount_cents,
            },
            Status::New,
        ) => Ok(vec![OrderEvent::Created {
            customer: customer.clone(),
            amount_cents: *amount_cents,
        }]),
        (Command::Create { .. }, _) => Err(Rejection::AlreadyExists),
        (Command::Pay { .. }, Status::New) => Err(Rejection::NotFound),
        (Command::Pay { .. }, Status::Paid) => Err(Rejection::AlreadyPaid {
            payment_id: state.payment_id.clone().unwrap_or_default(),
        }),
        (
            Command::Pay {
                payment_id,
                amount_cents,
                day,
            },
            Status::Created,
        ) => {
            if *amount_cents != state.amount_cents {
                return Err(Rejection::WrongAmount {
                    due: state.amount_cents,
                    paid: *amount_cents,
                });
            }
            Ok(vec![OrderEvent::Paid {
                payment_id: payment_id.clone(),
                amount_cents: *amount_cents,
                day: day.clone(),
            }])
        }
    }
}

impl OrderEvent {
    /// The event as a structured-mode CloudEvent (Herald assigns the id).
    pub fn to_cloudevent(&self) -> Value {
        let (ty, data) = match self {
            Self::Created {
                customer,
                amount_cents,
            } => (
                CREATED,
                json!({ "customer": customer, "amount_cents": amount_cents }),
            ),
            Self::Paid {
                payment_id,
                amount_cents,
                day,
            } => (
                PAID,
                json!({ "payment_id": payment_id, "amount_cents": amount_cents, "day": day }),
            ),
        };
        json!({ "specversion": "1.0", "source": SOURCE, "type": ty, "data": data })
    }

    /// The event a CloudEvent read from Herald holds, if it is one of ours.
    pub fn from_cloudevent(event: &Value) -> Option<Self> {
        let data = &event["data"];
        let text = |name: &str| data[name].as_str().map(str::to_owned);
        let amount_cents = data["amount_cents"].as_u64()?;
        match event["type"].as_str()? {
            CREATED => Some(Self::Created {
                customer: text("customer")?,
                amount_cents,
            }),
            PAID => Some(Self::Paid {
                payment_id: text("payment_id")?,
                amount_cents,
                day: text("day")?,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pay(amount_cents: u64) -> Command {
        Command::Pay {
            payment_id: "pay-1".into(),
            amount_cents,
            day: "2026-11-26".into(),
        }
    }

    fn created() -> OrderState {
        let events = decide(
            &Command::Create {
                customer: "ada".into(),
                amount_cents: 1250,
            },
            &initial_state(),
        )
        .unwrap();
        events.iter().fold(initial_state(), evolve)
    }

    #[test]
    fn given_a_created_order_when_paid_in_full_should_become_paid() {
        let events = decide(&pay(1250), &created()).unwrap();
        let state = events.iter().fold(created(), evolve);
        assert_eq!(state.status, Status::Paid);
        assert_eq!(state.payment_id.as_deref(), Some("pay-1"));
    }

    #[test]
    fn given_a_paid_order_when_paid_again_should_refuse() {
        let paid = decide(&pay(1250), &created())
            .unwrap()
            .iter()
            .fold(created(), evolve);
        assert_eq!(
            decide(&pay(1250), &paid),
            Err(Rejection::AlreadyPaid {
                payment_id: "pay-1".into()
            })
        );
    }

    #[test]
    fn given_bad_commands_when_decided_should_refuse_them() {
        assert_eq!(decide(&pay(1), &initial_state()), Err(Rejection::NotFound));
        assert_eq!(
            decide(&pay(1), &created()),
            Err(Rejection::WrongAmount { due: 1250, paid: 1 })
        );
        let again = Command::Create {
            customer: "ada".into(),
            amount_cents: 1,
        };
        assert_eq!(decide(&again, &created()), Err(Rejection::AlreadyExists));
    }

    #[test]
    fn given_events_when_turned_into_cloudevents_should_read_back() {
        for event in [
            OrderEvent::Created {
                customer: "ada".into(),
                amount_cents: 3,
            },
            OrderEvent::Paid {
                payment_id: "p".into(),
                amount_cents: 3,
                day: "2026-11-26".into(),
            },
        ] {
            assert_eq!(
                OrderEvent::from_cloudevent(&event.to_cloudevent()),
                Some(event)
            );
        }
    }
}
