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

$BIN run --listen 127.0.0.1:9478 --grace 1s --reconcile-interval 0 \
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
kill -TERM $DAEMON
wait $DAEMON
echo "exit=$?" >> /tmp/daemon.err
frame daemon_err /tmp/daemon.err
