//! `tsm-trace`: the command line. See `tsm-trace --help`.

#[cfg(test)]
mod cli_tests;
mod generate;
mod logger;
mod verdict;

use std::{
    fs::File,
    io::{BufReader, BufWriter, Write},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tsm_trace::{
    btf::BtfSources,
    cli::parse,
    correlate,
    event_loop::{self, Batch, LateAttach, LoopOptions, Reconcile, Stop, publish_session},
    events::{Probe, record},
    exporters::{
        metrics::Metrics,
        trace::{Clock, Filters},
    },
    http::{self, HttpState, Readiness},
    pipeline::{self, Pipeline, ReplayOptions, TraceFormat, TraceSink},
    probes::AttachConfig,
    session::{LiveSession, Session, SessionOptions},
};

const ABOUT: &str = "See TEE device assignment on confidential-VM hosts: TSM bind latency, \
failures by layer and errno, and bindings left behind.";

const AFTER_HELP: &str = "\
Examples:
  tsm-trace doctor                         can this host run tsm-trace, what will it see
  tsm-trace check                          which probes attach here, and why not
  tsm-trace trace --failed                 failed binds/unbinds as they happen
  tsm-trace trace --json --record cap.jsonl --duration 10m
  tsm-trace replay cap.jsonl --metrics     the same report from a capture, no kernel needed
  tsm-trace run                            the daemon: http://0.0.0.0:9477/metrics";

#[derive(Parser)]
#[command(name = "tsm-trace", version, about = ABOUT, after_help = AFTER_HELP)]
struct Cli {
    /// Log level: off, error, warn, info, debug, trace.
    #[arg(long, global = true, env = "TSM_TRACE_LOG", default_value = "info", value_parser = parse::level)]
    log_level: log::LevelFilter,
    /// Log format (logs go to stderr).
    #[arg(long, global = true, env = "TSM_TRACE_LOG_FORMAT", value_enum, default_value_t = logger::Format::Text)]
    log_format: logger::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: Prometheus metrics, health, readiness and a JSON view of bindings.
    #[command(after_long_help = verdict::EXIT_STATUS)]
    Run(RunArgs),
    /// Print each TSM operation as it completes, with a summary on exit (kernel bring-up).
    #[command(after_long_help = verdict::EXIT_STATUS)]
    Trace(TraceArgs),
    /// Run a capture (`trace --record`) through the correlator and print the same report.
    Replay(ReplayArgs),
    /// Resolve BTF, attach every probe, print what attached (and why not), and exit.
    #[command(long_about = verdict::CHECK_LONG_ABOUT)]
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
struct UnpinArgs {
    /// The pin directory `run` used.
    #[arg(long, value_name = "DIR", env = "TSM_TRACE_PIN_DIR", default_value = tsm_trace::probes::pin::DEFAULT_ROOT)]
    pin_dir: PathBuf,
    /// The state file `run` used (removed only if it is a tsm-trace state file).
    #[arg(long, value_name = "FILE", env = "TSM_TRACE_STATE_FILE", default_value = tsm_trace::correlate::state::DEFAULT_PATH, value_parser = parse::state_file)]
    state_file: PathBuf,
    /// Print what would be removed, and remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Remove the pins even while a daemon holds them (its probes stop; it keeps running blind).
    #[arg(long)]
    force: bool,
}

/// Which probes to attach and where kernel facts come from (`run`, `trace`).
#[derive(Args, Clone)]
#[command(next_help_heading = "Probes")]
struct ProbeArgs {
    /// Fail if any requested probe cannot attach (default: report it and keep going).
    #[arg(long, env = "TSM_TRACE_STRICT", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    strict: bool,
    #[command(flatten)]
    target: TargetArgs,
    /// A probed call still waiting for its return after this long is taken as one whose
    /// return will never come (its kretprobe missed): its entry is removed and counted in
    /// tsm_trace_inflight_expired_total{reason="timeout"}. Entries of exited threads go at
    /// the next sweep (every 5 s) whatever this says. Longer than the slowest TSM firmware
    /// call you expect.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse::duration, allow_hyphen_values = true, env = "TSM_TRACE_INFLIGHT_TIMEOUT")]
    inflight_timeout: Duration,
    /// The secret key that names VMs without their kernel address (`vm#…`, a keyed hash of
    /// the `struct kvm` pointer): created 0600 if missing, shared by every tsm-trace of the
    /// boot (/run is a tmpfs). If it cannot be stored, a key in memory is used and names
    /// change when tsm-trace restarts.
    #[arg(long, value_name = "FILE", env = "TSM_TRACE_VM_KEY", default_value = tsm_trace::events::vm_key::DEFAULT_PATH, value_parser = parse::state_file)]
    vm_key: PathBuf,
}

/// Which probes there are and where kernel facts come from (every command that looks at the
/// kernel: `run`, `trace`, `check`, `doctor`).
#[derive(Args, Clone)]
#[command(next_help_heading = "Probes")]
struct TargetArgs {
    /// Probe this function as the TSM driver's link `probe` op (layer tsm_driver). Needed
    /// only for drivers tsm-trace does not know (it knows AMD SEV-TIO, Arm CCA and Intel TDX
    /// Connect); the function's BTF prototype must match the op's.
    #[arg(long, value_name = "SYMBOL", env = "TSM_TRACE_DRIVER_PROBE", value_parser = parse::function)]
    driver_probe: Option<String>,
    /// The TSM driver's `connect` op (SPDM session, IDE set-up).
    #[arg(long, value_name = "SYMBOL", env = "TSM_TRACE_DRIVER_CONNECT", value_parser = parse::function)]
    driver_connect: Option<String>,
    /// The TSM driver's `disconnect` op.
    #[arg(long, value_name = "SYMBOL", env = "TSM_TRACE_DRIVER_DISCONNECT", value_parser = parse::function)]
    driver_disconnect: Option<String>,
    /// The TSM driver's `bind` op (e.g. a driver's `.bind` function).
    #[arg(long, value_name = "SYMBOL", env = "TSM_TRACE_DRIVER_BIND", value_parser = parse::function)]
    driver_bind: Option<String>,
    /// The TSM driver's `unbind` op.
    #[arg(long, value_name = "SYMBOL", env = "TSM_TRACE_DRIVER_UNBIND", value_parser = parse::function)]
    driver_unbind: Option<String>,
    /// The TSM driver's `guest_req` op (TDISP requests from the guest).
    #[arg(long, value_name = "SYMBOL", env = "TSM_TRACE_DRIVER_GUEST_REQ", value_parser = parse::function)]
    driver_guest_req: Option<String>,
    /// Do not attach this probe (repeatable; the variable takes a comma-separated list):
    /// tsm_op_ioctl, tsm_bind, tsm_unbind, vdevice_abort, pci_tsm_bind, pci_tsm_unbind,
    /// connect, disconnect, pci_tsm_disconnect, pci_tsm_unbind_any, pci_tsm_destroy,
    /// pci_tsm_guest_req, driver_* ops, kvm_destroy_vm, vmm_exit.
    #[arg(long, value_name = "PROBE", env = "TSM_TRACE_DISABLE", value_delimiter = ',', value_parser = parse::probe)]
    disable: Vec<Probe>,
    /// Attach PROBE to FUNCTION instead of its usual function (same prototype), for renamed
    /// functions: e.g. --symbol tsm_bind=my_tsm_bind, for names no compatibility table knows
    /// (repeatable; the variable takes a comma-separated list).
    #[arg(long, value_name = "PROBE=FUNCTION", env = "TSM_TRACE_SYMBOL", value_delimiter = ',', value_parser = parse::symbol)]
    symbol: Vec<(Probe, String)>,
    /// vmlinux BTF.
    #[arg(
        long,
        value_name = "PATH",
        env = "TSM_TRACE_BTF",
        default_value = "/sys/kernel/btf/vmlinux"
    )]
    btf: PathBuf,
    /// Directory of module split BTF (every file but vmlinux).
    #[arg(
        long,
        value_name = "DIR",
        env = "TSM_TRACE_BTF_MODULES",
        default_value = "/sys/kernel/btf"
    )]
    btf_modules: PathBuf,
    /// Symbol table used to find probe targets.
    #[arg(
        long,
        value_name = "PATH",
        env = "TSM_TRACE_KALLSYMS",
        default_value = "/proc/kallsyms"
    )]
    kallsyms: PathBuf,
    /// Ring buffer size in bytes (a power of two, multiple of the page size). Cost: this much
    /// locked kernel memory. Benefit: per-event detail (trace lines, --print, binding and leak
    /// correlation) survives bursts: each record is 232 bytes and an operation takes one per
    /// probed call (about 4), so the default holds about 280 operations in flight to
    /// userspace. /metrics counts stay exact whatever the size (counted in the kernel).
    #[arg(long, value_name = "BYTES", env = "TSM_TRACE_RINGBUF_SIZE", default_value_t = 256 * 1024, value_parser = parse::ringbuf)]
    ringbuf_size: u32,
}

