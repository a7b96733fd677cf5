//! The flags several subcommands share: probes and kernel facts, correlation, output
//! filters, and the web server's.

use std::{path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

use super::parse;
use crate::{
    btf::BtfSources, correlate, events::ProbeId, exporters::trace::Filters, http,
    pipeline::TraceFormat, probes::AttachConfig, session::SessionOptions,
};

/// Which probes to attach and where kernel facts come from (`run`, `trace`).
#[derive(Args, Clone)]
#[command(next_help_heading = "Probes")]
pub struct ProbeArgs {
    /// Fail if any requested probe cannot attach (default: report it and keep going).
    #[arg(long, env = "TSM_TRACE_STRICT", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub strict: bool,
    #[command(flatten)]
    pub target: TargetArgs,
    /// A probed call still waiting for its return after this long is taken as one whose
    /// return will never come (its kretprobe missed): its entry is removed and counted in
    /// tsm_trace_inflight_expired_total{reason="timeout"}. Entries of exited threads go at
    /// the next sweep (every 5 s) whatever this says. Longer than the slowest TSM firmware
    /// call you expect.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse::duration, allow_hyphen_values = true, env = "TSM_TRACE_INFLIGHT_TIMEOUT")]
    pub inflight_timeout: Duration,
    /// Log the TSM operations that have been running longer than this (device, VM, the
    /// function they are in, age from the kernel's entry timestamp), and again every as long
    /// while they still run. They are in /bindings' in_flight and in
    /// tsm_trace_operation_in_flight_oldest_seconds whatever this says. 0: never log.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse::duration, allow_hyphen_values = true, env = "TSM_TRACE_STUCK_AFTER")]
    pub stuck_after: Duration,
    /// The secret key that names VMs without their kernel address (`vm#…`, a keyed hash of
    /// the `struct kvm` pointer): created 0600 if missing, shared by every tsm-trace of the
    /// boot (/run is a tmpfs). If it cannot be stored, a key in memory is used and names
    /// change when tsm-trace restarts.
    #[arg(long, value_name = "FILE", env = "TSM_TRACE_VM_KEY", default_value = crate::events::vm_key::DEFAULT_PATH, value_parser = parse::state_file)]
    pub vm_key: PathBuf,
}

/// Which probes there are and where kernel facts come from (every command that looks at the
/// kernel: `run`, `trace`, `check`, `doctor`).
#[derive(Args, Clone)]
#[command(next_help_heading = "Probes")]
pub struct TargetArgs {
    /// Probe this function as the TSM driver's link `probe` op (layer tsm_driver). Needed
    /// only for drivers tsm-trace does not know (it knows AMD SEV-TIO, Arm CCA and Intel TDX
    /// Connect); the function's BTF prototype must match the op's.
    #[arg(long, value_name = "SYMBOL", env = "TSM_TRACE_DRIVER_PROBE", value_parser = parse::function)]
    pub driver_probe: Option<String>,
    /// The TSM driver's `connect` op (SPDM session, IDE set-up).
    #[arg(long, value_name = "SYMBOL", env = "TSM_TRACE_DRIVER_CONNECT", value_parser = parse::function)]
    pub driver_connect: Option<String>,
    /// The TSM driver's `disconnect` op.
    #[arg(long, value_name = "SYMBOL", env = "TSM_TRACE_DRIVER_DISCONNECT", value_parser = parse::function)]
    pub driver_disconnect: Option<String>,
    /// The TSM driver's `bind` op (e.g. a driver's `.bind` function).
    #[arg(long, value_name = "SYMBOL", env = "TSM_TRACE_DRIVER_BIND", value_parser = parse::function)]
    pub driver_bind: Option<String>,
    /// The TSM driver's `unbind` op.
    #[arg(long, value_name = "SYMBOL", env = "TSM_TRACE_DRIVER_UNBIND", value_parser = parse::function)]
    pub driver_unbind: Option<String>,
    /// The TSM driver's `guest_req` op (TDISP requests from the guest).
    #[arg(long, value_name = "SYMBOL", env = "TSM_TRACE_DRIVER_GUEST_REQ", value_parser = parse::function)]
    pub driver_guest_req: Option<String>,
    /// Do not attach this probe (repeatable; the variable takes a comma-separated list):
    /// tsm_op_ioctl, tsm_bind, tsm_unbind, vdevice_abort, pci_tsm_bind, pci_tsm_unbind,
    /// connect, disconnect, pci_tsm_disconnect, pci_tsm_unbind_any, pci_tsm_destroy,
    /// pci_tsm_guest_req, driver_* ops, kvm_destroy_vm, vmm_exit.
    #[arg(long, value_name = "PROBE", env = "TSM_TRACE_DISABLE", value_delimiter = ',', value_parser = parse::probe)]
    pub disable: Vec<ProbeId>,
    /// Attach PROBE to FUNCTION instead of its usual function (same prototype), for renamed
    /// functions: e.g. --symbol tsm_bind=my_tsm_bind, for names no compatibility table knows
    /// (repeatable; the variable takes a comma-separated list).
    #[arg(long, value_name = "PROBE=FUNCTION", env = "TSM_TRACE_SYMBOL", value_delimiter = ',', value_parser = parse::symbol)]
    pub symbol: Vec<(ProbeId, String)>,
    /// vmlinux BTF.
    #[arg(
        long,
        value_name = "PATH",
        env = "TSM_TRACE_BTF",
        default_value = "/sys/kernel/btf/vmlinux"
    )]
    pub btf: PathBuf,
    /// Directory of module split BTF (every file but vmlinux).
    #[arg(
        long,
        value_name = "DIR",
        env = "TSM_TRACE_BTF_MODULES",
        default_value = "/sys/kernel/btf"
    )]
    pub btf_modules: PathBuf,
    /// Symbol table used to find probe targets.
    #[arg(
        long,
        value_name = "PATH",
        env = "TSM_TRACE_KALLSYMS",
        default_value = "/proc/kallsyms"
    )]
    pub kallsyms: PathBuf,
    /// Ring buffer size in bytes (a power of two, multiple of the page size). Cost: this much
    /// locked kernel memory. Benefit: per-event detail (trace lines, --print, binding and leak
    /// correlation) survives bursts: each record is 232 bytes and an operation takes one per
    /// probed call (about 4; a bind one more of 288 bytes, its VMM's argv), so the default holds about 280 operations in flight to
    /// userspace. /metrics counts stay exact whatever the size (counted in the kernel).
    #[arg(long, value_name = "BYTES", env = "TSM_TRACE_RINGBUF_SIZE", default_value_t = 256 * 1024, value_parser = parse::ringbuf)]
    pub ringbuf_size: u32,
}

