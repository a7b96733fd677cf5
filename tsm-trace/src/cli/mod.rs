//! The command line: the clap definitions of every subcommand and its flags (`groups.rs`:
//! the flags several subcommands share), and value parsers for flags and `TSM_TRACE_*`
//! variables (`parse.rs`). What each subcommand does is in the binary's `commands/`.

mod groups;
pub mod parse;
#[cfg(test)]
mod tests;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

pub use groups::{
    CorrelateArgs, FilterArgs, OtlpArgs, PrintFormat, ProbeArgs, TargetArgs, TimeFormat,
    TimelineArgs, WebArgs,
};

pub const CHECK_LONG_ABOUT: &str = "\
Resolve BTF, attach every probe, print what attached (and why not), and exit.

Exit status:
  0  a probe on the bind path (tsm_op_ioctl, tsm_bind or pci_tsm_bind) attached: tsm-trace
     sees binds on this host
  1  it runs but would see no bind (no bind-path probe attached; the last line says why, in
     `tsm-trace doctor`'s words), a probe did not attach under --strict, or another error
  2  tsm-trace cannot run on this host (what `tsm-trace doctor` reports as FAIL: no kprobes,
     lockdown=confidentiality, missing capabilities, no BTF, kernel older than 5.8); nothing
     was loaded, and the one error line names the cause and what to do";

pub const EXIT_STATUS: &str = "\
Exit status: 0 stopped by SIGINT or SIGTERM (trace: or at the end of --duration); 2 tsm-trace
cannot run on this host (what `tsm-trace doctor` reports as FAIL; nothing was loaded, and the
one error line is doctor's); 1 any other error.";

pub const ABOUT: &str = "See TEE device assignment on confidential-VM hosts: TSM bind latency, \
failures by layer and errno, and bindings left behind.";

pub const AFTER_HELP: &str = "\
Examples:
  tsm-trace doctor                         can this host run tsm-trace, what will it see
  tsm-trace check                          which probes attach here, and why not
  tsm-trace trace --failed                 failed binds/unbinds as they happen
  tsm-trace trace --json --record cap.jsonl --duration 10m
  tsm-trace replay cap.jsonl --metrics     the same report from a capture, no kernel needed
  tsm-trace run                            the daemon: http://0.0.0.0:9477/metrics";

#[derive(Parser)]
#[command(name = "tsm-trace", version, about = ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    /// Log level: off, error, warn, info, debug, trace.
    #[arg(long, global = true, env = "TSM_TRACE_LOG", default_value = "info", value_parser = parse::level)]
    pub log_level: log::LevelFilter,
    /// Log format (logs go to stderr).
    #[arg(long, global = true, env = "TSM_TRACE_LOG_FORMAT", value_enum, default_value_t = crate::logger::Format::Text)]
    pub log_format: crate::logger::Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon: Prometheus metrics, health, readiness and a JSON view of bindings.
    #[command(after_long_help = EXIT_STATUS)]
    Run(RunArgs),
    /// Print each TSM operation as it completes, with a summary on exit (kernel bring-up).
    #[command(after_long_help = EXIT_STATUS)]
    Trace(TraceArgs),
    /// Run a capture (`trace --record`) through the correlator and print the same report.
    Replay(ReplayArgs),
    /// Resolve BTF, attach every probe, print what attached (and why not), and exit.
    #[command(long_about = CHECK_LONG_ABOUT)]
    Check(CheckArgs),
    /// Can this host run tsm-trace, and what will it see? One line per fact (kernel, BTF,
    /// kprobes, PCI TSM, lockdown, capabilities, bpffs, probes...) with what to do about it.
    /// Exit status: 0 ok, 1 degraded, 2 cannot run.
    Doctor(DoctorArgs),
    /// Write man pages, shell completions and the commented /etc/default/tsm-trace into DIR
    /// (for packaging).
    #[command(hide = true)]
    Generate {
        /// The output directory (created).
        dir: PathBuf,
    },
    /// Remove what `run` pinned in bpffs (its probes stop) and its state file. Run it with
    /// no daemon running: before uninstalling, or to start over with empty tables.
    ///
    /// Every entry is checked first: the directory must be on bpffs and hold only tsm-trace's
    /// layout directories, maps and links (by name and by the kernel's own name of each BPF
    /// object); anything else refuses the whole removal, and nothing is removed. A running
    /// daemon's lock refuses it too (--force overrides). --dry-run lists what would go.
    Unpin(UnpinArgs),
}

#[derive(Args)]
pub struct UnpinArgs {
    /// The pin directory `run` used.
    #[arg(long, value_name = "DIR", env = "TSM_TRACE_PIN_DIR", default_value = crate::probes::pin::DEFAULT_ROOT)]
    pub pin_dir: PathBuf,
    /// The state file `run` used (removed only if it is a tsm-trace state file).
    #[arg(long, value_name = "FILE", env = "TSM_TRACE_STATE_FILE", default_value = crate::correlate::state::DEFAULT_PATH, value_parser = parse::state_file)]
    pub state_file: PathBuf,
    /// Print what would be removed, and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove the pins even while a daemon holds them (its probes stop; it keeps running blind).
    #[arg(long)]
    pub force: bool,
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub probes: ProbeArgs,
    #[command(flatten)]
    pub correlate: CorrelateArgs,
    /// Address for /metrics, /healthz, /readyz and /bindings.
    #[arg(
        long,
        value_name = "ADDR",
        env = "TSM_TRACE_LISTEN",
        default_value = "0.0.0.0:9477",
        value_parser = parse::listen,
        help_heading = "Daemon"
    )]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub web: WebArgs,
    #[command(flatten)]
    pub otlp: OtlpArgs,
    /// How often to compare the binding table with sysfs (`tsm/bound`); 0 disables it.
    #[arg(long, value_name = "DURATION", env = "TSM_TRACE_RECONCILE_INTERVAL", default_value = "60s", value_parser = parse::duration, allow_hyphen_values = true, help_heading = "Daemon")]
    pub reconcile_interval: Duration,
    /// sysfs root (tests point this at a fake tree).
    #[arg(
        long,
        value_name = "DIR",
        env = "TSM_TRACE_SYSFS_ROOT",
        default_value = "/sys",
        help_heading = "Daemon"
    )]
    pub sysfs_root: PathBuf,
    /// Keep all capabilities after the probes are attached (default: keep only CAP_BPF for
    /// reading the maps, plus what attaching later needs during --late-attach-window).
    #[arg(long, env = "TSM_TRACE_KEEP_CAPABILITIES", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Daemon")]
    pub keep_capabilities: bool,
    /// After attaching, become this user: UID, UID:GID or a name from /etc/passwd (e.g.
    /// 65534:65534). Needs CAP_SETUID and CAP_SETGID at start; they are dropped with the rest.
    #[arg(long, value_name = "USER", env = "TSM_TRACE_USER", value_parser = parse::user, help_heading = "Daemon")]
    pub user: Option<(u32, u32)>,
    /// How long requested probes that did not attach may still attach when their module
    /// loads (iommufd.ko, kvm.ko, a TSM driver). Nothing waits for a function kallsyms shows
    /// built in, nor on a kernel without module support (no /proc/modules). Attaching needs CAP_PERFMON, CAP_SYSLOG (and
    /// CAP_SYS_ADMIN where kernel.perf_event_paranoid=3): they are kept that long, then
    /// dropped for good (restart tsm-trace after loading a module later). 0s: never wait.
    #[arg(long, value_name = "DURATION", env = "TSM_TRACE_LATE_ATTACH_WINDOW", default_value = "10m", value_parser = parse::duration, allow_hyphen_values = true, help_heading = "Daemon")]
    pub late_attach_window: Duration,
    /// Also print every operation and leak to stdout (as `trace` would).
    #[arg(long, value_enum, env = "TSM_TRACE_PRINT", help_heading = "Daemon")]
    pub print: Option<PrintFormat>,
    /// Where the probes, the ring buffer, the in-flight calls, the VMM table and the kernel
    /// counters are pinned (bpffs), so that they keep running and counting while the daemon
    /// restarts or upgrades: nothing that happens meanwhile is lost. `tsm-trace unpin`
    /// removes them.
    #[arg(long, value_name = "DIR", env = "TSM_TRACE_PIN_DIR", default_value = crate::probes::pin::DEFAULT_ROOT, help_heading = "Restarts")]
    pub pin_dir: PathBuf,
    /// Keep nothing across restarts: pin nothing (the probes go when the daemon exits) and
    /// neither read nor write the state file. A restart then forgets bindings made before it
    /// (sysfs reconciliation reports those devices as `sysfs_bound_without_owner`), in-flight
    /// calls and whatever happened while it was down. For tests and one-off runs.
    #[arg(long, env = "TSM_TRACE_NO_PERSIST", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Restarts")]
    pub no_persist: bool,
    /// The binding, leak and device tables, the operations in progress and the ring-buffer
    /// position they cover, saved after every batch and read at start: a restart, or a crash
    /// at any instant, neither forgets a binding (no false `sysfs_bound_without_owner`) nor
    /// drops a leak, and ring-buffer records are released only once saved. Keep it on a tmpfs
    /// such as /run: bindings do not survive a reboot.
    #[arg(long, value_name = "FILE", env = "TSM_TRACE_STATE_FILE", default_value = crate::correlate::state::DEFAULT_PATH, value_parser = parse::state_file, help_heading = "Restarts")]
    pub state_file: PathBuf,
}

