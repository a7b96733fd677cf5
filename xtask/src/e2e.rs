//! End to end: a real Prometheus (Debian package, loopback) scrapes tsm-trace in the test VM
//! through a forwarded port; every PromQL expression of the dashboard and rules must return data.

use anyhow::Result;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct E2eArgs {}

pub fn run(_args: &E2eArgs) -> Result<()> {
    println!("e2e: not implemented yet");
    Ok(())
}