/// How events become operations, bindings and leaks.
#[derive(Args, Clone)]
#[command(next_help_heading = "Correlation")]
struct CorrelateArgs {
    /// After a VM is destroyed or its VMM exits, how long its devices may stay bound before
    /// that is reported as a leak (teardown order varies).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse::duration, allow_hyphen_values = true, env = "TSM_TRACE_GRACE")]
    grace: Duration,
    /// Most bindings tracked at once (memory stays bounded whatever the event stream does).
    #[arg(long, value_name = "N", env = "TSM_TRACE_MAX_BINDINGS", default_value = "65536", value_parser = parse::max_bindings)]
    max_bindings: usize,
}

impl CorrelateArgs {
    fn config(&self) -> correlate::Config {
        correlate::Config {
            leak_grace_ns: self.grace.as_nanos() as u64,
            max_bindings: self.max_bindings,
            ..correlate::Config::default()
        }
    }
}

#[derive(Args, Clone)]
#[command(next_help_heading = "Output")]
struct FilterArgs {
    /// Only this device (PCI BDF, e.g. 0000:01:00.0).
    #[arg(long, value_name = "BDF", value_parser = parse::bdf)]
    device: Option<String>,
    /// Only this VM: `kvm-<pid>` (its stats_id), the VMM pid, or its `vm#…` name (kernel
    /// addresses are never shown, so `0x…` pointers are refused).
    #[arg(long, value_name = "VM", value_parser = parse::vm)]
    vm: Option<tsm_trace::events::VmSelector>,
    /// Only failures (and leaks).
    #[arg(long)]
    failed: bool,
    /// JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// How text lines show time: `wall` (local wall-clock time; replay: the capture's own,
    /// where it recorded the clock), `boot` (seconds since boot, as dmesg prints them), or
    /// `relative` (seconds since the first event). JSON lines carry `*_ns` (since boot) and,
    /// where the wall clock is known, `time` (RFC 3339, UTC).
    #[arg(long, value_enum, value_name = "CLOCK")]
    time: Option<TimeFormat>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TimeFormat {
    Wall,
    Boot,
    Relative,
}

impl FilterArgs {
    fn filters(&self) -> Filters {
        Filters {
            device: self.device.clone(),
            vm: self.vm,
            failures_only: self.failed,
        }
    }

