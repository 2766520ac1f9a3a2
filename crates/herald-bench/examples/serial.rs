//! Serial publishes of 128 B, one in flight, from a current-thread runtime
//! against a running Herald (`http://…`, a topic with fsync never, or
//! always with `FSYNC=always`) or NATS JetStream (`nats://…`, a file
//! stream; its server's `sync_interval` decides): wall time and this process's CPU
//! per publish (the client's own cost of a serial call) and the latency
//! percentiles. `PACE_US=500` sends on a fixed schedule instead of back to
//! back, and lists the calls slower than 600 µs by their publish number (the
//! dedup window's map and queue grow at 1,792 / 2,048 / 3,584 / 4,096 …
//! events: BENCHMARKS.md).
//!
//! An `https://` endpoint is trusted through the CA in the file `$CA`.
//!
//! ```text
//! herald serve --listen 127.0.0.1:7811 --data-dir /tmp/serial &
//! target/release/examples/serial http://127.0.0.1:7811 20000
//! nats-server -js -a 127.0.0.1 -p 4333 -sd /tmp/serial-nats &
//! target/release/examples/serial nats://127.0.0.1:4333 20000
//! ```

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use herald_client::{Client, Event, Fsync, TopicOptions};

/// This process's user + system CPU seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// One serial publish on either system.
enum Target {
    Herald(Client, &'static str),
    Nats(async_nats::jetstream::Context),
}

impl Target {
    async fn connect(endpoint: &str) -> anyhow::Result<Self> {
        if endpoint.starts_with("nats://") {
            let js = async_nats::jetstream::new(async_nats::connect(endpoint).await?);
            js.get_or_create_stream(async_nats::jetstream::stream::Config {
                name: "serial".into(),
                subjects: vec!["serial".into()],
                ..Default::default()
            })
            .await?;
            return Ok(Self::Nats(js));
        }
        let mut builder = Client::builder(endpoint.to_owned());
        if let Ok(ca) = std::env::var("CA") {
            builder = builder.ca_certificate(std::fs::read(ca)?);
        }
        let client = builder.connect().await?;
        let (topic, fsync) = match std::env::var("FSYNC").as_deref() {
            Ok("always") => ("serial-always", Fsync::Always),
            _ => ("serial", Fsync::Never),
        };
        match client
            .create_topic(TopicOptions::new(topic).fsync(fsync))
            .await
        {
            Ok(_)
            | Err(herald_client::Error::Api {
                code: herald_client::ErrorCode::TopicExists,
                ..
            }) => {}
            Err(error) => return Err(error.into()),
        }
        Ok(Self::Herald(client, topic))
    }

    async fn publish(&self, payload: &Bytes) -> anyhow::Result<()> {
        match self {
            Self::Herald(client, topic) => {
                let mut event = Event::new("", "/bench", "bench.event");
                event.datacontenttype = Some("application/octet-stream".to_owned());
                event.data = Some(payload.clone());
                client.publish(topic, [event]).await?;
            }
            Self::Nats(js) => {
                js.publish("serial", payload.clone()).await?.await?;
            }
        }
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let endpoint = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:7800".into());
    let count: u64 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let pace = std::env::var("PACE_US")
        .ok()
        .and_then(|value| value.parse::<u64>().ok())
        .map(Duration::from_micros);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let target = Target::connect(&endpoint).await?;
        let payload = Bytes::from(vec![b'x'; 128]);
        for _ in 0..1000 {
            target.publish(&payload).await?;
        }
        let mut histogram = Histogram::<u64>::new(3)?;
        let (started, cpu) = (Instant::now(), cpu_seconds());
        let mut slow = Vec::new();
        for sent in 0..count {
            if let Some(pace) = pace {
                let due = started + pace * u32::try_from(sent).unwrap_or(u32::MAX);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let at = Instant::now();
            target.publish(&payload).await?;
            let took = at.elapsed();
            histogram.record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX))?;
            if took > Duration::from_micros(600) {
                slow.push((sent + 1000, took.as_micros()));
            }
        }
        let (wall, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu);
        println!(
            "{count} serial publishes: {:.1} µs wall, {:.1} µs client CPU per publish; \
             p50 {} p90 {} p99 {} p99.9 {} max {} µs",
            wall * 1e6 / count as f64,
            cpu * 1e6 / count as f64,
            histogram.value_at_quantile(0.5),
            histogram.value_at_quantile(0.9),
            histogram.value_at_quantile(0.99),
            histogram.value_at_quantile(0.999),
            histogram.max(),
        );
        if pace.is_some() {
            println!(
                "{} slower than 600 µs (publish number from the first, µs): {slow:?}",
                slow.len()
            );
        }
        anyhow::Ok(())
    })
}
