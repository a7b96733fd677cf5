//! `cargo xtask bench`: benchmarks with floors, written to BENCHMARKS.md.

use anyhow::{Result, bail};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct BenchArgs {
    /// Tiny sizes: the smoke run that `cargo xtask test` does so benchmarks cannot rot.
    #[arg(long)]
    pub smoke: bool,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.smoke {
        println!("bench: not implemented yet");
        return Ok(());
    }
    bail!("cargo xtask bench is not implemented yet")
}