/// How events become operations, bindings and leaks.
#[derive(Args, Clone)]
#[command(next_help_heading = "Correlation")]
pub struct CorrelateArgs {
    /// After a VM is destroyed or its VMM exits, how long its devices may stay bound before
    /// that is reported as a leak (teardown order varies).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse::duration, allow_hyphen_values = true, env = "TSM_TRACE_GRACE")]
    pub grace: Duration,
    /// Most bindings tracked at once (memory stays bounded whatever the event stream does).
    #[arg(long, value_name = "N", env = "TSM_TRACE_MAX_BINDINGS", default_value = "65536", value_parser = parse::max_bindings)]
    pub max_bindings: usize,
    /// How VMs are named: `auto` by what their VMM's command line calls them, read at bind
    /// time (QEMU and libvirt `-name`, Kata's `sandbox-<id>`, cloud-hypervisor's and crosvm's
    /// socket, Firecracker's `--id`), else by their KVM stats id (`kvm-<pid>`); `stats-id`
    /// always by the stats id.
    #[arg(
        long,
        value_enum,
        value_name = "HOW",
        env = "TSM_TRACE_VM_NAME",
        default_value = "auto"
    )]
    pub vm_name: VmNaming,
}

/// `--vm-name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VmNaming {
    Auto,
    StatsId,
}

impl CorrelateArgs {
    pub fn config(&self) -> correlate::Config {
        correlate::Config {
            leak_grace_ns: self.grace.as_nanos() as u64,
            max_bindings: self.max_bindings,
            vmm_names: self.vm_name == VmNaming::Auto,
            ..correlate::Config::default()
        }
    }
}

#[derive(Args, Clone)]
#[command(next_help_heading = "Output")]
pub struct FilterArgs {
    /// Only this device (PCI BDF, e.g. 0000:01:00.0).
    #[arg(long, value_name = "BDF", value_parser = parse::bdf)]
    pub device: Option<String>,
    /// Only this VM: `kvm-<pid>` (its stats_id), the VMM pid, or its `vm#…` name (kernel
    /// addresses are never shown, so `0x…` pointers are refused).
    #[arg(long, value_name = "VM", value_parser = parse::vm)]
    pub vm: Option<crate::events::VmSelector>,
    /// Only failures (and leaks).
    #[arg(long)]
    pub failed: bool,
    /// JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
    /// How text lines show time: `wall` (local wall-clock time; replay: the capture's own,
    /// where it recorded the clock), `boot` (seconds since boot, as dmesg prints them), or
    /// `relative` (seconds since the first event). JSON lines carry `*_ns` (since boot) and,
    /// where the wall clock is known, `time` (RFC 3339, UTC).
    #[arg(long, value_enum, value_name = "CLOCK")]
    pub time: Option<TimeFormat>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TimeFormat {
    Wall,
    Boot,
    Relative,
}

impl FilterArgs {
    pub fn filters(&self) -> Filters {
        Filters {
            device: self.device.clone(),
            vm: self.vm,
            failures_only: self.failed,
        }
    }

