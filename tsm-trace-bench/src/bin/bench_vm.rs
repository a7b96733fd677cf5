//! Guest-side helper of `cargo xtask bench` (built static for musl, run inside the test VM by
//! tests/vm/scenarios/bench.sh). bpftool and bpftrace are not in the VM; this reads program
//! statistics through the bpf syscall (BPF_PROG_GET_NEXT_ID + BPF_OBJ_GET_INFO_BY_FD, via aya).
//!
//! - `stats`: every loaded BPF program: `prog id=… name=… type=… run_time_ns=… run_cnt=…`
//!   (run_time_ns / run_cnt count only while /proc/sys/kernel/bpf_stats_enabled is 1).
//! - `empty PROBE=FUNCTION...`: attach the empty baselines `bench_empty` (kprobe) and
//!   `bench_empty_ret` (kretprobe) to each FUNCTION, one program instance per function so each
//!   has its own statistics, print which of tsm-trace's programs they pair with, then sleep
//!   until killed.
//! - `hotpath N`: N non-TSM ioctls and N getpid calls; prints how often every BPF program ran
//!   meanwhile (deltas of run_cnt).
//! - `latency N CTL VDEV PORT`: N bind/unbind ioctls through the stand-in's ctl file; after each,
//!   polls `http://127.0.0.1:PORT/metrics` until `tsm_trace_operations_total` grows; prints
//!   one `latency_us=` line per operation.
//! - `idle PID SECONDS`: CPU time of process PID over SECONDS (utime+stime from
//!   /proc/PID/stat, and the sum of /proc/PID/task/*/schedstat in ns).
//! - `cpu PID`: that schedstat sum now; `settle PID`: wait until it stops growing for 20 ms
//!   (the cost rounds wait out each tool's deferred work with it).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use aya::programs::{KProbe, loaded_programs};
use tsm_trace::events::ProbeId;
use tsm_trace::probes::{self, TARGETS};
use tsm_trace_common::Offsets;

fn die(msg: String) -> ! {
    eprintln!("bench_vm: {msg}");
    std::process::exit(1)
}

#[derive(Clone, Debug)]
struct ProgStat {
    name: String,
    /// `bpf_prog_type` as the kernel reports it (e.g. BPF_PROG_TYPE_KPROBE).
    kind: String,
    run_time_ns: u64,
    run_cnt: u64,
}

fn snapshot() -> BTreeMap<u32, ProgStat> {
    let mut out = BTreeMap::new();
    for info in loaded_programs() {
        let info = info.unwrap_or_else(|e| die(format!("reading program info: {e}")));
        out.insert(
            info.id(),
            ProgStat {
                name: info.name_as_str().unwrap_or("?").to_string(),
                kind: format!("{:?}", info.program_type()),
                run_time_ns: info.run_time().as_nanos() as u64,
                run_cnt: info.run_count(),
            },
        );
    }
    out
}

fn stats() {
    for (id, s) in snapshot() {
        println!(
            "prog id={id} name={} type={} run_time_ns={} run_cnt={}",
            s.name, s.kind, s.run_time_ns, s.run_cnt
        );
    }
}

