//! Developer tasks for tsm-trace: `cargo xtask <command>`.
//!
//! xtask compiles with nothing but a stable Rust toolchain: every tool the other commands need is
//! installed by `cargo xtask setup`, which each command runs first as a (fast) check.

mod bench;
mod build;
mod demo;
mod dist;
mod e2e;
mod fuzz;
#[cfg(test)]
mod layout;
mod promtool;
mod setup;
mod soak;
mod test;
mod toolchain;
mod util;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, test and demo tsm-trace",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install everything the build and the tests need (idempotent; seconds when done).
    Setup(setup::SetupArgs),
    /// Build the eBPF programs and the tsm-trace binaries (host and static musl).
    Build,
    /// Run the whole test suite: unit tests, verifier-load test, VM suite, promtool checks.
    Test(TestArgs),
    /// Boot real Debian kernels in qemu and run the probe scenarios against them.
    VmTest(vm::VmTestArgs),
    /// The main job, without TSM hardware: tsm-trace in a VM with a stand-in TSM module,
    /// a scenario with failures and leaks, its trace lines, leak alert and /metrics.
    Demo(demo::DemoArgs),
    /// Benchmarks with floors; writes BENCHMARKS.md (fails if a floor is missed).
    Bench(bench::BenchArgs),
    /// A month compressed: a million operations through the daemon's userspace path with
    /// scrapes throughout; checks that nothing grows without bound, writes docs/soak.svg and
    /// the soak section of BENCHMARKS.md.
    Soak(soak::SoakArgs),
    /// A real Prometheus scrapes tsm-trace in a VM; every dashboard and rule query must answer.
    E2e(e2e::E2eArgs),
    /// The Debian package (cargo-deb: static binary, unit, /etc/default, man pages,
    /// completions; lintian clean) in target/dist/; --test installs and removes it in a
    /// bookworm root.
    Dist(dist::DistArgs),
    /// The deployments as shipped, in a VM: the Debian package under systemd as PID 1
    /// (install, start, restart, purge) and the DaemonSet's exact privileges.
    ShippedTest,
    /// promtool: check the rules, run the hand-written rule tests and the ones generated from
    /// captures replayed by tsm-trace (every alert must fire in one).
    Promtool,
    /// Fuzz the parsers of untrusted input (cargo-fuzz on the pinned nightly) for a while.
    Fuzz(fuzz::FuzzArgs),
}

#[derive(clap::Args)]
struct TestArgs {
    /// Skip the VM suite (host tests only).
    #[arg(long)]
    no_vm: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup(args) => setup::run(&args),
        Command::Build => {
            setup::ensure()?;
            build::build_all()
        }
        Command::Test(args) => test::test_all(args.no_vm),
        Command::Bench(args) => {
            setup::ensure()?;
            bench::run(&args)
        }
        Command::Soak(args) => {
            setup::ensure()?;
            soak::run(&args)
        }
        Command::E2e(args) => {
            setup::ensure()?;
            e2e::run(&args)
        }
        Command::Demo(args) => {
            setup::ensure()?;
            demo::run(&args)
        }
        Command::Dist(args) => {
            setup::ensure()?;
            dist::run_dist(&args)
        }
        Command::Fuzz(args) => {
            setup::ensure()?;
            fuzz::run(&args)
        }
        Command::Promtool => {
            setup::ensure()?;
            promtool::check()
        }
        Command::ShippedTest => {
            setup::ensure()?;
            let built = dist::build()?;
            dist::shipped::test(&built.deb)
        }
        Command::VmTest(args) => {
            setup::ensure()?;
            vm::run(&args)
        }
    }
}