    fn format(&self) -> TraceFormat {
        if self.json {
            TraceFormat::Json
        } else {
            TraceFormat::Text
        }
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    probes: ProbeArgs,
    #[command(flatten)]
    correlate: CorrelateArgs,
    /// Address for /metrics, /healthz, /readyz and /bindings.
    #[arg(
        long,
        value_name = "ADDR",
        env = "TSM_TRACE_LISTEN",
        default_value = "0.0.0.0:9477",
        value_parser = parse::listen,
        help_heading = "Daemon"
    )]
    listen: SocketAddr,
    #[command(flatten)]
    web: WebArgs,
    /// How often to compare the binding table with sysfs (`tsm/bound`); 0 disables it.
    #[arg(long, value_name = "DURATION", env = "TSM_TRACE_RECONCILE_INTERVAL", default_value = "60s", value_parser = parse::duration, allow_hyphen_values = true, help_heading = "Daemon")]
    reconcile_interval: Duration,
    /// sysfs root (tests point this at a fake tree).
    #[arg(
        long,
        value_name = "DIR",
        env = "TSM_TRACE_SYSFS_ROOT",
        default_value = "/sys",
        help_heading = "Daemon"
    )]
    sysfs_root: PathBuf,
    /// Keep all capabilities after the probes are attached (default: keep only CAP_BPF for
    /// reading the maps, plus what attaching later needs during --late-attach-window).
    #[arg(long, env = "TSM_TRACE_KEEP_CAPABILITIES", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Daemon")]
    keep_capabilities: bool,
    /// After attaching, become this user: UID, UID:GID or a name from /etc/passwd (e.g.
    /// 65534:65534). Needs CAP_SETUID and CAP_SETGID at start; they are dropped with the rest.
    #[arg(long, value_name = "USER", env = "TSM_TRACE_USER", value_parser = parse::user, help_heading = "Daemon")]
    user: Option<(u32, u32)>,
    /// How long requested probes that did not attach may still attach when their module
    /// loads (iommufd.ko, kvm.ko, a TSM driver). Nothing waits for a function kallsyms shows
    /// built in, nor on a kernel without module support (no /proc/modules). Attaching needs CAP_PERFMON, CAP_SYSLOG (and
    /// CAP_SYS_ADMIN where kernel.perf_event_paranoid=3): they are kept that long, then
    /// dropped for good (restart tsm-trace after loading a module later). 0s: never wait.
    #[arg(long, value_name = "DURATION", env = "TSM_TRACE_LATE_ATTACH_WINDOW", default_value = "10m", value_parser = parse::duration, allow_hyphen_values = true, help_heading = "Daemon")]
    late_attach_window: Duration,
    /// Also print every operation and leak to stdout (as `trace` would).
    #[arg(long, value_enum, env = "TSM_TRACE_PRINT", help_heading = "Daemon")]
    print: Option<PrintFormat>,
    /// Where the probes, the ring buffer, the in-flight calls, the VMM table and the kernel
    /// counters are pinned (bpffs), so that they keep running and counting while the daemon
    /// restarts or upgrades: nothing that happens meanwhile is lost. `tsm-trace unpin`
    /// removes them.
    #[arg(long, value_name = "DIR", env = "TSM_TRACE_PIN_DIR", default_value = tsm_trace::probes::pin::DEFAULT_ROOT, help_heading = "Restarts")]
    pin_dir: PathBuf,
    /// Keep nothing across restarts: pin nothing (the probes go when the daemon exits) and
    /// neither read nor write the state file. A restart then forgets bindings made before it
    /// (sysfs reconciliation reports those devices as `sysfs_bound_without_owner`), in-flight
    /// calls and whatever happened while it was down. For tests and one-off runs.
    #[arg(long, env = "TSM_TRACE_NO_PERSIST", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Restarts")]
    no_persist: bool,
    /// The binding and leak tables, saved whenever they change and read at start, so a restart
    /// neither forgets a binding (no false `sysfs_bound_without_owner`) nor drops a leak. Keep
    /// it on a tmpfs such as /run: bindings do not survive a reboot.
    #[arg(long, value_name = "FILE", env = "TSM_TRACE_STATE_FILE", default_value = tsm_trace::correlate::state::DEFAULT_PATH, value_parser = parse::state_file, help_heading = "Restarts")]
    state_file: PathBuf,
}

