//! The SDK in a few lines: create a topic and a queue group, publish
//! through a batching publisher, consume with acks.
//!
//! ```text
//! cargo run --release -p herald-server --bin herald -- serve &
//! cargo run -p herald-client --example quickstart [-- http://127.0.0.1:7800]
//! ```
#![allow(clippy::print_stdout)]

use herald_client::{Client, ErrorCode, Event, GroupMode, GroupOptions, TopicOptions};

#[tokio::main]
async fn main() -> herald_client::Result<()> {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:7800".to_owned());
    let client = Client::connect(endpoint).await?;

    match client
        .create_topic(TopicOptions::new("quickstart").partitions(2))
        .await
    {
        Ok(_) => {}
        Err(error) if error.code() == Some(&ErrorCode::TopicExists) => {}
        Err(error) => return Err(error),
    }
    client
        .put_group("quickstart", GroupOptions::new("workers", GroupMode::Queue))
        .await?;

    let publisher = client.publisher("quickstart").build();
    let mut pending = Vec::new();
    for n in 0..10 {
        let mut event = Event::new("", "/quickstart", "greeting.sent");
        event.key = Some(format!("user-{}", n % 3));
        event.data = Some(format!("{{\"n\":{n}}}").into());
        pending.push(publisher.publish(event).await?);
    }
    for ack in pending {
        let stored = ack.await?;
        println!(
            "published {} at {}:{}",
            stored.id, stored.partition, stored.offset
        );
    }

    let mut consumer = client.consumer("quickstart", "workers").build().await?;
    for _ in 0..10 {
        let Some(delivery) = consumer.next().await else {
            break;
        };
        let delivery = delivery?;
        println!(
            "consumed {} (attempt {})",
            delivery.event().event.id,
            delivery.attempt()
        );
        delivery.ack()?;
    }
    Ok(())
}
