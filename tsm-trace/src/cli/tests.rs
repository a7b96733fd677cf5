//! Tests of the command line itself (the clap definitions in `cli`).

use clap::{CommandFactory, Parser};

use super::Cli;

fn sub(name: &str) -> clap::Command {
    let mut c = Cli::command();
    c.build();
    c.find_subcommand(name)
        .unwrap_or_else(|| panic!("no {name} subcommand"))
        .clone()
}

fn longs(c: &clap::Command) -> Vec<String> {
    c.get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect()
}

fn parse_error(args: &[&str]) -> String {
    match Cli::try_parse_from(args) {
        Ok(_) => panic!("{args:?} parsed"),
        Err(e) => e.to_string(),
    }
}

/// `doctor --help` lists only options doctor reads.
#[test]
fn doctor_lists_only_what_it_uses() {
    let doctor = longs(&sub("doctor"));
    for unused in ["strict", "inflight-timeout", "vm-key"] {
        assert!(
            !doctor.iter().any(|l| l == unused),
            "doctor lists --{unused}"
        );
    }
    for used in [
        "kallsyms",
        "btf",
        "ringbuf-size",
        "driver-bind",
        "pin-dir",
        "json",
    ] {
        assert!(doctor.iter().any(|l| l == used), "doctor lacks --{used}");
    }
    let check = longs(&sub("check"));
    for unused in ["inflight-timeout", "vm-key"] {
        assert!(!check.iter().any(|l| l == unused), "check lists --{unused}");
    }
}

/// The README says the daemon's options all read a `TSM_TRACE_*` variable.
#[test]
fn every_daemon_option_reads_a_variable() {
    let run = sub("run");
    for a in run.get_arguments() {
        let Some(long) = a.get_long() else { continue };
        if ["help", "version"].contains(&long) {
            continue;
        }
        let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
        assert!(
            env.as_deref().is_some_and(|e| e.starts_with("TSM_TRACE_")),
            "run --{long} has no TSM_TRACE_* variable"
        );
    }
}

#[test]
fn negative_durations_are_refused_by_name() {
    for (flag, cmd) in [
        ("--late-attach-window", "run"),
        ("--grace", "run"),
        ("--inflight-timeout", "trace"),
        ("--duration", "trace"),
        ("--web.header-timeout", "run"),
    ] {
        let e = parse_error(&["tsm-trace", cmd, flag, "-1s"]);
        assert!(
            e.contains("negative durations are not allowed"),
            "{flag}: {e}"
        );
        assert!(!e.contains("unexpected argument"), "{flag}: {e}");
    }
}

#[test]
fn counts_out_of_range_say_the_range() {
    let e = parse_error(&[
        "tsm-trace",
        "run",
        "--max-bindings",
        "99999999999999999999999",
    ]);
    assert!(
        e.contains("too large: must be a whole number from 1 to 16777216"),
        "{e}"
    );
}

#[test]
fn vmd_domains_are_accepted() {
    let cli = Cli::try_parse_from(["tsm-trace", "trace", "--device", "10000:e1:00.0"]);
    assert!(cli.is_ok(), "{:?}", cli.err().map(|e| e.to_string()));
}
