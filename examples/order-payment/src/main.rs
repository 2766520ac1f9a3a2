//! `cargo run -p order-payment -- [server] [orders]` against a running
//! Herald (`herald serve`).
#![allow(clippy::print_stdout, reason = "an example prints its report")]

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let server = args
        .first()
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:7800".into());
    let orders = args.get(1).map_or(Ok(5), |value| value.parse())?;
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(order_payment::run(&server, "orders", orders))?;
    println!(
        "{} orders created and paid; revenue per day (cents): {:?}",
        report.orders, report.revenue
    );
    Ok(())
}
