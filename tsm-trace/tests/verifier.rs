//! Loads every eBPF program through the running kernel's verifier (load, not attach: the
//! development kernel has no kprobes). Needs root; without it the test says so and skips, and
//! under `CI=true` fails.

use tsm_trace::probes;
use tsm_trace_common::{
    ARG_PCI_TDI, ArgLoc, FieldKinds, GuestReqArgs, IdeOffsets, IntField, IntKind, KvmOffsets,
    OFFSET_UNKNOWN, Offsets, ReqFields,
};

fn is_root() -> bool {
    tsm_trace::privileges::check_privileges().is_ok()
}

fn load_with(offsets: &Offsets) {
    let mut ebpf = match probes::open(offsets, None, None) {
        Ok(e) => e,
        Err(e) => panic!("opening the eBPF object failed: {}", probes::chain(&e)),
    };
    if let Err(e) = probes::load_all(&mut ebpf) {
        // ProbeError::Verifier's Display carries the whole verifier log.
        panic!("{e}");
    }
    // The object also holds the empty baselines of `cargo xtask bench` (`bench_*`, never
    // attached by tsm-trace); every other program must be in the compatibility table.
    const BENCH_PROGRAMS: &[&str] = &["bench_empty", "bench_empty_ret"];
    let bench = ebpf
        .programs()
        .filter(|(name, _)| BENCH_PROGRAMS.contains(name))
        .count();
    assert_eq!(
        bench,
        BENCH_PROGRAMS.len(),
        "the benchmark baselines are in the object"
    );
    let loaded = ebpf.programs().count() - bench;
    let expected: usize = probes::TARGETS
        .iter()
        .map(|t| probes::program_names(t).count())
        .sum::<usize>()
        + probes::deep::PROGRAMS.len();
    assert_eq!(
        loaded, expected,
        "every program in the compatibility table (and trace --deep's pair) is in the object"
    );
    // tsm-trace loads `trace --deep`'s pair only when asked, and never the baselines: load
    // them here so they pass the verifier too.
    let deep = probes::deep::PROGRAMS.iter().map(|(n, _)| *n);
    for name in deep.chain(BENCH_PROGRAMS.iter().copied()) {
        let p: &mut aya::programs::KProbe = ebpf
            .program_mut(name)
            .expect("program present")
            .try_into()
            .expect("deep and bench programs are kprobes");
        if let Err(e) = p.load() {
            panic!("program {name}: {}", probes::chain(&e));
        }
    }
    for (name, prog) in ebpf.programs() {
        assert!(prog.fd().is_ok(), "program {name} was not loaded");
    }
}

#[test]
fn every_program_passes_the_verifier() {
    if !is_root() {
        tsm_trace::test_support::skip_unless_ci(
            "every_program_passes_the_verifier needs root (or CAP_BPF+CAP_PERFMON) to load eBPF programs",
        );
        return;
    }
    // Offsets live in a map, so the verifier walks every path whatever they are; loading with
    // both still checks that writing them after load works.
    load_with(&Offsets::UNKNOWN);
    let kvm = KvmOffsets {
        userspace_pid: 40,
        stats_id: 48,
        userspace_pid_kind: IntKind::of(4, true),
        stats_id_len: 48,
    };
    let u32k = IntKind::of(4, false);
    load_with(&Offsets {
        ucmd_cmd: 24,
        tsm_op_op: 4,
        tsm_op_flags: 8,
        tsm_op_vdevice_id: 12,
        obj_id: 12,
        vdev_obj: 0,
        vdev_virt_id: 32,
        vdev_idev: 24,
        idev_dev: 16,
        dev_name: 0,
        pci_dev_dev: 200,
        pci_dev_tsm: 2400,
        pci_tsm_tsm_dev: 16,
        pci_tsm_tdi: 24,
        tsm_dev_name: 0,
        tdi_pdev: 0,
        tdi_kvm: 8,
        tdi_tdi_id: 16,
        drv_unbind_arg: ARG_PCI_TDI,
        // pci_tsm_guest_req's real layout: both register and stack locations.
        guest_req: GuestReqArgs {
            scope: 1,
            in_len: 4,
            out_len: 5,
            tsm_code: ArgLoc::STACK + 24,
        },
        drv_guest_req: GuestReqArgs::UNKNOWN,
        // The ioctl's UAPI command as v5 (scope), tsm_guest_req's info as post-v5 (op).
        req_cmd: ReqFields {
            vdevice_id: IntField { off: 4, kind: u32k },
            scope: IntField { off: 8, kind: u32k },
            op: IntField::UNKNOWN,
            tvm_arch: IntField::UNKNOWN,
            req_len: IntField {
                off: 12,
                kind: u32k,
            },
            resp_len: IntField {
                off: 16,
                kind: u32k,
            },
        },
        req_info: ReqFields {
            vdevice_id: IntField::UNKNOWN,
            scope: IntField::UNKNOWN,
            op: IntField { off: 0, kind: u32k },
            tvm_arch: IntField { off: 4, kind: u32k },
            req_len: IntField {
                off: 24,
                kind: IntKind::of(8, false),
            },
            resp_len: IntField {
                off: 48,
                kind: IntKind::of(8, false),
            },
        },
        tsm_guest_req_code: 2,
        kvm_tsm_bind: kvm,
        kvm_pci_tsm_bind: kvm,
        kvm_driver_bind: kvm,
        kvm_destroy_vm: KvmOffsets {
            userspace_pid: OFFSET_UNKNOWN,
            stats_id: 7000,
            userspace_pid_kind: IntKind::UNKNOWN,
            stats_id_len: 16,
        },
        module_name: 24,
        // task_struct.mm, mm_struct.arg_start/arg_end as on 7.3.
        task_mm: 2496,
        mm_arg_start: 344,
        mm_arg_end: 352,
        kinds: FieldKinds {
            tsm_op_op: u32k,
            tsm_op_flags: IntKind::of(2, false),
            tsm_op_vdevice_id: IntKind::of(1, true),
            obj_id: u32k,
            vdev_virt_id: IntKind::of(8, false),
            tdi_tdi_id: u32k,
        },
        uapi_op_bind: 1,
        uapi_op_unbind: 2,
        // struct pci_ide as 7.3 lays it out: u8 indices, an int stream id.
        ide: IdeOffsets {
            pdev: 0,
            name: 96,
            stream_id: IntField {
                off: 92,
                kind: IntKind::of(4, true),
            },
            host_bridge_stream: IntField {
                off: 88,
                kind: IntKind::of(1, false),
            },
            ep_index: IntField {
                off: 12,
                kind: IntKind::of(1, false),
            },
            rp_index: IntField {
                off: 52,
                kind: IntKind::of(1, false),
            },
        },
        // Every decoding: int widths, pointers, void.
        ret: core::array::from_fn(|i| match i % 4 {
            0 => IntKind::of(4, true),
            1 => IntKind::of(8, true),
            2 => tsm_trace_common::ret::PTR,
            _ => tsm_trace_common::ret::VOID,
        }),
    });
}
