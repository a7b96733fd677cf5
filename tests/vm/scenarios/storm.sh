#!/bin/sh
# /scenarios/run.sh for the storm suite (`cargo xtask vm-test`, checked by
# xtask/src/vm/suites/storm.rs): bind+unbind storms from inside the kernel (tsm_standin's
# `storm <vdev> <n>`: one write, n pairs back to back) and a userspace loop of failing
# ioctls, with the daemon at its default ring-buffer size. /metrics must count exactly
# what the fixture did, however much per-event detail the ring buffer dropped.
#
# Sections (data port):
#   storm_truth          "<phase> <tsm_standin last>" per phase; "fail_loop n= failed="
#                        "parallel <tsm_standin last>" (n started returned ok)
#   storm_metrics_<phase>  /metrics after each phase: start calib s1000 s5000 s20000 fail
#                          parallel
#   storm_d.err          the daemon's log
#   storm_memory         "<when> VmHWM/VmRSS of the daemon" (kB, /proc/PID/status, as the
#                        bench's 4b reads them): attached (idle, probes attached) and end
#                        (after every storm)
#   storm_trace_json storm_trace_text (+ .err)   `tsm-trace trace --json` and `trace`, both
#                        with the smallest ring buffer (4096), during one more storm
#                        ("trace <tsm_standin last>" in storm_truth): the loss is certain, and
#                        the streams must say where (LOST lines) and how much
. /scenarios/lib.sh
BIN=/bin/tsm-trace
PORT=9480
T=/tmp/storm_truth
: > "$T"
snap() {
	sleep 2
	wget -q -O /tmp/storm_metrics_$1 http://127.0.0.1:$PORT/metrics
	frame storm_metrics_$1 /tmp/storm_metrics_$1
}

lo_up
$BIN run --listen 127.0.0.1:$PORT --reconcile-interval 0 --grace 1s $DRV $PCI_SYMS \
	> /dev/null 2> /tmp/storm_d.err &
DAEMON=$!
wait_for /tmp/storm_d.err 'serving http' 60
ctl vm_create 1
ctl vdev_create 1 0000:00:02.0 1 77
snap start
mem() { echo "$1 $(grep -E '^Vm(HWM|RSS):' /proc/$DAEMON/status | tr -d ' \t' | tr ':\n' '= ' | sed 's/kB//g')" >> /tmp/storm_memory; }
mem attached
for phase in calib:10 s1000:1000 s5000:5000 s20000:20000; do
	name=${phase%%:*}
	n=${phase##*:}
	ctl storm 1 $n
	echo "$name $(cat "$LAST")" >> "$T"
	snap $name
done
# A VMM retrying a failing ioctl in a tight loop (vdevice 99 does not exist).
k=0
failed=0
while [ $k -lt 2000 ]; do
	echo "ioctl 99 1 0" 2>/dev/null > "$CTL" || failed=$((failed + 1))
	k=$((k + 1))
done
echo "fail_loop n=$k failed=$failed $(cat "$LAST")" >> "$T"
snap fail
# 64 kernel threads in the driver's bind op at once (50 ms each): more than a kretprobe's
# maxactive, so returns are missed; the threads exit, and a sweep (every 5 s) expires their
# entries.
ctl delay_us 50000
ctl parallel 1 64
echo "parallel $(cat "$LAST")" >> "$T"
ctl delay_us 0
sleep 6
snap parallel
# Two `trace` sessions (text, --json) with a one-page ring buffer during a 1000-pair storm.
for f in json text; do
	[ $f = json ] && J=--json || J=
	$BIN trace $J --ringbuf-size 4096 --grace 1s $DRV $PCI_SYMS > /tmp/trace_$f 2> /tmp/trace_$f.err &
	eval "T_$f=\$!"
done
wait_for /tmp/trace_json.err 'tracing with' 60
wait_for /tmp/trace_text.err 'tracing with' 60
ctl storm 1 1000
echo "trace $(cat "$LAST")" >> "$T"
sleep 1
kill -INT $T_json $T_text
wait $T_json
echo "exit=$?" >> /tmp/trace_json.err
wait $T_text
echo "exit=$?" >> /tmp/trace_text.err
mem end
kill -TERM $DAEMON
wait $DAEMON
echo "exit=$?" >> /tmp/storm_d.err
frame storm_truth "$T"
frame storm_d.err /tmp/storm_d.err
frame storm_memory /tmp/storm_memory
for f in json text; do
	frame storm_trace_$f /tmp/trace_$f
	frame storm_trace_$f.err /tmp/trace_$f.err
done