#[derive(Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub probes: ProbeArgs,
    #[command(flatten)]
    pub correlate: CorrelateArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub export: TimelineArgs,
    #[command(flatten)]
    pub otlp: OtlpArgs,
    #[command(flatten)]
    pub deep: DeepArgs,
    /// Stop after this long (e.g. 30s, 10m); default: until Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = parse::duration, allow_hyphen_values = true, help_heading = "Session")]
    pub duration: Option<Duration>,
    /// Also write every raw event to FILE, for `tsm-trace replay` (created 0600; never
    /// through a symlink; an existing FILE is kept unless --force).
    #[arg(long, value_name = "FILE", help_heading = "Session")]
    pub record: Option<PathBuf>,
    /// Let --record overwrite an existing file.
    #[arg(long, requires = "record", help_heading = "Session")]
    pub force: bool,
    /// Do not print the summary on exit.
    #[arg(long, help_heading = "Session")]
    pub no_summary: bool,
}

/// Deep trace for driver bring-up: what a TSM driver does inside its ops. Only `trace` has
/// it: the functions a glob names are attached for the session (a daemon's metrics must not
/// depend on ad-hoc globs, and each attached function costs probe hits on every call).
#[derive(Args, Clone, Debug, Default)]
pub struct DeepArgs {
    /// Also probe the functions of MODULE whose names match GLOB (repeatable; MODULE
    /// `vmlinux` for the kernel image, `*` for any), e.g. `ccp:sev_tio_*`. Only calls made
    /// inside a TSM operation are recorded: each operation then shows its call tree inside
    /// the driver, with durations and returns, and the origin of its error (the deepest
    /// function that first returned it) with the kernel stack there. Functions that cannot
    /// be probed are listed with the reason.
    #[arg(long = "deep", value_name = "MODULE:GLOB", value_parser = parse::deep_spec, help_heading = "Deep trace")]
    pub specs: Vec<crate::probes::deep::DeepSpec>,
    /// Also probe the internal functions of the TSM drivers tsm-trace knows (its
    /// compatibility table: `ccp:sev_tio_*`, `*:tdx_spdm_*`).
    #[arg(long, help_heading = "Deep trace")]
    pub deep_known: bool,
    /// Attach to at most N functions: the rest are listed as over the cap. Each attached
    /// function costs an entry and a return probe hit plus a map lookup on every call, inside
    /// TSM work or not.
    #[arg(long, value_name = "N", default_value_t = crate::probes::deep::DEFAULT_MAX, value_parser = parse::deep_max, help_heading = "Deep trace")]
    pub deep_max: usize,
    /// With each operation logged as stuck (--stuck-after), its thread's kernel stack where
    /// it waits (from /proc/PID/task/TID/stack). On with --deep.
    #[arg(long, help_heading = "Deep trace")]
    pub stuck_stacks: bool,
}

