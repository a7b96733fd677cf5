#!/bin/sh
# /scenarios/run.sh for `cargo xtask bench` (parsed by xtask/src/bench/vm.rs). xtask prepends
# the sizes (IDLE_S, HOT_N, LAT_N, ACC_N, ROUNDS, PAIRS, RATE_STEPS, COMPARE). Needs
# /bin/tsm-trace, /bin/bench_vm, /scenarios/bench_cost.sh, /scenarios/bench_rate.sh, and /bin/bpftrace for the bpftrace blocks.
# bpftool is not in the VM: bench_vm reads program stats through the bpf syscall.
# Sections:
#   bench_env        guest CPU, kernel, bpf_stats_enabled
#   idle             daemon CPU time over IDLE_S seconds, probes attached, no events
#   cost_*           cost per probed call, see bench_cost.sh
#   rate_*           detail under storms: the highest steady rate without loss, see bench_rate.sh
#   hotpath          run_cnt deltas over HOT_N non-TSM ioctls + HOT_N getpid calls
#   latency          LAT_N operations: kretprobe → visible on /metrics, microseconds
#   acc_trace        `tsm-trace trace --json` over ACC_N binds with injected delays
#   acc_truth        the stand-in's `last` line after each of those binds
#   acc_ftrace       tracefs p:/r: events on the driver's bind op (trace_clock mono), same binds
#   acc_truth_ftrace the stand-in's `last` line after each of those binds
#   acc_firstrun     bpf_stats of a fresh session's programs before (s0), after its first
#                    bind (s1) and after its second (s2), with the stand-in's lines (t1, t2)
IDLE_S=${IDLE_S:-30}
ROUNDS=${ROUNDS:-31}
PAIRS=${PAIRS:-300}
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
# ---- 1. Cost per probed call (bench_cost.sh), nothing else attached ----------
. /scenarios/bench_cost.sh
cost_blocks
# ---- 9. Detail under storms (bench_rate.sh) ------------------------------
. /scenarios/bench_rate.sh
rate_blocks
[ "$COST_ONLY" = 1 ] && exit 0

$BIN run --listen 127.0.0.1:$PORT --grace 1s $DRV $PCI_SYMS \
	> /tmp/daemon.out 2> /tmp/daemon.err &
DAEMON=$!
wait_ready $PORT 60
sleep 1

# ---- 5. Idle: probes attached, no events ----------------------------------
$H idle $DAEMON $IDLE_S > /tmp/idle 2>&1
frame idle /tmp/idle

echo 1 > /proc/sys/kernel/bpf_stats_enabled
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
# No warm-up: the first bind after attach is compared like every other.
acc_binds() { # acc_binds TRUTH_FILE VDEV
	: > "$1"
	i=0
	while [ $i -lt "$ACC_N" ]; do
		case $((i % 4)) in
		0) us=0 ;;
		1) us=1000 ;;
		2) us=5000 ;;
		3) us=20000 ;;
		esac
		ctl delay_us $us
		ctl ioctl "$2" 1 0
		echo "delay_us=$us $(cat $LAST)" >> "$1"
		ctl delay_us 0
		ctl ioctl "$2" 2 0
		i=$((i + 1))
	done
}
acc_binds /tmp/truth 950
ctl vdev_destroy 950
ctl vm_destroy 950
sleep 1
kill -INT $TRACE
wait $TRACE
echo "exit=$?" >> /tmp/acc.err
frame acc_err /tmp/acc.err
frame acc_trace /tmp/acc.jsonl
frame acc_truth /tmp/truth

# ---- 7c. The emulator's part: the same binds timed by the kprobe machinery alone -----------
# A tracefs p:/r: pair on the driver's bind op (no BPF, no fields), timestamps from the
# trace clock `mono` (ktime_get, the module's clock), fresh events: first bind included.
TR=/sys/kernel/tracing
echo > $TR/trace
echo mono > $TR/trace_clock
echo "p:tsma/db standin_tdi_bind" >> $TR/kprobe_events
echo "r:tsma/dbr standin_tdi_bind" >> $TR/kprobe_events
echo 1 > $TR/events/tsma/enable
ctl vm_create 951
ctl vdev_create 951 0000:00:02.0 951 5
acc_binds /tmp/truth_ft 951
ctl vdev_destroy 951
ctl vm_destroy 951
echo 0 > $TR/events/tsma/enable
grep -E ' (db|dbr): ' $TR/trace > /tmp/acc_ftrace
echo > $TR/kprobe_events
echo local > $TR/trace_clock
frame acc_ftrace /tmp/acc_ftrace
frame acc_truth_ftrace /tmp/truth_ft

# ---- 7d. The first run of freshly loaded programs: bpf_stats of a new session's driver-bind
# programs around its first bind and its second (their JIT code is new to the emulator, which
# translates it on first execution).
echo 1 > /proc/sys/kernel/bpf_stats_enabled
$BIN trace --json --grace 1s $DRV $PCI_SYMS > /dev/null 2> /tmp/acc2.err &
TRACE=$!
wait_for /tmp/acc2.err 'tracing with' 120 || echo "tsm-trace trace did not start" >> /tmp/acc2.err
ctl vm_create 952
ctl vdev_create 952 0000:00:02.0 952 5
{
	$H stats | sed 's/^prog /s0 /'
	ctl ioctl 952 1 0
	echo "t1 $(cat $LAST)"
	$H stats | sed 's/^prog /s1 /'
	ctl ioctl 952 2 0
	ctl ioctl 952 1 0
	echo "t2 $(cat $LAST)"
	$H stats | sed 's/^prog /s2 /'
	ctl ioctl 952 2 0
} > /tmp/firstrun 2>&1
echo 0 > /proc/sys/kernel/bpf_stats_enabled
ctl vdev_destroy 952
ctl vm_destroy 952
kill -INT $TRACE
wait $TRACE
frame acc_firstrun /tmp/firstrun
exit 0
