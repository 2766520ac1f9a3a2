//! `cargo run -p support-workflow -- [server] [answer_timeout_ms]` against
//! a running Herald allowed to call local services:
//! `HERALD_WEBHOOKS__ALLOW_TARGETS='["127.0.0.1/32"]' herald serve`.
#![allow(clippy::print_stdout, reason = "an example prints its report")]

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let server = args
        .first()
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:7800".into());
    let timeout_ms = args.get(1).map_or(Ok(2_000), |value| value.parse())?;
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(support_workflow::run(&server, timeout_ms))?;
    for (question, instance) in &report.instances {
        println!(
            "{question}: {} {}",
            instance["status"].as_str().unwrap_or_default(),
            if instance["output"].is_null() {
                &instance["error"]
            } else {
                &instance["output"]
            }
        );
        if let Some(events) = report.outcomes.get(question) {
            println!("  support events: {}", events.join(", "));
        }
    }
    Ok(())
}
