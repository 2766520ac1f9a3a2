//! `cargo run --release -p job-bench -- [server] [jobs] [clients] [workers]`
//! against a running Herald (`herald serve`).
#![allow(clippy::print_stdout, reason = "a benchmark prints its figures")]

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let server = args
        .first()
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:7800".into());
    let jobs = args.get(1).map_or(Ok(2_000), |value| value.parse())?;
    let clients = args.get(2).map_or(Ok(16), |value| value.parse())?;
    let workers = args.get(3).map_or(Ok(1), |value| value.parse())?;
    let settings = job_bench::Settings {
        server,
        queue: format!("bench-{}", std::process::id()),
        jobs,
        clients,
        workers,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(job_bench::run(settings))?;
    println!(
        "{} jobs, {clients} clients, {workers} workers: {:.0} jobs/s; end-to-end p50 {:.1} ms, p99 {:.1} ms ({:.1} s)",
        report.jobs,
        report.jobs_per_sec,
        report.p50.as_secs_f64() * 1e3,
        report.p99.as_secs_f64() * 1e3,
        report.elapsed.as_secs_f64()
    );
    Ok(())
}
