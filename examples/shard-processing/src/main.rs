//! `cargo run -p shard-processing -- [server] [users] [shards] [silent shard] [deadline_ms]`
//! against a running Herald (`herald serve`).
#![allow(clippy::print_stdout, reason = "an example prints its report")]

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let server = args
        .first()
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:7800".into());
    let users = args.get(1).map_or(Ok(1000), |value| value.parse())?;
    let shards = args.get(2).map_or(Ok(4), |value| value.parse())?;
    let silent = args.get(3).map(|value| value.parse()).transpose()?;
    let deadline_ms = args.get(4).map_or(Ok(3_000), |value| value.parse())?;
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(shard_processing::run(
        &server,
        users,
        shards,
        silent,
        deadline_ms,
    ))?;
    println!(
        "job {}: {} ({} of {shards} shards reported); missing: {:?}",
        report.job_id, report.status, report.done, report.missing
    );
    for (key, result) in &report.gathered {
        println!("  {key}: {result}");
    }
    Ok(())
}