    pub fn format(&self) -> TraceFormat {
        if self.json {
            TraceFormat::Json
        } else {
            TraceFormat::Text
        }
    }
}

/// TLS, auth and the limits of the HTTP server.
#[derive(Args)]
#[command(next_help_heading = "Web")]
pub struct WebArgs {
    /// TLS and basic auth, in the format of the Prometheus exporter-toolkit web config
    /// (`tls_server_config.cert_file/key_file/client_ca_file`, `basic_auth_users` with
    /// bcrypt hashes). Default: plain HTTP without auth.
    #[arg(
        long = "web.config.file",
        value_name = "FILE",
        env = "TSM_TRACE_WEB_CONFIG_FILE"
    )]
    pub web_config_file: Option<PathBuf>,
    /// Most HTTP connections open at once; at the cap the longest-idle one is closed.
    #[arg(long = "web.max-connections", value_name = "N", env = "TSM_TRACE_WEB_MAX_CONNECTIONS", default_value = "512", value_parser = parse::max_connections)]
    pub max_connections: usize,
    /// Time for a client to send a request header (and finish a TLS handshake), also between
    /// requests on a kept-alive connection.
    #[arg(long = "web.header-timeout", value_name = "DURATION", env = "TSM_TRACE_WEB_HEADER_TIMEOUT", default_value = "10s", value_parser = parse::timeout, allow_hyphen_values = true)]
    pub header_timeout: Duration,
    /// Time to answer one request, until its last byte is written.
    #[arg(long = "web.request-timeout", value_name = "DURATION", env = "TSM_TRACE_WEB_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse::timeout, allow_hyphen_values = true)]
    pub request_timeout: Duration,
}

impl WebArgs {
    pub fn limits(&self) -> http::Limits {
        http::Limits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_timeout,
            request_timeout: self.request_timeout,
            ..http::Limits::default()
        }
    }

    pub fn config(&self) -> anyhow::Result<http::WebConfig> {
        match &self.web_config_file {
            None => Ok(http::WebConfig::default()),
            Some(p) => Ok(http::WebConfig::load(p)?),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PrintFormat {
    Text,
    Json,
}

impl ProbeArgs {
    pub fn session_options(&self) -> SessionOptions {
        self.target.session_options(self.strict)
    }
}

impl TargetArgs {
    pub fn session_options(&self, strict: bool) -> SessionOptions {
        SessionOptions {
            attach: AttachConfig {
                strict,
                driver_ops: [
                    (ProbeId::DriverProbe, &self.driver_probe),
                    (ProbeId::DriverConnect, &self.driver_connect),
                    (ProbeId::DriverDisconnect, &self.driver_disconnect),
                    (ProbeId::DriverBind, &self.driver_bind),
                    (ProbeId::DriverUnbind, &self.driver_unbind),
                    (ProbeId::DriverGuestReq, &self.driver_guest_req),
                ]
                .into_iter()
                .filter_map(|(p, f)| f.clone().map(|f| (p, f)))
                .collect(),
                disabled: self.disable.clone(),
                symbols: self.symbol.clone(),
                no_modules: !crate::probes::modules_supported(std::path::Path::new("/proc")),
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

/// Where the operations go besides the trace lines (`trace`, `replay`).
#[derive(Args, Clone, Default)]
#[command(next_help_heading = "Export")]
pub struct TimelineArgs {
    /// Also write the operations as a Chrome/Perfetto trace-event JSON file (open it in
    /// ui.perfetto.dev or chrome://tracing): a track per device, a slice per layer's call
    /// with its errno, instant events for leaks and unbinds by cause. Every operation, whatever
    /// the filters. An existing regular FILE is replaced (created 0600; never through a
    /// symlink).
    #[arg(long, value_name = "FILE")]
    pub timeline: Option<PathBuf>,
}

/// OTLP span export (`run`, `trace`, `replay`).
#[derive(Args, Clone, Default)]
#[command(next_help_heading = "Export")]
pub struct OtlpArgs {
    /// Send every operation as an OpenTelemetry trace (a root span per operation, a child span
    /// per layer's call; docs/traces.md) to the OTLP collector at URL, over http/protobuf:
    /// the base URL, `/v1/traces` is appended (e.g. http://127.0.0.1:4318). Without it, the
    /// standard variables: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (used as is) or
    /// OTEL_EXPORTER_OTLP_ENDPOINT; OTEL_EXPORTER_OTLP_[TRACES_]HEADERS, _TIMEOUT (ms) and
    /// _PROTOCOL (http/protobuf only) apply too, OTEL_SDK_DISABLED=true turns it off. Plain
    /// http:// only (send to a local collector). Spans are sent from a bounded queue (2048):
    /// a slow or dead collector never holds tsm-trace up; what is dropped is counted in
    /// tsm_trace_otlp_spans_dropped_total.
    #[arg(long, value_name = "URL", env = "TSM_TRACE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}
