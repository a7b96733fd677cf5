//! The alert scenarios: a capture replayed as the exporter's state, scraped once a minute,
//! and which alerts fire when. Every alert rule in dashboards/alerts.yml is fired by at least
//! one scenario (`generate::check_coverage`).
//!
//! A scenario's timeline is a list of [`Seg`]: one scrape per operation (the state after a
//! prefix of the capture that ends between operations), scrapes that hold the state (time
//! passes without events), failed scrapes, and a restart (a new daemon that sees the rest of
//! the capture with fresh counters). Minute `k` is scrape `k`.
//!
//! At each checkpoint every alert is checked: the ones listed must fire with exactly those
//! labels (plus `instance`), every other alert must not fire.
//!
//! What `replay` cannot export (it runs no probes, reads no sysfs and no kernel counters) is
//! set by [`Daemon`] values: kept to the few series an alert reads, each commented.

use super::capture::Capture;

pub const SESSION_A: &str = "fuzz/corpus/record/vm-6.1-session-a.jsonl";
pub const SESSION_B: &str = "fuzz/corpus/record/vm-7.3-session-b.jsonl";
pub const LATE_MODULE: &str = "fuzz/corpus/record/vm-7.3-late-module.jsonl";
pub const LIFECYCLE: &str = "fuzz/corpus/record/vm-7.3-lifecycle.jsonl";
/// The ide VM suite's session (tests/vm/scenarios/ide.sh) on 7.3.4: 13 operations. 1 connect
/// (Secure), 2 disconnect, 3 connect whose root port never reaches Secure (tolerated), 4
/// disconnect, 5 connect whose endpoint never reaches Secure, 6 disconnect, 7 connect -EFAULT
/// (no stream id), 8 connect -EBUSY (stream id in use), 9 connect, 10 disconnect that leaves
/// stream0.0.0 registered, 11 connect (stream1.1.1), 12 disconnect, 13 the leaked stream
/// released.
pub const IDE: &str = "fuzz/corpus/record/vm-7.3-ide.jsonl";

/// errnos no `tsm_trace_operations_total` series is created for at start (initial.rs lists
/// the runbook's; these are not among them): their series appear at 1.
const EPERM: i64 = 1;
const EAGAIN: i64 = 11;
const ENOMEM: i64 = 12;

/// A piece of a scenario's timeline.
#[derive(Clone, Copy, Debug)]
pub enum Seg {
    /// `n` scrapes, each after one more operation of the capture.
    Ops(usize),
    /// One scrape after `n` more operations (several between two scrapes).
    Batch(usize),
    /// One scrape per operation left in the capture.
    Rest,
    /// `n` more scrapes of the same state (scrape 0, before any event, if nothing came yet).
    Hold(usize),
    /// `n` failed scrapes (`up` 0, every series stale).
    Down(usize),
    /// The daemon restarts: the scrapes after this see a new process (fresh counters, empty
    /// tables) that sees only the operations after the last one scraped.
    Restart,
}

