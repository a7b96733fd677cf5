#!/bin/sh
# /scenarios/run.sh for `cargo xtask bench` (parsed by xtask/src/bench/vm.rs). xtask prepends
# the sizes (IDLE_S, CYCLES, HOT_N, LAT_N, ACC_N). Needs /bin/tsm-trace and /bin/bench_vm.
# bpftool and bpftrace are not in the VM: bench_vm reads program stats through the bpf syscall.
# Sections:
#   bench_env        guest CPU, kernel, bpf_stats_enabled
#   idle             daemon CPU time over IDLE_S seconds, probes attached, no events
#   pairs            which empty baseline (bench_empty/_ret) pairs with which of our programs
#   cost_before      run_time_ns/run_cnt of every program after 3 warm-up cycles
#   cost_stats       the same after CYCLES more bind/unbind cycles (deltas are compared)
#   daemon_fdinfo    /proc/<daemon>/fdinfo of its BPF program fds (what the kernel shows there)
#   hotpath          run_cnt deltas over HOT_N non-TSM ioctls + HOT_N getpid calls
#   latency          LAT_N operations: kretprobe → visible on /metrics, microseconds
#   acc_trace        `tsm-trace trace --json` over ACC_N binds with injected delays
#   acc_truth        the stand-in's `last` line after each of those binds
IDLE_S=${IDLE_S:-30}
CYCLES=${CYCLES:-200}
HOT_N=${HOT_N:-1000000}
LAT_N=${LAT_N:-100}
ACC_N=${ACC_N:-12}
. /scenarios/lib.sh
BIN=/bin/tsm-trace
H=/bin/bench_vm
PORT=9477


{
	echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//;s/ /_/g')"
	echo "cpus=$(grep -c ^processor /proc/cpuinfo)"
	echo "kernel=$(uname -r)"
	echo "bpf_stats_file=$([ -w /proc/sys/kernel/bpf_stats_enabled ] && echo yes || echo no)"
	echo "bpftool=$(command -v bpftool >/dev/null && echo yes || echo no)"
	echo "bpftrace=$(command -v bpftrace >/dev/null && echo yes || echo no)"
} > /tmp/env
frame bench_env /tmp/env

lo_up
$BIN run --listen 127.0.0.1:$PORT --grace 1s $DRV $PCI_SYMS \
	> /tmp/daemon.out 2> /tmp/daemon.err &
DAEMON=$!
i=0
until wget -q -O /dev/null http://127.0.0.1:$PORT/readyz 2>/dev/null; do
	i=$((i + 1))
	[ $i -gt 600 ] && break
	sleep 0.1
done
sleep 1

# ---- 5. Idle: probes attached, no events ----------------------------------
$H idle $DAEMON $IDLE_S > /tmp/idle 2>&1
frame idle /tmp/idle

# ---- 1. In-kernel cost, side by side with empty baselines -----------------
$H empty tsm_op_ioctl=iommufd_vdevice_tsm_op_ioctl tsm_bind=tsm_bind tsm_unbind=tsm_unbind \
	vdevice_abort=iommufd_vdevice_abort pci_tsm_bind=$PCI_BIND pci_tsm_unbind=$PCI_UNBIND \
	driver_bind=standin_tdi_bind driver_unbind=standin_tdi_unbind kvm_destroy_vm=kvm_destroy_vm \
	> /tmp/pairs 2> /tmp/pairs.err &
EMPTY=$!
wait_for /tmp/pairs.err 'baselines attached' 120 || echo "bench_vm empty did not start" >> /tmp/pairs
cat /tmp/pairs.err >> /tmp/pairs
frame pairs /tmp/pairs

echo 1 > /proc/sys/kernel/bpf_stats_enabled
cycle() {
	v=$((1000 + $1))
	ctl vm_create $v
	ctl vdev_create $v 0000:00:02.0 $v $1
	ctl ioctl $v 1 0
	ctl ioctl $v 2 0
	ctl vdev_destroy $v
	ctl vm_destroy $v
}
# Warm-up, not counted: under TCG the first runs of freshly JITed code include translating it.
for i in 1 2 3; do cycle $((CYCLES + i)); done
$H stats > /tmp/cost_before 2>&1
frame cost_before /tmp/cost_before
i=1
while [ $i -le "$CYCLES" ]; do
	cycle $i
	i=$((i + 1))
done
$H stats > /tmp/cost_stats 2>&1
frame cost_stats /tmp/cost_stats
for fd in /proc/$DAEMON/fd/*; do
	case "$(readlink "$fd")" in
	anon_inode:bpf-prog) echo "fd=${fd##*/} $(tr '\n\t' '  ' < /proc/$DAEMON/fdinfo/${fd##*/})" ;;
	esac
done > /tmp/fdinfo 2>&1
frame daemon_fdinfo /tmp/fdinfo
kill $EMPTY
wait $EMPTY 2>/dev/null

# ---- 2. No hot-path cost -------------------------------------------------
$H hotpath $HOT_N > /tmp/hotpath 2>&1
frame hotpath /tmp/hotpath
echo 0 > /proc/sys/kernel/bpf_stats_enabled

# ---- 6. End-to-end latency: kretprobe → /metrics -------------------------
ctl vm_create 900
ctl vdev_create 900 0000:00:03.0 900 9
$H latency $LAT_N $CTL 900 $PORT > /tmp/latency 2>&1
frame latency /tmp/latency
[ $((LAT_N % 2)) = 1 ] && ctl ioctl 900 2 0
ctl vdev_destroy 900
ctl vm_destroy 900
kill -TERM $DAEMON
wait $DAEMON
echo "exit=$?" >> /tmp/daemon.err
frame daemon_err /tmp/daemon.err

# ---- 7. Accuracy: driver frame vs the module's own measurement -----------
$BIN trace --json --grace 1s $DRV $PCI_SYMS > /tmp/acc.jsonl 2> /tmp/acc.err &
TRACE=$!
wait_for /tmp/acc.err 'tracing with' 120 || echo "tsm-trace trace did not start" >> /tmp/acc.err
ctl vm_create 950
ctl vdev_create 950 0000:00:02.0 950 5
# Warm-up binds (not compared): the first runs of freshly JITed programs under TCG include
# translating them, which lands inside the measured frames.
for i in 1 2; do ctl ioctl 950 1 0; ctl ioctl 950 2 0; done
sleep 0.5
: > /tmp/truth
i=0
while [ $i -lt "$ACC_N" ]; do
	case $((i % 4)) in
	0) us=0 ;;
	1) us=1000 ;;
	2) us=5000 ;;
	3) us=20000 ;;
	esac
	ctl delay_us $us
	ctl ioctl 950 1 0
	echo "delay_us=$us $(cat $LAST)" >> /tmp/truth
	ctl delay_us 0
	ctl ioctl 950 2 0
	i=$((i + 1))
done
ctl vdev_destroy 950
ctl vm_destroy 950
sleep 1
kill -INT $TRACE
wait $TRACE
echo "exit=$?" >> /tmp/acc.err
frame acc_err /tmp/acc.err
frame acc_trace /tmp/acc.jsonl
frame acc_truth /tmp/truth
exit 0
