//! `cargo run -p subscription-gateway -- [server] [events] [cut_after]`
//! against a running Herald (`herald serve`).
#![allow(clippy::print_stdout, reason = "an example prints its report")]

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let server = args
        .first()
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:7800".into());
    let events = args.get(1).map_or(Ok(200), |value| value.parse())?;
    let cut_after = args.get(2).map_or(Ok(events / 3), |value| value.parse())?;
    let topic = format!("ticks-{}", std::process::id());
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(subscription_gateway::run(
        &server, &topic, events, cut_after,
    ))?;
    println!(
        "published {}, received {} exactly once and in order per key; cut after {}, resumed from Last-Event-ID {}",
        report.published, report.received, report.before_cut, report.resumed_from
    );
    Ok(())
}