/// TLS, auth and the limits of the HTTP server.
#[derive(Args)]
#[command(next_help_heading = "Web")]
struct WebArgs {
    /// TLS and basic auth, in the format of the Prometheus exporter-toolkit web config
    /// (`tls_server_config.cert_file/key_file/client_ca_file`, `basic_auth_users` with
    /// bcrypt hashes). Default: plain HTTP without auth.
    #[arg(
        long = "web.config.file",
        value_name = "FILE",
        env = "TSM_TRACE_WEB_CONFIG_FILE"
    )]
    web_config_file: Option<PathBuf>,
    /// Most HTTP connections open at once; at the cap the longest-idle one is closed.
    #[arg(long = "web.max-connections", value_name = "N", env = "TSM_TRACE_WEB_MAX_CONNECTIONS", default_value = "512", value_parser = parse::max_connections)]
    max_connections: usize,
    /// Time for a client to send a request header (and finish a TLS handshake), also between
    /// requests on a kept-alive connection.
    #[arg(long = "web.header-timeout", value_name = "DURATION", env = "TSM_TRACE_WEB_HEADER_TIMEOUT", default_value = "10s", value_parser = parse::timeout, allow_hyphen_values = true)]
    header_timeout: Duration,
    /// Time to answer one request, until its last byte is written.
    #[arg(long = "web.request-timeout", value_name = "DURATION", env = "TSM_TRACE_WEB_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse::timeout, allow_hyphen_values = true)]
    request_timeout: Duration,
}