/// A daemon-only value, by scrape index.
#[derive(Clone, Copy, Debug)]
pub enum Daemon {
    /// Replaces the value of a series replay exports (`None`: replay's value).
    Set(&'static str, fn(usize) -> Option<f64>),
    /// A series replay does not export at all (`None`: absent).
    Add(&'static str, fn(usize) -> Option<f64>),
}

/// An alert expected to fire: its name, its `severity` and its other labels (`instance`
/// is added).
#[derive(Clone, Copy, Debug)]
pub struct Alert {
    pub name: &'static str,
    pub severity: &'static str,
    pub labels: &'static [(&'static str, &'static str)],
}

/// At minute `at`, exactly these alerts fire (every other alert in alerts.yml does not).
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    pub at: usize,
    pub firing: &'static [Alert],
}

pub struct Scenario {
    pub name: &'static str,
    /// The capture, relative to the repository root.
    pub capture: &'static str,
    /// How the capture is derived from it, where none holds what the alert needs.
    pub derive: Option<fn(&Capture) -> Capture>,
    pub timeline: &'static [Seg],
    pub daemon: &'static [Daemon],
    /// At least this many `tsm_trace_operations_total{result="error"}` series must be absent
    /// at the first scrape and appear at 1 (the case `increase()` alone never counts).
    pub fresh_errors: usize,
    pub expect: &'static [Expect],
}

const fn alert(
    name: &'static str,
    severity: &'static str,
    labels: &'static [(&'static str, &'static str)],
) -> Alert {
    Alert {
        name,
        severity,
        labels,
    }
}

const BIND_FAILURES: Alert = alert("TsmBindFailureRateHigh", "warning", &[]);
const CONNECT_FAILURES: Alert = alert("TsmConnectFailureRateHigh", "warning", &[]);
const BIND_LATENCY: Alert = alert("TsmBindLatencyHigh", "warning", &[]);
const CONNECT_LATENCY: Alert = alert("TsmConnectLatencyHigh", "warning", &[]);
const JOB: (&str, &str) = ("job", "tsm-trace");
/// The leaks session-a ends with.
const VMM_EXITED: Alert = alert(
    "TsmLeakedBinding",
    "critical",
    &[
        JOB,
        ("device", "0000:00:02.0"),
        ("vm", "kvm-317"),
        ("reason", "vmm_exited"),
    ],
);
const VM_DESTROYED: Alert = alert(
    "TsmLeakedBinding",
    "critical",
    &[
        JOB,
        ("device", "0000:00:03.0"),
        ("vm", "kvm-123"),
        ("reason", "vm_destroyed"),
    ],
);

/// One bind, its unbind, the VM's end (vm-7.3-late-module): nothing to alert on.
const IDE_NOT_SECURE: Alert = alert("TsmIdeStreamNotSecure", "warning", &[JOB]);
const IDE_LEAK: Alert = alert(
    "TsmLeakedIdeStream",
    "warning",
    &[
        JOB,
        ("device", "0000:01:00.0"),
        ("stream", "stream0.0.0"),
        ("reason", "device_disconnected"),
    ],
);
const QUIET: &[Seg] = &[Seg::Hold(1), Seg::Rest, Seg::Hold(50)];

pub const ALL: &[Scenario] = &[
    Scenario {
        name: "healthy: one bind, unbind, VM destroyed; --reconcile-interval 0",
        capture: LATE_MODULE,
        derive: None,
        timeline: QUIET,
        // --reconcile-interval 0: one reconcile run, at start, and no other is due (replay
        // exports tsm_trace_sysfs_reconcile_interval_seconds 0, as such a daemon does, but
        // runs none).
        daemon: &[Daemon::Set("tsm_trace_sysfs_reconcile_runs_total", |_| {
            Some(1.0)
        })],
        fresh_errors: 0,
        expect: &[
            Expect { at: 5, firing: &[] },
            Expect {
                at: 20,
                firing: &[],
            },
            Expect {
                at: 50,
                firing: &[],
            },
        ],
    },
    Scenario {
        name: "bind failures (seven errnos, four layers), then a VMM exits and a VM is destroyed with devices bound; one operation a minute",
        capture: SESSION_A,
        derive: None,
        timeline: &[Seg::Hold(1), Seg::Rest, Seg::Hold(20)],
        daemon: &[],
        fresh_errors: 0,
        expect: &[
            Expect { at: 2, firing: &[] },
            Expect {
                at: 9,
                firing: &[BIND_FAILURES],
            },
            // The ioctl_failed_after_bind leak (the VMM rebinds a minute later) and the
            // vdevice teardown (unbound a minute later) never last the 2 minutes.
            Expect {
                at: 15,
                firing: &[BIND_FAILURES],
            },
            // Minute 17: VMM 317 exits holding 0000:00:02.0; minute 19: VM kvm-123 is
            // destroyed holding 0000:00:03.0. Nobody unbinds them. (Three bind failures stay
            // in the 15m window until minute 21.)
            Expect {
                at: 18,
                firing: &[BIND_FAILURES],
            },
            Expect {
                at: 22,
                firing: &[VMM_EXITED, VM_DESTROYED],
            },
            Expect {
                at: 30,
                firing: &[VMM_EXITED, VM_DESTROYED],
            },
        ],
    },
    Scenario {
        name: "three of three binds fail, each with an errno the exporter cannot list",
        capture: SESSION_A,
        // Derived: session-a's first three operations (binds the iommufd layer refuses:
        // EOPNOTSUPP, ENOENT, ENODEV, all pre-created) failing with EPERM, EAGAIN and ENOMEM
        // instead, whose series the exporter creates at their first failure.
        derive: Some(|c| {
            c.take(3)
                .rewrite_errnos("binds fail with EPERM, EAGAIN, ENOMEM", |op, _| {
                    [EPERM, EAGAIN, ENOMEM][op]
                })
        }),
        timeline: &[Seg::Hold(1), Seg::Rest, Seg::Hold(25)],
        daemon: &[],
        fresh_errors: 3,
        expect: &[
            Expect { at: 2, firing: &[] },
            Expect {
                at: 10,
                firing: &[BIND_FAILURES],
            },
            // The first failure left the 15m window at 16m.
            Expect {
                at: 20,
                firing: &[],
            },
        ],
    },
    Scenario {
        name: "connect failures (lifecycle: five of eight connects fail)",
        capture: LIFECYCLE,
        derive: None,
        timeline: &[Seg::Hold(1), Seg::Rest, Seg::Hold(30)],
        daemon: &[],
        fresh_errors: 0,
        expect: &[
            Expect { at: 1, firing: &[] },
            Expect {
                at: 10,
                firing: &[CONNECT_FAILURES],
            },
            Expect {
                at: 45,
                firing: &[],
            },
        ],
    },
    Scenario {
        name: "three of four connects fail, each with an errno the exporter cannot list",
        capture: LIFECYCLE,
        // Derived: lifecycle records 2..=11, four connects (three fail: ENXIO, ENXIO, EIO,
        // all pre-created), failing with EPERM, EAGAIN and ENOMEM instead.
        derive: Some(|c| {
            c.skip(1)
                .take(10)
                .rewrite_errnos("connects fail with EPERM, EAGAIN, ENOMEM", |op, _| {
                    [EPERM, EAGAIN, ENOMEM][op.min(2)]
                })
        }),
        timeline: &[Seg::Hold(1), Seg::Rest, Seg::Hold(40)],
        daemon: &[],
        fresh_errors: 3,
        expect: &[
            Expect { at: 1, firing: &[] },
            Expect {
                at: 10,
                firing: &[CONNECT_FAILURES],
            },
            Expect {
                at: 40,
                firing: &[],
            },
        ],
    },
    Scenario {
        name: "a slow TSM: binds and connects 1000 times as long (lifecycle)",
        capture: LIFECYCLE,
        // Derived: every time of the lifecycle capture stretched x1000, so its 21 ms bind
        // and 23 ms connect take 21 s and 23 s; order and nesting are unchanged.
        derive: Some(|c| c.stretch(1000)),
        // Six connects (one 23 s), a bind, the 21 s bind, then the guest requests, an unbind
        // and the third bind within one minute: three binds in 15 minutes, for 10 minutes.
        timeline: &[
            Seg::Hold(1),
            Seg::Ops(8),
            Seg::Batch(5),
            Seg::Rest,
            Seg::Hold(45),
        ],
        daemon: &[],
        fresh_errors: 0,
        expect: &[
            Expect { at: 1, firing: &[] },
            Expect {
                at: 20,
                firing: &[BIND_LATENCY, CONNECT_LATENCY, CONNECT_FAILURES],
            },
            Expect {
                at: 60,
                firing: &[],
            },
        ],
    },
    Scenario {
        name: "leaked bindings of every definite reason; the VMM takes 5 minutes to clean up",
        capture: SESSION_A,
        derive: None,
        // Op 7 leaves 0000:00:02.0 bound after the ioctl failed; op 14 tears the vdevice
        // of 0000:00:03.0 down without an unbind. Each stays for 5 scrapes before the VMM
        // cleans up. Then the leaks session-a ends with (minutes 25 and 27), for good.
        timeline: &[
            Seg::Hold(1),
            Seg::Ops(7),
            Seg::Hold(4),
            Seg::Ops(7),
            Seg::Hold(4),
            Seg::Rest,
            Seg::Hold(5),
        ],
        daemon: &[],
        fresh_errors: 0,
        expect: &[
            Expect {
                at: 8,
                firing: &[BIND_FAILURES],
            },
            Expect {
                at: 10,
                firing: &[
                    BIND_FAILURES,
                    alert(
                        "TsmLeakedBinding",
                        "critical",
                        &[
                            JOB,
                            ("device", "0000:00:02.0"),
                            ("vm", "kvm-123"),
                            ("reason", "ioctl_failed_after_bind"),
                        ],
                    ),
                ],
            },
            Expect {
                at: 21,
                firing: &[alert(
                    "TsmLeakedBinding",
                    "critical",
                    &[
                        JOB,
                        ("device", "0000:00:03.0"),
                        ("vm", "kvm-123"),
                        ("reason", "vdevice_teardown_without_unbind"),
                    ],
                )],
            },
            Expect {
                at: 24,
                firing: &[],
            },
            Expect {
                at: 27,
                firing: &[VMM_EXITED],
            },
            Expect {
                at: 33,
                firing: &[VMM_EXITED, VM_DESTROYED],
            },
        ],
    },
    Scenario {
        name: "a device bound in sysfs that tsm-trace saw no one bind",
        capture: SESSION_B,
        derive: None,
        timeline: &[Seg::Hold(1), Seg::Rest, Seg::Hold(20)],
        // The leak only a sysfs reconcile finds (replay reads no sysfs): 0000:00:05.0 was
        // bound before tsm-trace started.
        daemon: &[Daemon::Add(
            r#"tsm_trace_leaked_binding_info{device="0000:00:05.0",reason="sysfs_bound_without_owner",vm=""}"#,
            |_| Some(1.0),
        )],
        fresh_errors: 0,
        expect: &[
            Expect {
                at: 10,
                firing: &[],
            },
            Expect {
                at: 16,
                firing: &[alert(
                    "TsmLeakedBinding",
                    "warning",
                    &[
                        JOB,
                        ("device", "0000:00:05.0"),
                        ("reason", "sysfs_bound_without_owner"),
                    ],
                )],
            },
        ],
    },
    Scenario {
        name: "the exporter is down for 12 minutes, then restarts without its state",
        capture: LATE_MODULE,
        derive: None,
        timeline: &[
            Seg::Hold(1),
            Seg::Ops(2),
            Seg::Down(12),
            Seg::Restart,
            Seg::Hold(1),
            Seg::Rest,
            Seg::Hold(20),
        ],
        daemon: &[],
        fresh_errors: 0,
        expect: &[
            Expect {
                at: 12,
                firing: &[],
            },
            Expect {
                at: 14,
                firing: &[alert("TsmTraceDown", "warning", &[JOB])],
            },
            Expect {
                at: 20,
                firing: &[],
            },
            Expect {
                at: 35,
                firing: &[],
            },
        ],
    },
    Scenario {
        name: "the TSM module is unloaded: pci_tsm_bind detaches",
        capture: LATE_MODULE,
        derive: None,
        timeline: QUIET,
        // Probe attachment is the daemon's (replay attaches nothing): tsm_bind stays
        // attached, pci_tsm_bind detaches at minute 5.
        daemon: &[
            Daemon::Add(
                r#"tsm_trace_probe_attached{function="tsm_bind",kind="kprobe",probe="tsm_bind"}"#,
                |_| Some(1.0),
            ),
            Daemon::Add(
                r#"tsm_trace_probe_attached{function="pci_tsm_bind",kind="kprobe",probe="pci_tsm_bind"}"#,
                |k| Some(if k < 5 { 1.0 } else { 0.0 }),
            ),
        ],
        fresh_errors: 0,
        expect: &[
            Expect {
                at: 12,
                firing: &[],
            },
            Expect {
                at: 16,
                firing: &[alert(
                    "TsmProbesNotAttached",
                    "warning",
                    &[("probe", "pci_tsm_bind")],
                )],
            },
        ],
    },
    Scenario {
        name: "blind: neither bind-path probe attaches, only a module load is seen",
        capture: LATE_MODULE,
        derive: Some(|c| c.take(1)),
        timeline: &[Seg::Hold(1), Seg::Rest, Seg::Hold(15)],
        // Probe attachment is the daemon's: a kernel without tsm_bind and pci_tsm_bind.
        daemon: &[
            Daemon::Add(
                r#"tsm_trace_probe_attached{function="tsm_bind",kind="kprobe",probe="tsm_bind"}"#,
                |_| Some(0.0),
            ),
            Daemon::Add(
                r#"tsm_trace_probe_attached{function="pci_tsm_bind",kind="kprobe",probe="pci_tsm_bind"}"#,
                |_| Some(0.0),
            ),
        ],
        fresh_errors: 0,
        expect: &[
            Expect { at: 9, firing: &[] },
            Expect {
                at: 12,
                firing: &[alert("TsmProbesNotAttached", "warning", &[])],
            },
        ],
    },
    Scenario {
        name: "events lost: 7 ring-buffer drops (and 2 orphan returns, tolerated)",
        capture: LATE_MODULE,
        derive: None,
        timeline: QUIET,
        // Loss counts are the kernel's (replay exports the label sets at 0).
        daemon: &[
            Daemon::Set(
                r#"tsm_trace_events_lost_total{reason="ringbuf_full"}"#,
                |k| (k >= 4).then_some(7.0),
            ),
            Daemon::Set(
                r#"tsm_trace_events_lost_total{reason="orphan_return"}"#,
                |k| (k >= 2).then_some(2.0),
            ),
        ],
        fresh_errors: 0,
        expect: &[
            Expect { at: 3, firing: &[] },
            Expect {
                at: 6,
                firing: &[alert(
                    "TsmEventsLost",
                    "warning",
                    &[("reason", "ringbuf_full")],
                )],
            },
            Expect {
                at: 22,
                firing: &[],
            },
        ],
    },
    Scenario {
        name: "sysfs denies a binding tsm-trace believes in",
        capture: LATE_MODULE,
        derive: None,
        timeline: QUIET,
        // Reconcile runs are the daemon's (replay reads no sysfs): one a minute, the third
        // finds 0000:00:02.0 unbound while tsm-trace still holds its binding.
        daemon: &[
            Daemon::Set("tsm_trace_sysfs_reconcile_interval_seconds", |_| Some(60.0)),
            Daemon::Set("tsm_trace_sysfs_reconcile_runs_total", |k| {
                Some(k as f64 + 1.0)
            }),
            Daemon::Set(
                r#"tsm_trace_sysfs_mismatches_total{kind="denies_binding"}"#,
                |k| (k >= 3).then_some(1.0),
            ),
        ],
        fresh_errors: 0,
        expect: &[
            Expect { at: 6, firing: &[] },
            Expect {
                at: 10,
                firing: &[alert(
                    "TsmSysfsMismatch",
                    "warning",
                    &[("kind", "denies_binding")],
                )],
            },
            Expect {
                at: 40,
                firing: &[],
            },
        ],
    },
    Scenario {
        name: "sysfs reconcile: every run hits read errors",
        capture: LATE_MODULE,
        derive: None,
        timeline: QUIET,
        // Reconcile runs and their errors are the daemon's: one run a minute, each failing.
        daemon: &[
            Daemon::Set("tsm_trace_sysfs_reconcile_interval_seconds", |_| Some(60.0)),
            Daemon::Set("tsm_trace_sysfs_reconcile_runs_total", |k| {
                Some(k as f64 + 1.0)
            }),
            Daemon::Set("tsm_trace_sysfs_errors_total", |k| Some(k as f64 + 1.0)),
        ],
        fresh_errors: 0,
        expect: &[
            Expect {
                at: 14,
                firing: &[],
            },
            Expect {
                at: 17,
                firing: &[alert("TsmSysfsReconcileFailing", "warning", &[])],
            },
        ],
    },
    Scenario {
        name: "sysfs reconcile: the loop hangs after its first run (--reconcile-interval 60)",
        capture: LATE_MODULE,
        derive: None,
        timeline: QUIET,
        // The daemon's: runs every 60 s are due, one ran (at start).
        daemon: &[
            Daemon::Set("tsm_trace_sysfs_reconcile_interval_seconds", |_| Some(60.0)),
            Daemon::Set("tsm_trace_sysfs_reconcile_runs_total", |_| Some(1.0)),
        ],
        fresh_errors: 0,
        expect: &[
            Expect {
                at: 14,
                firing: &[],
            },
            Expect {
                at: 17,
                firing: &[alert("TsmSysfsReconcileFailing", "warning", &[])],
            },
        ],
    },
    Scenario {
        name: "the state directory fills up: every save fails from minute 5",
        capture: LATE_MODULE,
        derive: None,
        timeline: QUIET,
        // Saves are the daemon's (replay keeps no state file): three a minute, then none
        // succeeds.
        daemon: &[
            Daemon::Set("tsm_trace_state_saves_total{result=\"ok\"}", |k| {
                Some(3.0 * k.min(5) as f64)
            }),
            Daemon::Set("tsm_trace_state_saves_total{result=\"failed\"}", |k| {
                Some(3.0 * k.saturating_sub(5) as f64)
            }),
        ],
        fresh_errors: 0,
        expect: &[
            Expect {
                at: 14,
                firing: &[],
            },
            Expect {
                at: 27,
                firing: &[alert("TsmTraceRestartUnsafe", "warning", &[])],
            },
        ],
    },
    Scenario {
        name: "bpffs unmounted under the daemon at minute 3",
        capture: LATE_MODULE,
        derive: None,
        timeline: QUIET,
        // The daemon's look at its pins (replay pins nothing: 0).
        daemon: &[Daemon::Set("tsm_trace_pins_missing", |k| {
            Some(if k >= 3 { 10.0 } else { 0.0 })
        })],
        fresh_errors: 0,
        expect: &[
            Expect {
                at: 12,
                firing: &[],
            },
            Expect {
                at: 14,
                firing: &[alert("TsmTraceRestartUnsafe", "warning", &[])],
            },
        ],
    },
    Scenario {
        name: "IDE streams: connects without a Secure stream, a stream a disconnect leaves registered",
        capture: IDE,
        derive: None,
        // Minute 3: op 3 (root port never Secure). Quiet until 38, when the window no longer
        // holds it. Minutes 39-45: ops 4-10 (5: endpoint never Secure at 40; 7, 8: failed
        // connects at 42, 43; 10: the leak at 45). Minutes 51-53: ops 11-13 (13: the leaked
        // stream released at 53).
        timeline: &[
            Seg::Hold(1),
            Seg::Ops(3),
            Seg::Hold(35),
            Seg::Ops(7),
            Seg::Hold(5),
            Seg::Ops(3),
            Seg::Hold(5),
        ],
        // replay reads no sysfs: the leak's host_bridge label is empty (absent).
        daemon: &[],
        fresh_errors: 0,
        expect: &[
            Expect { at: 2, firing: &[] },
            Expect {
                at: 5,
                firing: &[IDE_NOT_SECURE],
            },
            Expect {
                at: 38,
                firing: &[],
            },
            Expect {
                at: 41,
                firing: &[IDE_NOT_SECURE],
            },
            // The leak from 45, for 2m; the failed connects (2 of 4 in 30m) pending since 43.
            Expect {
                at: 47,
                firing: &[IDE_NOT_SECURE, IDE_LEAK],
            },
            // Released at 53; the connect failures fire from 48.
            Expect {
                at: 55,
                firing: &[IDE_NOT_SECURE, CONNECT_FAILURES],
            },
        ],
    },
    Scenario {
        name: "a bind stuck in firmware: an operation in flight for minutes",
        capture: LATE_MODULE,
        derive: None,
        timeline: QUIET,
        // The daemon's: replay reads no kernel entries. A call entered at minute 3 never
        // returns; its age (from the kernel's entry stamp) grows a minute a minute.
        daemon: &[Daemon::Set(
            "tsm_trace_operation_in_flight_oldest_seconds",
            |k| Some(k.saturating_sub(3) as f64 * 60.0),
        )],
        fresh_errors: 0,
        expect: &[
            // 300 s at minute 8 is not above the threshold; 360 s at 9, pending for 1m.
            Expect { at: 9, firing: &[] },
            Expect {
                at: 11,
                firing: &[alert("TsmOperationStuck", "warning", &[JOB])],
            },
        ],
    },
];
