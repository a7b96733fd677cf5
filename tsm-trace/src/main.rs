//! `tsm-trace`: the command line. See `tsm-trace --help`. The clap definitions are in
//! `tsm_trace::cli`, what each subcommand does in `commands/`.

mod commands;
mod verdict;

use std::io::Write;

use anyhow::{Context, Result};
use clap::Parser;
use tsm_trace::{
    cli::{Cli, Command, parse},
    logger,
};

use commands::{check, doctor, generate, replay, run, trace, unpin};

fn main() {
    let cli = Cli::parse();
    let log_format = cli.log_format;
    logger::init(cli.log_level, log_format);
    warn_unknown_env();
    let result = match cli.command {
        Command::Replay(args) => replay::replay(args),
        Command::Check(args) => check::check(args),
        Command::Doctor(args) => doctor::doctor(args).map(|code| std::process::exit(code)),
        Command::Generate { dir } => generate::run(<Cli as clap::CommandFactory>::command(), &dir),
        Command::Unpin(args) => unpin::unpin(args),
        Command::Run(args) => runtime().and_then(|rt| rt.block_on(run::run(args))),
        Command::Trace(args) => runtime().and_then(|rt| rt.block_on(trace::trace(args))),
    };
    if let Err(e) = result {
        // A reader that went away (`| head`) is not an error: stop quietly, as Unix tools do.
        if is_broken_pipe(&e) {
            std::process::exit(0);
        }
        // Where doctor would say "cannot run", every mode exits as doctor does.
        let code = if e.downcast_ref::<tsm_trace::doctor::CannotRun>().is_some() {
            tsm_trace::doctor::EXIT_CANNOT_RUN
        } else {
            1
        };
        // One readable message in the log format: the error and its causes, no backtrace.
        // Written with `writeln!` (not `eprintln!`, which panics when stderr is a closed pipe).
        let mut err = std::io::stderr().lock();
        for line in logger::fatal_lines(log_format, &e, code) {
            let _ = writeln!(err, "{line}");
        }
        std::process::exit(code);
    }
}

/// Whether `e` comes from writing into a pipe whose reader has closed it.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Every `TSM_TRACE_*` variable that the flags read.
fn known_env() -> Vec<String> {
    fn walk(cmd: &clap::Command, out: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            if let Some(e) = a.get_env() {
                out.push(e.to_string_lossy().into_owned());
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, out);
        }
    }
    // The systemd unit passes this one to `run` as arguments.
    let mut out = vec![generate::ARGS_VAR.to_string()];
    walk(&<Cli as clap::CommandFactory>::command(), &mut out);
    out.sort();
    out.dedup();
    out
}

/// A misspelt variable would otherwise be ignored without a word.
fn warn_unknown_env() {
    let known = known_env();
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    let vars = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok());
    for k in parse::unknown_env(vars, &known) {
        log::warn!(
            "{k} is set but no flag reads it (known: {})",
            known.join(", ")
        );
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}
