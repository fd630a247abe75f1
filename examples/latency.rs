//! Latency of the two calls bb_worker makes, against a running runner:
//!
//!   cargo run --release --example latency -- SOCKET BUILD_DIR [CALLS]
//!
//! Prints the median and 99th percentile of CheckReadiness and of
//! Run(/bin/true), each call on one kept-open connection, as bb_worker
//! keeps one. A measurement tool, not a test: nothing is asserted.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rbe_runner::cli::client::{self, Target};
use rbe_runner::cli::exec::ActionDirectory;
use rbe_runner::proto::runner::runner_client::RunnerClient;
use rbe_runner::proto::runner::CheckReadinessRequest;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (socket, build_dir) = match args.as_slice() {
        [socket, build_dir, ..] => (PathBuf::from(socket), PathBuf::from(build_dir)),
        _ => return Err("usage: latency SOCKET BUILD_DIR [CALLS]".into()),
    };
    let calls: usize = args.get(2).map(|n| n.parse()).transpose()?.unwrap_or(2000);
    let mut client = RunnerClient::new(client::connect(&Target::Socket(socket)).await?);

    let mut readiness = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        client
            .check_readiness(CheckReadinessRequest { path: ".".into() })
            .await?;
        readiness.push(start.elapsed());
    }
    report("CheckReadiness", &mut readiness);

    let mut run = Vec::with_capacity(calls / 4);
    for _ in 0..calls / 4 {
        let action = ActionDirectory::create(&build_dir)?;
        let request = action.request(vec!["/bin/true".into()], Vec::new());
        let start = Instant::now();
        client.run(request).await?;
        run.push(start.elapsed());
    }
    report("Run(/bin/true)", &mut run);
    Ok(())
}

fn report(name: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |fraction: f64| samples[((samples.len() - 1) as f64 * fraction) as usize];
    println!(
        "{name}: {} calls, median {:?}, p99 {:?}",
        samples.len(),
        at(0.5),
        at(0.99)
    );
}