impl WebArgs {
    fn limits(&self) -> http::Limits {
        http::Limits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_timeout,
            request_timeout: self.request_timeout,
            ..http::Limits::default()
        }
    }

    fn config(&self) -> Result<http::WebConfig> {
        match &self.web_config_file {
            None => Ok(http::WebConfig::default()),
            Some(p) => http::WebConfig::load(p).map_err(anyhow::Error::msg),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum PrintFormat {
    Text,
    Json,
}

#[derive(Args)]
struct TraceArgs {
    #[command(flatten)]
    probes: ProbeArgs,
    #[command(flatten)]
    correlate: CorrelateArgs,
    #[command(flatten)]
    filter: FilterArgs,
    /// Stop after this long (e.g. 30s, 10m); default: until Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = parse::duration, allow_hyphen_values = true, help_heading = "Session")]
    duration: Option<Duration>,
    /// Also write every raw event to FILE, for `tsm-trace replay` (created 0600; never
    /// through a symlink; an existing FILE is kept unless --force).
    #[arg(long, value_name = "FILE", help_heading = "Session")]
    record: Option<PathBuf>,
    /// Let --record overwrite an existing file.
    #[arg(long, requires = "record", help_heading = "Session")]
    force: bool,
    /// Do not print the summary on exit.
    #[arg(long, help_heading = "Session")]
    no_summary: bool,
}

#[derive(Args)]
struct ReplayArgs {
    /// A capture written by `tsm-trace trace --record`.
    file: PathBuf,
    #[command(flatten)]
    correlate: CorrelateArgs,
    #[command(flatten)]
    filter: FilterArgs,
    /// Print only the Prometheus exposition the daemon would serve after this capture (no
    /// trace lines, no summary), e.g. for `promtool check metrics`.
    #[arg(long, conflicts_with = "json")]
    metrics: bool,
    /// Do not print the summary after the trace lines (`--json` prints none).
    #[arg(long)]
    no_summary: bool,
}

#[derive(Args)]
struct DoctorArgs {
    #[command(flatten)]
    probes: TargetArgs,
    /// The pin directory `run` would use (its bpffs mount is checked).
    #[arg(long, value_name = "DIR", env = "TSM_TRACE_PIN_DIR", default_value = tsm_trace::probes::pin::DEFAULT_ROOT)]
    pin_dir: PathBuf,
    /// One JSON object instead of text: verdict, exit_code and the findings.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CheckArgs {
    /// Fail if any requested probe cannot attach (default: report it and keep going).
    #[arg(long, env = "TSM_TRACE_STRICT", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Probes")]
    strict: bool,
    #[command(flatten)]
    probes: TargetArgs,
}

impl ProbeArgs {
    fn session_options(&self) -> SessionOptions {
        self.target.session_options(self.strict)
    }
}

impl TargetArgs {
    fn session_options(&self, strict: bool) -> SessionOptions {
        SessionOptions {
            attach: AttachConfig {
                strict,
                driver_ops: [
                    (Probe::DriverProbe, &self.driver_probe),
                    (Probe::DriverConnect, &self.driver_connect),
                    (Probe::DriverDisconnect, &self.driver_disconnect),
                    (Probe::DriverBind, &self.driver_bind),
                    (Probe::DriverUnbind, &self.driver_unbind),
                    (Probe::DriverGuestReq, &self.driver_guest_req),
                ]
                .into_iter()
                .filter_map(|(p, f)| f.clone().map(|f| (p, f)))
                .collect(),
                disabled: self.disable.clone(),
                symbols: self.symbol.clone(),
                no_modules: !tsm_trace::probes::modules_supported(std::path::Path::new("/proc")),
            },
            btf: BtfSources {
                vmlinux: self.btf.clone(),
                modules_dir: self.btf_modules.clone(),
            },
            kallsyms: self.kallsyms.clone(),
            ringbuf_bytes: Some(self.ringbuf_size),
            pin_root: None,
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let log_format = cli.log_format;
    logger::init(cli.log_level, log_format);
    warn_unknown_env();
    let result = match cli.command {
        Command::Replay(args) => replay(args),
        Command::Check(args) => check(args),
        Command::Doctor(args) => doctor(args).map(|code| std::process::exit(code)),
        Command::Generate { dir } => generate::run(<Cli as clap::CommandFactory>::command(), &dir),
        Command::Unpin(args) => unpin(args),
        Command::Run(args) => runtime().and_then(|rt| rt.block_on(run(args))),
        Command::Trace(args) => runtime().and_then(|rt| rt.block_on(trace(args))),
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

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn unpin(args: UnpinArgs) -> Result<()> {
    use tsm_trace::probes::unpin;
    let root = &args.pin_dir;
    // The lock first: a daemon that starts meanwhile waits for it (or refuses to start).
    let _lock = unpin::lock(root, args.force)?;
    let plan = unpin::plan(root)?;
    let state = tsm_trace::correlate::state::check_removable(&args.state_file)?;
    let mut out = std::io::stdout().lock();
    if args.dry_run {
        for p in &plan.pins {
            writeln!(out, "would remove {}", p.describe())?;
        }
        for d in &plan.dirs {
            writeln!(out, "would remove {}/", d.display())?;
        }
        if state {
            writeln!(out, "would remove {}", args.state_file.display())?;
        }
        if plan.is_empty() && !state {
            writeln!(
                out,
                "nothing pinned under {} and no state file at {}",
                root.display(),
                args.state_file.display()
            )?;
        }
        return Ok(());
    }
    let n = unpin::remove(&plan)?;
    let state = if state {
        std::fs::remove_file(&args.state_file)
            .with_context(|| format!("removing {}", args.state_file.display()))?;
        format!("removed {}", args.state_file.display())
    } else {
        format!("no state file at {}", args.state_file.display())
    };
    if plan.is_empty() {
        writeln!(out, "nothing pinned under {}; {state}", root.display())?;
    } else if n == 0 {
        writeln!(
            out,
            "nothing pinned under {} (its empty directories are removed); {state}",
            root.display()
        )?;
    } else {
        writeln!(
            out,
            "removed {n} pinned maps and links under {} (their probes are detached); {state}",
            root.display()
        )?;
    }
    Ok(())
}

/// Puts the saved binding and leak tables back into the pipeline, and says what happened.
fn restore_state(pipeline: &Mutex<Pipeline>, path: &std::path::Path, boot_id: &str) {
    use tsm_trace::correlate::state::{self, Missing};
    match state::load(path, boot_id) {
        Ok(Ok(saved)) => {
            let (b, l) = pipeline.lock().expect("pipeline lock").restore(saved);
            log::info!(
                "restored {b} bindings and {l} open leaks from {} (saved by the previous run of this boot)",
                path.display()
            );
        }
        Ok(Err(Missing::NoFile)) => {
            log::debug!(
                "no state file at {}: starting with empty tables",
                path.display()
            )
        }
        Ok(Err(Missing::OtherBoot)) => log::info!(
            "{} was written in an earlier boot: its bindings are gone; starting with empty tables",
            path.display()
        ),
        Err(e) => log::error!("{}", tsm_trace::probes::chain(&e)),
    }
}

fn start_session(probes: &ProbeArgs, pin_root: Option<PathBuf>) -> Result<LiveSession> {
    let (key, source) = tsm_trace::events::vm_key::load_or_create(&probes.vm_key)
        .context("the VM-name key (--vm-key)")?;
    match source {
        tsm_trace::events::vm_key::KeySource::InMemory { .. } => {
            log::info!("{}", source.describe())
        }
        _ => log::debug!("{}", source.describe()),
    }
    let mut opts = probes.session_options();
    opts.pin_root = pin_root;
    let live = LiveSession::start(&opts, key)?;
    tsm_trace::probes::others::warn_if_any(opts.pin_root.as_deref());
    // Probe lines carry their facts as fields too (JSON logs); they come in report order.
    let mut reports = live.session().attach.iter();
    for line in live.session().report_lines() {
        let report = if line.starts_with("probe ") {
            reports.next()
        } else {
            None
        };
        match report {
            Some(r) => log::info!(
                probe = r.probe.as_str(),
                kind = r.kind.as_str(),
                function = r.function.as_str(),
                attached = r.attached,
                requested = r.requested,
                reason = r.reason.as_deref().unwrap_or("");
                "{line}"
            ),
            None => log::info!("{line}"),
        }
    }
    if let Some(p) = &live.session().pinned {
        let h = &p.handover;
        match p.previous {
            Some(g) => log::info!(
                "took over from the pinned programs of generation {g} (they kept running while no daemon ran; what they saw is read now): now generation {}, pinned in {}{}",
                p.generation,
                p.dir.display(),
                if h.old_links > 0 {
                    format!(", {} old links removed", h.old_links)
                } else {
                    String::new()
                }
            ),
            None => log::info!(
                "probes and state pinned in {} (generation {}): they keep running across restarts; `tsm-trace unpin` removes them",
                p.dir.display(),
                p.generation
            ),
        }
        for l in &h.other_layouts {
            log::warn!(
                "removed the pinned state of layout {l} (another tsm-trace version's record layout): events it had not delivered are lost; the binding table comes from the state file"
            );
        }
        for l in &h.left_alone {
            log::warn!(
                "left alone in the pin directory: {l}; check --pin-dir (tsm-trace's own directory holds only what it pinned)"
            );
        }
    }
    Ok(live)
}

/// Keeps CAP_BPF (map reads) and, while requested probes may still attach (`waiting`), what
/// attaching them needs; drops everything else.
fn drop_capabilities(live: &LiveSession, waiting: bool, window: Duration) {
    use tsm_trace::probes::capabilities;
    let keep = capabilities::to_keep(waiting);
    let names = capabilities::names(&keep);
    let why = if waiting {
        format!(
            "{} requested probes may still attach when their module loads, for --late-attach-window {}",
            live.missing(),
            tsm_trace::exporters::trace::fmt_duration(window.as_nanos() as u64)
        )
    } else if live.missing() > 0 {
        format!(
            "{} requested probes are not attached and will not be (--late-attach-window 0s)",
            live.missing()
        )
    } else {
        "all requested probes attached".to_string()
    };
    match capabilities::drop_all_but(&keep) {
        Ok(()) => log::info!(
            "dropped all capabilities but {} ({why}; --keep-capabilities keeps them all)",
            names.join(", ")
        ),
        Err(e) => log::warn!("could not drop capabilities: {e}; continuing with them"),
    }
}

/// `--user`: the pin directory and the state directory, written after the switch, become
/// that user's (`probes/ownership.rs`). What cannot be handed over is said, with its cost.
fn hand_over_files(args: &RunArgs, s: &tsm_trace::session::Session, uid: u32, gid: u32) {
    use tsm_trace::probes::ownership;
    if let Some(p) = &s.pinned
        && let Err(e) = ownership::give_tree(&args.pin_dir, uid, gid)
    {
        log::warn!(
            "--user: could not hand {} to uid {uid}: {e}; probes that attach later cannot be pinned, and the next start must run as root to take over (dir {})",
            args.pin_dir.display(),
            p.dir.display()
        );
    }
    if args.no_persist {
        return;
    }
    match ownership::own_state_dir(&args.state_file) {
        Some(dir) => {
            if let Err(e) = std::fs::create_dir_all(dir)
                .and_then(|()| ownership::give_tree(dir, uid, gid).map(drop))
            {
                log::warn!(
                    "--user: could not hand {} to uid {uid}: {e}; the binding table will not be saved (a restart then reports bound devices as sysfs_bound_without_owner)",
                    dir.display()
                );
            }
        }
        None => log::warn!(
            "--user: {} is not in a directory of tsm-trace's own (named tsm-trace), so it is left as it is; if uid {uid} cannot write there, the binding table will not be saved",
            args.state_file.display()
        ),
    }
}

/// `--user`, started as root again: what the previous run handed to the user is taken back
/// before the key, the pins and the state are opened (`probes/ownership.rs`).
fn take_back_files(args: &RunArgs) {
    use tsm_trace::probes::ownership;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let mut dirs: Vec<&std::path::Path> = Vec::new();
    if !args.no_persist {
        dirs.push(&args.pin_dir);
        dirs.extend(ownership::own_state_dir(&args.state_file));
    }
    dirs.extend(ownership::own_state_dir(&args.probes.vm_key));
    dirs.dedup();
    for e in ownership::take_back(&dirs) {
        log::warn!("--user: could not take back what the previous run was given: {e}");
    }
}

/// `--user`: becomes that user (before capabilities are reduced).
fn switch_user(uid: u32, gid: u32, keep_all: bool) -> Result<()> {
    use tsm_trace::probes::capabilities;
    capabilities::switch_user(uid, gid).with_context(|| {
        format!("--user {uid}:{gid}: switching user (needs CAP_SETUID and CAP_SETGID at start)")
    })?;
    if keep_all {
        // Effective again: the switch cleared it, permitted was kept.
        capabilities::raise_permitted().context("--user: restoring capabilities")?;
    }
    log::info!("now running as uid {uid}, gid {gid}");
    Ok(())
}

async fn run(args: RunArgs) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    let readiness = Readiness::default();
    readiness.set_not_ready("probes are being attached");
    // The web config is checked before anything is attached: a wrong file fails fast.
    let web = args.web.config()?;
    verdict::warn_sysfs_root(&args.sysfs_root, args.reconcile_interval);
    metrics.set_reconcile_interval(args.reconcile_interval);
    let mut facts = verdict::preflight(&args.probes.session_options(), &args.pin_dir)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "listening on {} (use --listen to pick another address)",
                args.listen
            )
        })?;
    if args.user.is_some() {
        take_back_files(&args);
    }
    let mut live = start_session(
        &args.probes,
        (!args.no_persist).then(|| args.pin_dir.clone()),
    )?;
    publish_session(&metrics, live.session());
    // /metrics counts operations from the kernel's exact aggregation, read on every scrape.
    if let Some(agg) = live.session_mut().take_aggregates() {
        metrics.use_kernel_aggregation(Box::new(move || agg.read()));
    }
    let waiting = live.missing() > 0 && !args.late_attach_window.is_zero();
    if let Some((uid, gid)) = args.user {
        hand_over_files(&args, live.session(), uid, gid);
        switch_user(uid, gid, args.keep_capabilities)?;
    }
    if !args.keep_capabilities {
        drop_capabilities(&live, waiting, args.late_attach_window);
    }
    if let Some(why) = verdict::bind_path_gap(&mut facts, live.session()) {
        log::warn!("{why}");
    }
    // Ready or degraded (docs/metrics.md, "Readiness"): the event loop sets it once it runs.
    if let tsm_trace::doctor::Coverage::Degraded(why) =
        tsm_trace::doctor::coverage(&live.session().attach)
    {
        log::warn!("/readyz will say degraded: {why}");
    }
    let cfg = args.correlate.config();
    let sink = args.print.map(|f| {
        TraceSink::new(
            Box::new(std::io::stdout()),
            match f {
                PrintFormat::Text => TraceFormat::Text,
                PrintFormat::Json => TraceFormat::Json,
            },
            Filters::default(),
            Clock::wall_now(),
        )
    });
    let pipeline = Arc::new(Mutex::new(Pipeline::new(
        cfg.clone(),
        metrics.clone(),
        sink,
    )));
    let boot_id = tsm_trace::correlate::state::boot_id();
    if !args.no_persist {
        restore_state(&pipeline, &args.state_file, &boot_id);
    }
    let state = HttpState::new(pipeline.clone(), readiness.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let scheme = if web.tls.is_some() { "https" } else { "http" };
    let auth = if web.basic_auth.is_some() {
        ", basic auth"
    } else {
        ""
    };
    let limits = args.web.limits();
    let grace = limits.shutdown_grace;
    let server = tokio::spawn(http::serve_with(listener, state, web, limits, async move {
        let _ = stop_rx.await;
    }));
    log::info!(
        "serving {scheme}://{}/metrics{auth} ({} programs attached); Ctrl-C or SIGTERM stops",
        args.listen,
        live.session().attached_count()
    );

    let opts = LoopOptions {
        reconcile: Some(Reconcile {
            root: args.sysfs_root.clone(),
            every: (!args.reconcile_interval.is_zero()).then_some(args.reconcile_interval),
        }),
        end: None,
        late_attach: waiting.then(|| LateAttach {
            until: tokio::time::Instant::now() + args.late_attach_window,
            drop_capabilities: !args.keep_capabilities,
        }),
        state: (!args.no_persist).then(|| event_loop::StateFile {
            path: args.state_file.clone(),
            boot_id,
        }),
        inflight_timeout: args.probes.inflight_timeout,
        readiness: Some(readiness.clone()),
    };
    let stop = event_loop::run(&mut live, &pipeline, &metrics, &cfg, &opts, None).await?;
    if let Stop::Signal(sig) = stop {
        let pinned = live.session().pinned_at();
        log::info!("{}", tsm_trace::notices::stop_message(sig, pinned));
    }
    // Detach first (pinned programs stay for the next daemon): whatever the HTTP clients do,
    // this process's probes are gone at once.
    readiness.set_not_ready("shutting down");
    drop(live);
    let _ = stop_tx.send(());
    // The server returns within its grace; the margin covers a stalled runtime.
    match tokio::time::timeout(grace + Duration::from_millis(500), server).await {
        Ok(r) => r
            .context("the HTTP server task")?
            .context("the HTTP server")?,
        Err(_) => log::warn!("the HTTP server did not stop in time; exiting anyway"),
    }
    Ok(())
}

async fn trace(args: TraceArgs) -> Result<()> {
    let mut facts = verdict::preflight(
        &args.probes.session_options(),
        std::path::Path::new(tsm_trace::probes::pin::DEFAULT_ROOT),
    )?;
    // The capture file next: a wrong path is reported before anything is attached.
    let mut recorder = match &args.record {
        Some(path) => {
            let f = tsm_trace::files::create_private(path, args.force)
                .with_context(|| format!("--record {}", path.display()))?;
            Some(record::Writer::new(BufWriter::new(f), &kernel_release())?)
        }
        None => None,
    };
    let mut live = start_session(&args.probes, None)?;
    if let Some(why) = verdict::bind_path_gap(&mut facts, live.session()) {
        let later = if live.missing() > 0 {
            " (until a module brings one)"
        } else {
            ""
        };
        log::warn!("{why}; nothing to trace{later}");
    }
    let metrics = Arc::new(Metrics::new());
    publish_session(&metrics, live.session());
    let cfg = args.correlate.config();
    let offset = tsm_trace::clock::realtime_offset_ns();
    let clock = match args.filter.time {
        None | Some(TimeFormat::Wall) => Clock::wall(offset),
        Some(TimeFormat::Boot) => Clock::Boot,
        Some(TimeFormat::Relative) => Clock::Relative {
            base_ns: tsm_trace::clock::monotonic_ns(),
        },
    };
    let mut sink = TraceSink::new(
        Box::new(std::io::stdout()),
        args.filter.format(),
        args.filter.filters(),
        clock,
    );
    sink.realtime_offset_ns = Some(offset);
    let pipeline = Mutex::new(Pipeline::new(cfg.clone(), metrics.clone(), Some(sink)));
    eprintln!(
        "tsm-trace: tracing with {} programs attached{}; Ctrl-C stops",
        live.session().attached_count(),
        args.duration
            .map(|d| format!(
                " for {}",
                tsm_trace::exporters::trace::fmt_duration(d.as_nanos() as u64)
            ))
            .unwrap_or_default()
    );
    let mut record = |batch: &Batch| -> Result<()> {
        if let Some(w) = recorder.as_mut() {
            for ev in batch.iter().flatten() {
                w.write(ev).context("writing the record file")?;
            }
            w.flush().context("writing the record file")?;
        }
        Ok(())
    };
    let opts = LoopOptions {
        reconcile: None,
        end: args.duration.map(|d| tokio::time::Instant::now() + d),
        // An interactive trace keeps its privileges and attaches whenever a module loads.
        late_attach: None,
        state: None,
        inflight_timeout: args.probes.inflight_timeout,
        readiness: None,
    };
    event_loop::run(
        &mut live,
        &pipeline,
        &metrics,
        &cfg,
        &opts,
        Some(&mut record),
    )
    .await?;
    // Take what is already in the ring buffer, then close open frames.
    event_loop::drain(&mut live, &pipeline, &metrics, Some(&mut record))?;
    let mut p = pipeline.into_inner().expect("pipeline lock");
    p.finish(event_loop::monotonic_ns());
    if let Some(s) = p.sink_mut() {
        s.flush();
    }
    event_loop::housekeeping(&mut live, &metrics, args.probes.inflight_timeout);
    let k = live.kernel_stats().unwrap_or_default();
    if !args.no_summary {
        let mut err = std::io::stderr().lock();
        let counted = event_loop::kernel_operations(&mut live);
        writeln!(err, "{}", p.render_summary_counted(counted.as_ref()))?;
        writeln!(
            err,
            "lost events: {} (ring buffer full), {} (in-flight table full), {} returns without entry, {} returns never seen; {} kernel read faults",
            k.ringbuf_drops, k.inflight_full, k.orphan_returns, k.returns_missed, k.read_faults
        )?;
        use tsm_trace::probes::misses;
        let programs = live.session().kernel_misses().unwrap_or_default();
        let (kprobe, recursion) = misses::totals(&programs);
        writeln!(
            err,
            "kernel misses: {} (kprobe{}), {} (BPF recursion)",
            kprobe,
            misses::kprobe_remark(
                misses::kprobe_reporting(&programs),
                tsm_trace::doctor::kernel_version(&facts)
            ),
            recursion
        )?;
    }
    Ok(())
}

fn replay(args: ReplayArgs) -> Result<()> {
    let path = args.file.display().to_string();
    let f = File::open(&args.file).with_context(|| format!("opening {path}"))?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    if size > tsm_trace::files::cap::RECORD {
        bail!(tsm_trace::files::too_large(
            &args.file,
            tsm_trace::files::cap::RECORD
        ));
    }
    let capture = record::read_capture(BufReader::new(f), &path)?;
    if let Some(t) = &capture.torn {
        log::warn!("{}", t.warning(&path));
    }
    // `replay` writes everything once: trace lines and summary, or the exposition alone.
    let offset = capture.header.realtime_offset_ns;
    let clock = match (args.filter.time, offset) {
        (None | Some(TimeFormat::Wall), Some(off)) => Some(Clock::wall(off)),
        (Some(TimeFormat::Wall), None) => {
            log::warn!(
                "{path} does not record the wall clock (written by an older tsm-trace): times are seconds since its first event"
            );
            None
        }
        (Some(TimeFormat::Boot), _) => Some(Clock::Boot),
        (None | Some(TimeFormat::Relative), _) => None,
    };
    pipeline::replay(
        capture.events,
        &ReplayOptions {
            config: args.correlate.config(),
            format: args.filter.format(),
            filters: args.filter.filters(),
            clock,
            realtime_offset_ns: offset,
            summary: !args.no_summary,
            metrics: args.metrics,
        },
        Box::new(std::io::stdout()),
    )?;
    Ok(())
}

fn check(args: CheckArgs) -> Result<()> {
    let opts = args.probes.session_options(args.strict);
    let mut facts = verdict::preflight(
        &opts,
        std::path::Path::new(tsm_trace::probes::pin::DEFAULT_ROOT),
    )?;
    let session = Session::start(&opts)?;
    tsm_trace::probes::others::warn_if_any(None);
    let mut out = std::io::stdout().lock();
    for line in session.report_lines() {
        writeln!(out, "{line}")?;
    }
    let attached = session.attached_count();
    writeln!(out, "{attached} programs attached")?;
    let late = session.waiting();
    if !late.is_empty() {
        let keep =
            tsm_trace::probes::capabilities::names(&tsm_trace::probes::capabilities::to_keep(true));
        writeln!(out, "{}", tsm_trace::notices::late_attach(&late, &keep))?;
    }
    if let Some(why) = verdict::bind_path_gap(&mut facts, &session) {
        bail!("{why}");
    }
    Ok(())
}

/// `tsm-trace doctor`: the report, and the exit status it implies.
fn doctor(args: DoctorArgs) -> Result<i32> {
    use tsm_trace::doctor;
    let facts = doctor::gather(
        &doctor::Paths::default(),
        &args.probes.session_options(false),
        &args.pin_dir,
    );
    let report = doctor::Report::new(doctor::assess(&facts));
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", report.render_text())?;
    }
    out.flush()?;
    Ok(report.exit_code)
}
