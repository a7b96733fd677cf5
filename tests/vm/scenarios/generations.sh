#!/bin/sh
# /scenarios/run.sh for the generations suite (`cargo xtask vm-test --suite generations`,
# checked by xtask/src/vm/suites/generations.rs). One boot walks every generation of the iommufd
# TSM series the harness built for this kernel (/lib/modules/gen/tsm_standin-<name>.ko):
# first nothing loaded ("upstream PCI TSM only" on 7.x, "nothing" on 6.1), then each
# generation in turn, loaded and unloaded under one daemon (which must re-detect it) and one
# `trace` per generation. No flag names a function: tsm-trace finds and decodes each itself.
# Sections:
#   check_none, metrics_none          `check` and the daemon's /metrics with no stand-in
#   info_<g>, check_<g>, metrics_<g>  the fixture's own info, `check`, /metrics
#   trace_<g>.err, record_<g>.jsonl, truth_<g>   as in the probe suite
#   trace_<g>.jsonl                   trace's operations (JSON lines)
#   info_hold, truth_hold             a bind held 12 s in the stand-in's driver (delay_us):
#                                     the fixture's info and the bind's record (start_ns)
#   bindings_hold, metrics_hold       the daemon's /bindings and /metrics while it runs
#   trace_hold.err                    a trace stopped (SIGINT) while it runs: its summary
#   bindings_after_hold, metrics_after_hold   the same once it returned
#   daemon_err
. /scenarios/lib.sh
BIN=/bin/tsm-trace

step() { # step NAME CTL-COMMAND...: the fixture's ground truth of one command
	name=$1
	shift
	if echo "$*" 2>/dev/null > "$CTL"; then w=ok; else w=fail; fi
	echo "step=$name write=$w $(cat "$LAST")" >> /tmp/truth
}

rmmod tsm_standin
lo_up
$BIN check > /tmp/check_none 2>&1
echo "exit=$?" >> /tmp/check_none
frame check_none /tmp/check_none

$BIN run --listen 127.0.0.1:9478 --grace 1s --reconcile-interval 0 --stuck-after 1s \
	> /tmp/daemon.out 2> /tmp/daemon.err &
DAEMON=$!
wait_for /tmp/daemon.err 'serving http' 60 || { echo "daemon did not serve" >> /tmp/daemon.err; frame daemon_err /tmp/daemon.err; }
wget -q -O /tmp/metrics_none http://127.0.0.1:9478/metrics
frame metrics_none /tmp/metrics_none

for g in v2 v5 post-v5; do
	ko=/lib/modules/gen/tsm_standin-$g.ko
	[ -f "$ko" ] || continue
	loads=$(grep -c 'a module load made more probes available' /tmp/daemon.err)
	$BIN trace --json --record /tmp/record_$g.jsonl --grace 1s \
		> /tmp/trace_$g.jsonl 2> /tmp/trace_$g.err &
	TRACE=$!
	wait_for /tmp/trace_$g.err 'tracing with' 30 || echo "trace $g did not start" >> /tmp/trace_$g.err
	insmod "$ko"
	wait_for /tmp/trace_$g.err 'now attached' 30 || echo "no rescan after insmod" >> /tmp/trace_$g.err
	# The daemon's rescan for this load (its count of such lines goes up by one).
	i=0
	while [ "$(grep -c 'a module load made more probes available' /tmp/daemon.err)" -le "$loads" ]; do
		i=$((i + 1))
		[ $i -gt 300 ] && { echo "daemon: no rescan after insmod $g" >> /tmp/daemon.err; break; }
		sleep 0.1
	done
	frame info_$g $D/info
	$BIN check > /tmp/check_$g 2>&1
	echo "exit=$?" >> /tmp/check_$g
	frame check_$g /tmp/check_$g
	step vm vm_create 1
	step vdev vdev_create 1 0000:00:02.0 1 77
	step bind ioctl 1 1 0
	step unbind ioctl 1 2 0
	step badop ioctl 1 3 0
	step flags ioctl 1 1 1
	step guest_req tsm_req 1 1 16 64
	step destroy vdev_destroy 1
	step vm_destroy vm_destroy 1
	sleep 0.5
	wget -q -O /tmp/metrics_$g http://127.0.0.1:9478/metrics
	frame metrics_$g /tmp/metrics_$g
	kill -INT $TRACE
	wait $TRACE
	echo "exit=$?" >> /tmp/trace_$g.err
	frame trace_$g.err /tmp/trace_$g.err
	frame trace_$g.jsonl /tmp/trace_$g.jsonl
	frame record_$g.jsonl /tmp/record_$g.jsonl
	frame truth_$g /tmp/truth
	rm -f /tmp/truth
	rmmod tsm_standin
	sleep 1.5
done
wget -q -O /tmp/metrics_after http://127.0.0.1:9478/metrics
frame metrics_after /tmp/metrics_after

# Operations in flight: a bind held 12 s in the stand-in's driver, seen by the daemon and by
# a trace stopped while it runs, gone once it returned.
loads=$(grep -c 'a module load made more probes available' /tmp/daemon.err)
insmod /lib/modules/gen/tsm_standin-v2.ko
i=0
while [ "$(grep -c 'a module load made more probes available' /tmp/daemon.err)" -le "$loads" ]; do
	i=$((i + 1))
	[ $i -gt 300 ] && { echo "daemon: no rescan after insmod (hold)" >> /tmp/daemon.err; break; }
	sleep 0.1
done
frame info_hold $D/info
echo vm_create 1 > "$CTL"
echo vdev_create 1 0000:00:02.0 1 77 > "$CTL"
echo delay_us 12000000 > "$CTL"
$BIN trace --grace 1s > /tmp/trace_hold.out 2> /tmp/trace_hold.err &
TRACE=$!
wait_for /tmp/trace_hold.err 'tracing with' 30 || echo "trace (hold) did not start" >> /tmp/trace_hold.err
(echo ioctl 1 1 0 > "$CTL"; cat "$LAST" > /tmp/hold_truth) &
HOLD=$!
i=0
until wget -q -O - http://127.0.0.1:9478/metrics | grep -q '^tsm_trace_operations_in_flight 1$'; do
	i=$((i + 1))
	[ $i -gt 40 ] && { echo "daemon: the held bind never showed in flight" >> /tmp/daemon.err; break; }
	sleep 0.2
done
# Older than --stuck-after: the daemon logs it.
sleep 1.5
wget -q -O /tmp/bindings_hold http://127.0.0.1:9478/bindings
wget -q -O /tmp/metrics_hold http://127.0.0.1:9478/metrics
kill -INT $TRACE
wait $TRACE
echo "exit=$?" >> /tmp/trace_hold.err
wait $HOLD
sleep 2
wget -q -O /tmp/bindings_after_hold http://127.0.0.1:9478/bindings
wget -q -O /tmp/metrics_after_hold http://127.0.0.1:9478/metrics
frame truth_hold /tmp/hold_truth
frame bindings_hold /tmp/bindings_hold
frame metrics_hold /tmp/metrics_hold
frame trace_hold.err /tmp/trace_hold.err
frame bindings_after_hold /tmp/bindings_after_hold
frame metrics_after_hold /tmp/metrics_after_hold
echo delay_us 0 > "$CTL"
echo vdev_destroy 1 > "$CTL"
echo vm_destroy 1 > "$CTL"
rmmod tsm_standin
kill -TERM $DAEMON
wait $DAEMON
echo "exit=$?" >> /tmp/daemon.err
frame daemon_err /tmp/daemon.err
