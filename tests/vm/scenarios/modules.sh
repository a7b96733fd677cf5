#!/bin/sh
# /scenarios/run.sh for the module suite (`cargo xtask vm-test`, checked by
# xtask/src/vm/suites/modules.rs): one daemon and one `trace` session live through three
# insmod/rmmod cycles of tsm_latemod while a VMM holds a binding and another bind is in
# flight (3 s in the stand-in's driver op). tsm_latemod's only function is probed as the
# driver's connect op (--driver-connect latemod_connect): it must attach on every load, be
# reported detached on every unload, and count every call exactly once.
#
# Sections (data port):
#   mod_truth       the fixtures' own records: "vmm_bind <standin last>",
#                   "slow_bind <standin last>", "cycle=<i> <tsm_latemod last>"
#   mod_d.err / mod_d.out (--print json) / mod_metrics_<phase> / mod_bindings_<phase>
#                   phases: cycles (after the last unload), exited (after the VMM exit),
#                   unloaded (after `rmmod tsm_standin` with both bindings in place)
#   mod_t.err / mod_t.jsonl   the trace session
. /scenarios/lib.sh
BIN=/bin/tsm-trace
LM=/sys/kernel/debug/tsm_latemod
TRUTH=/tmp/mod_truth
: > "$TRUTH"
PORT=9479
FLAGS="--grace 1s $DRV $PCI_SYMS --driver-connect latemod_connect"

# wait_count FILE PATTERN N SECONDS: 0 once PATTERN is on N lines of FILE, 1 after SECONDS.
wait_count() {
	w=0
	# (grep -c prints nothing for a file the background job has not created yet)
	while [ "$(grep -c "$2" "$1" 2>/dev/null || :)0" -lt "${3}0" ]; do
		w=$((w + 1))
		if [ $w -gt $(($4 * 10)) ]; then
			echo "timeout waiting for $3 x '$2'" >> "$1"
			dump
			exit 1
		fi
		sleep 0.1
	done
}
dump() { # every log as it is now (also on a timeout, so a failure can be read)
	frame mod_truth "$TRUTH"
	frame mod_d.err /tmp/mod_d.err
	frame mod_d.out /tmp/mod_d.out
	frame mod_t.err /tmp/mod_t.err
	frame mod_t.jsonl /tmp/mod_t.jsonl
}
snapshot() { # snapshot PHASE
	wget -q -O /tmp/mod_metrics_$1 http://127.0.0.1:$PORT/metrics
	wget -q -O /tmp/mod_bindings_$1 http://127.0.0.1:$PORT/bindings
	frame mod_metrics_$1 /tmp/mod_metrics_$1
	frame mod_bindings_$1 /tmp/mod_bindings_$1
}

lo_up
$BIN run --listen 127.0.0.1:$PORT --reconcile-interval 0 --print json $FLAGS \
	> /tmp/mod_d.out 2> /tmp/mod_d.err &
DAEMON=$!
wait_count /tmp/mod_d.err 'serving http' 1 60
$BIN trace --json $FLAGS > /tmp/mod_t.jsonl 2> /tmp/mod_t.err &
TRACE=$!
wait_count /tmp/mod_t.err 'tracing with' 1 60

# A daemon that becomes nobody after attaching and closes its late-attach window after 3 s:
# its capability sets and ids, as the kernel shows them, while the window is open and after.
$BIN run --listen 127.0.0.1:9491 --reconcile-interval 0 --user 65534:65534 \
	--late-attach-window 3s $FLAGS > /dev/null 2> /tmp/mod_p.err &
PRIV=$!
wait_count /tmp/mod_p.err 'serving http' 1 60
ids() {
	echo "paranoid=$(cat /proc/sys/kernel/perf_event_paranoid)"
	grep -E '^(Uid|Gid|Groups|CapEff|CapPrm|CapInh|CapAmb):' /proc/$PRIV/status
}
ids > /tmp/mod_p_open
wait_count /tmp/mod_p.err 'late-attach window is over' 1 20
ids > /tmp/mod_p_closed

# A VMM binds a device and holds it until it is killed.
ctl vm_create 1
ctl vdev_create 1 0000:00:02.0 1 77
(
	echo "ioctl 1 1 0" > "$CTL"
	echo "vmm_bind $(cat "$LAST")" >> "$TRUTH"
	exec sleep 600
) &
VMM=$!
wait_count "$TRUTH" vmm_bind 1 20
# A bind in flight through every cycle: 3 s in the driver's bind op (its VMM, too, holds
# the binding until the end).
ctl vm_create 2
ctl vdev_create 2 0000:00:03.0 2 78
ctl delay_us 3000000
(
	echo "ioctl 2 1 0" > "$CTL"
	echo "slow_bind $(cat "$LAST")" >> "$TRUTH"
	exec sleep 600
) &
SLOW=$!
sleep 0.2

for i in 1 2 3; do
	insmod /lib/modules/tsm_latemod.ko
	wait_count /tmp/mod_d.err 'a module load made more probes available' $i 20
	wait_count /tmp/mod_t.err 'a module load made more probes available' $i 20
	echo $((i + 3)) > $LM/call
	echo "cycle=$i $(cat $LM/last)" >> "$TRUTH"
	rmmod tsm_latemod
	wait_count /tmp/mod_d.err 'module tsm_latemod was unloaded' $i 20
	wait_count /tmp/mod_t.err 'module tsm_latemod was unloaded' $i 20
done
wait_count "$TRUTH" slow_bind 1 20
echo "delay_us 0" > "$CTL"
# Past the correlator's 1 s wait for an outer frame of the last calls.
sleep 1.5
snapshot cycles
# The VMM exits holding its binding: a leak once the 1 s grace has passed.
kill -KILL $VMM
wait $VMM 2>/dev/null
sleep 2.5
snapshot exited

kill -KILL $SLOW
wait $SLOW 2>/dev/null
# rmmod of the module that made both bindings (the stand-in's exit frees its TDIs and
# calls no unbind): with reconciliation off they must still end (cause module_unloaded).
# The stand-in's VM files pin it (their f_op owner), so its vDevices go first, without an
# unbind (the TDIs stay bound), then the VM handles.
ctl vdev_destroy 1 nounbind
ctl vdev_destroy 2 nounbind
ctl vm_destroy 1
ctl vm_destroy 2
sleep 0.5
rmmod tsm_standin
echo "rmmod_standin rc=$?" >> "$TRUTH"
wait_count /tmp/mod_d.err 'module tsm_standin was unloaded' 1 20
sleep 0.5
snapshot unloaded
kill -INT $TRACE
wait $TRACE
echo "exit=$?" >> /tmp/mod_t.err
kill -TERM $DAEMON
wait $DAEMON
echo "exit=$?" >> /tmp/mod_d.err
kill -TERM $PRIV
wait $PRIV
echo "exit=$?" >> /tmp/mod_p.err
frame mod_p_open /tmp/mod_p_open
frame mod_p_closed /tmp/mod_p_closed
frame mod_p.err /tmp/mod_p.err
dump