impl DeepArgs {
    /// The specs asked for, `--deep-known`'s included; empty: no deep trace.
    pub fn all(&self) -> Vec<crate::probes::deep::DeepSpec> {
        let mut v = self.specs.clone();
        if self.deep_known {
            v.extend(crate::probes::deep::known());
        }
        v
    }
}

#[derive(Args)]
pub struct ReplayArgs {
    /// A capture written by `tsm-trace trace --record`.
    pub file: PathBuf,
    #[command(flatten)]
    pub correlate: CorrelateArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Print only the Prometheus exposition the daemon would serve after this capture (no
    /// trace lines, no summary), e.g. for `promtool check metrics`.
    #[arg(long, conflicts_with = "json")]
    pub metrics: bool,
    /// With --metrics: the OpenMetrics exposition instead (what `run` serves to a scraper that
    /// asks for it), with the latency histograms' exemplars when spans are exported
    /// (--otlp-endpoint).
    #[arg(long, requires = "metrics")]
    pub openmetrics: bool,
    /// Do not print the summary after the trace lines (`--json` prints none).
    #[arg(long)]
    pub no_summary: bool,
    #[command(flatten)]
    pub export: TimelineArgs,
    #[command(flatten)]
    pub otlp: OtlpArgs,
}

#[derive(Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub probes: TargetArgs,
    /// The pin directory `run` would use (its bpffs mount is checked).
    #[arg(long, value_name = "DIR", env = "TSM_TRACE_PIN_DIR", default_value = crate::probes::pin::DEFAULT_ROOT)]
    pub pin_dir: PathBuf,
    /// One JSON object instead of text: verdict, exit_code and the findings.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct CheckArgs {
    /// Fail if any requested probe cannot attach (default: report it and keep going).
    #[arg(long, env = "TSM_TRACE_STRICT", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Probes")]
    pub strict: bool,
    #[command(flatten)]
    pub probes: TargetArgs,
}