fn empty(pairs: &[String]) {
    let mut keep = Vec::new();
    for pair in pairs {
        let (probe, function) = pair
            .split_once('=')
            .unwrap_or_else(|| die(format!("{pair}: expected PROBE=FUNCTION")));
        let probe =
            ProbeId::parse(probe).unwrap_or_else(|| die(format!("{probe}: unknown probe name")));
        let target = TARGETS
            .iter()
            .find(|t| t.probe == probe)
            .unwrap_or_else(|| die(format!("{probe:?} is not in the compatibility table")));
        let mut ids = Vec::new();
        for (name, ours) in [
            ("bench_empty", Some(target.probe.entry_program())),
            ("bench_empty_ret", target.probe.return_program()),
        ] {
            let Some(ours) = ours else { continue };
            let mut ebpf = probes::open(&Offsets::UNKNOWN, Some(4096), None)
                .unwrap_or_else(|e| die(format!("opening the object: {}", probes::chain(&e))));
            let p: &mut KProbe = ebpf
                .program_mut(name)
                .unwrap_or_else(|| die(format!("{name} is not in the eBPF object")))
                .try_into()
                .unwrap_or_else(|e| die(format!("{name}: {e}")));
            p.load()
                .unwrap_or_else(|e| die(format!("loading {name}: {}", probes::chain(&e))));
            p.attach(function, 0).unwrap_or_else(|e| {
                die(format!(
                    "attaching {name} to {function}: {}",
                    probes::chain(&e)
                ))
            });
            let id = p
                .info()
                .unwrap_or_else(|e| die(format!("{name}: {e}")))
                .id();
            ids.push((ours, name, id));
            keep.push(ebpf);
        }
        for (ours, name, id) in ids {
            println!(
                "pair probe={} function={function} ours={ours} baseline={name} baseline_id={id}",
                probe.as_str()
            );
        }
    }
    std::io::stdout().flush().ok();
    eprintln!("bench_vm: baselines attached");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn hotpath(n: u64) {
    let dev_null = std::fs::File::open("/dev/null").unwrap_or_else(|e| die(format!("{e}")));
    let fd = std::os::fd::AsRawFd::as_raw_fd(&dev_null);
    let before = snapshot();
    let t = Instant::now();
    let mut enotty = 0u64;
    for _ in 0..n {
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // TIOCGWINSZ on /dev/null: a real ioctl syscall that fails with ENOTTY.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } != 0 {
            enotty += 1;
        }
    }
    let ioctl_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(unsafe { libc::syscall(libc::SYS_getpid) });
    }
    let getpid_s = t.elapsed().as_secs_f64();
    let after = snapshot();
    println!("ioctls={n} failed={enotty} seconds={ioctl_s:.3}");
    println!("getpids={n} seconds={getpid_s:.3}");
    for (id, a) in &after {
        let b = before.get(id).map_or(0, |b| b.run_cnt);
        println!(
            "delta id={id} name={} type={} run_cnt_delta={}",
            a.name,
            a.kind,
            a.run_cnt.saturating_sub(b)
        );
    }
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// Sum of every `tsm_trace_operations_total` sample.
fn operations(port: u16) -> u64 {
    let body = http_get(port, "/metrics").unwrap_or_else(|e| die(format!("GET /metrics: {e}")));
    body.lines()
        .filter(|l| l.starts_with("tsm_trace_operations_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn latency(n: u64, ctl: &str, vdev: &str, port: u16) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(ctl)
        .unwrap_or_else(|e| die(format!("{ctl}: {e}")));
    let mut count = operations(port);
    for i in 0..n {
        let op = if i % 2 == 0 { 1 } else { 2 };
        let cmd = format!("ioctl {vdev} {op} 0\n");
        if let Err(e) = f.write_all(cmd.as_bytes()) {
            die(format!("{cmd:?}: {e}"));
        }
        // The kretprobe of iommufd_vdevice_tsm_op_ioctl fired just before write() returned.
        let t = Instant::now();
        loop {
            let now = operations(port);
            if now > count {
                count = now;
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                die(format!("operation {i} not on /metrics after 10 s"));
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        println!("latency_us={}", t.elapsed().as_micros());
    }
}

/// What `pid` has used so far.
struct Cpu {
    /// utime+stime, in clock ticks.
    ticks: u64,
    /// The sum of its threads' schedstat CPU time.
    ns: u64,
    /// The sum of its threads' schedstat timeslices: how often a thread got a CPU (its
    /// wakeups).
    runs: u64,
    threads: u64,
}

fn cpu(pid: &str) -> Cpu {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| die(format!("/proc/{pid}/stat: {e}")));
    // Fields after the command name (which may contain spaces): state is field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let (mut ns, mut runs, mut threads) = (0, 0, 0);
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                let mut v = s.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
                ns += v.next().unwrap_or(0);
                runs += v.nth(1).unwrap_or(0);
                threads += 1;
            }
        }
    }
    Cpu {
        ticks,
        ns,
        runs,
        threads,
    }
}

fn idle(pid: &str, secs: u64) {
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let a = cpu(pid);
    std::thread::sleep(Duration::from_secs(secs));
    let b = cpu(pid);
    println!("seconds={secs}");
    println!("clk_tck={hz}");
    println!("stat_cpu_ms={}", (b.ticks - a.ticks) * 1000 / hz);
    println!("schedstat_cpu_ns={}", b.ns.saturating_sub(a.ns));
    println!("schedstat_runs={}", b.runs.saturating_sub(a.runs));
    println!("threads={}", b.threads);
    // Total since start: proves schedstat was readable (a 0 delta is then real).
    println!("schedstat_total_ns={}", b.ns);
    println!("stat_total_ms={}", b.ticks * 1000 / hz);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    for l in status.lines() {
        if let Some(v) = l
            .strip_prefix("VmHWM:")
            .or_else(|| l.strip_prefix("VmRSS:"))
        {
            let key = &l[..5];
            println!(
                "{}_kib={}",
                key.to_ascii_lowercase(),
                v.trim().trim_end_matches("kB").trim()
            );
        }
    }
}

/// `cpu PID`: the CPU time of all of PID's threads so far (schedstat ns), one line.
fn cpu_now(pid: &str) {
    println!("{}", cpu(pid).ns);
}

/// `settle PID`: returns once PID's threads used no CPU for 20 ms (at most about 3 s), so
/// that work a tool deferred from one timed round never lands in the next one.
fn settle(pid: &str) {
    let mut last = cpu(pid).ns;
    for _ in 0..150 {
        std::thread::sleep(Duration::from_millis(20));
        let now = cpu(pid).ns;
        if now == last {
            return;
        }
        last = now;
    }
    eprintln!("bench_vm settle: {pid} still used CPU after 3 s");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> u64 {
        args.get(i)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| die(format!("argument {i}: expected a number")))
    };
    match args.first().map(String::as_str) {
        Some("stats") => stats(),
        Some("empty") => empty(&args[1..]),
        Some("hotpath") => hotpath(num(1)),
        Some("latency") if args.len() == 5 => latency(num(1), &args[2], &args[3], num(4) as u16),
        Some("idle") if args.len() == 3 => idle(&args[1], num(2)),
        Some("cpu") if args.len() == 2 => cpu_now(&args[1]),
        Some("settle") if args.len() == 2 => settle(&args[1]),
        _ => die(
            "usage: bench_vm stats | empty PROBE=FUNCTION... | hotpath N | latency N CTL VDEV PORT | idle PID SECONDS | cpu PID | settle PID"
                .into(),
        ),
    }
}
