#!/bin/sh
# /scenarios/run.sh for the crash suite (`cargo xtask vm-test`, checked by
# xtask/src/vm/suites/crash.rs): a daemon with its default persistence is killed at instants
# spread across a scripted lifecycle, again and again, and must come back each time with
# exactly the bindings and leaks the fixture made.
#
# One cycle (the devices: see below; [pci]: only on kernels with the PCI TSM core):
#   connect   [pci] D1 and D2 connected to the link TSM through sysfs
#   bind      VM 1 binds D1 (ioctl)                        guest_req  [pci] a guest request on D1
#   storm     STORM bind+unbind pairs of D2 (one write)    unbind     VM 1 unbinds D1
#   teardown  D1 bound again, its vdevice destroyed without unbind
#   vmdestroy D3 bound by a bare tsm_bind, its VM destroyed -> leak vm_destroyed
#   --- checkpoint x: bound D3, leak D3 vm_destroyed ---
#   vmmexit   a VMM binds D4 and is killed                 -> leak vmm_exited
#   discbound [pci] D2 bound again, then disconnected while bound
#   --- checkpoint y: bound D3 D4, leaks D3 vm_destroyed, D4 vmm_exited ---
#   cleanup   D3 unbound, D4's vdevice destroyed with unbind, VMs destroyed, [pci] D1 disconnected
#   --- checkpoint z: nothing bound, no leak ---
# Cycle 0 is never interrupted; it measures each step's duration (centiseconds). Cycle n >= 1
# sends SIGKILL (SIGTERM every fourth cycle) during step (n - 1) mod 10, at a fraction of the
# step's measured duration that varies from cycle to cycle. A daemon found dead at a
# checkpoint is started again (everything since its death waits in the pinned ring), then
# the checkpoint waits past the grace period and a reconciliation and takes a snapshot.
#
# Sections (data port):
#   cr_log    "cycle=<n> step=<s> sig=<KILL|TERM> at_cs=<offset> in=<step at the kill>
#             tmp=<yes|no: a state save was under way (its temporary file left behind)>"
#             and "dur step=<s> cs=<n>" (cycle 0)
#   cr_snap   "== cycle=<n> cp=<x|y|z> restarted=<0|1> bound=<D...> leaks=<D:reason...>
#             sysfs=<dev:tsm/bound...>", then the /bindings JSON on one line, then the
#             tsm_trace_* lines of /metrics that the checker reads
#   cr_d.err  every daemon's stderr, in order
. /scenarios/lib.sh
unset TSM_TRACE_NO_PERSIST
BIN=/bin/tsm-trace
PORT=9485
LOG=/tmp/cr_log
SNAP=/tmp/cr_snap
: > "$LOG"
: > "$SNAP"
: > /tmp/cr_d.err
CYCLES=${CR_CYCLES:-21}
STORM=25
mountpoint -q /sys/fs/bpf 2>/dev/null || mount -t bpf bpf /sys/fs/bpf

if [ "$REAL_PCI" = 1 ]; then
	FLAGS="$LDRV"
	insmod /lib/modules/tsm_linktsm.ko
	D1=$A D2=$C D3=0000:00:02.0 D4=0000:00:03.0
	echo register > "$LCTL"
	TSM=$(sed -n 's/.*tsm=\([^ ]*\).*/\1/p' "$LLAST")
	ctl realpci 1
else
	FLAGS="$DRV $PCI_SYMS"
	D1=0000:00:01.0 D2=0000:00:02.0 D3=0000:00:01.1 D4=0000:00:01.3
fi

up() { cut -d' ' -f1 /proc/uptime | tr -d .; }
DAEMON=
start_daemon() {
	echo "--- daemon start (cycle $CYCLE) ---" >> /tmp/cr_d.err
	$BIN run --listen 127.0.0.1:$PORT --grace 500ms --reconcile-interval 500ms \
		$FLAGS >> /tmp/cr_d.err 2>&1 &
	DAEMON=$!
	wait_ready $PORT 90
}
alive() { [ -n "$DAEMON" ] && kill -0 "$DAEMON" 2>/dev/null; }

# checkpoint NAME BOUND LEAKS: the daemon (started again if it died) after the grace period
# and a reconciliation, against what the fixture made.
checkpoint() {
	# A kill still to come lands before the checkpoint looks, never during its snapshot.
	[ -n "$KILLER" ] && wait "$KILLER" 2>/dev/null
	KILLER=
	restarted=0
	if ! alive; then
		wait "$DAEMON" 2>/dev/null
		start_daemon
		restarted=1
	fi
	sleep 2
	sys=
	if [ "$REAL_PCI" = 1 ]; then
		for d in $D1 $D2; do
			sys="$sys $d:$(cat $P/$d/tsm/bound 2>/dev/null | tr -d ' ')"
		done
	fi
	echo "== cycle=$CYCLE cp=$1 restarted=$restarted bound=$2 leaks=$3 sysfs=$(echo $sys | tr ' ' ',')" >> "$SNAP"
	wget -q -O - http://127.0.0.1:$PORT/bindings | tr -d '\n' >> "$SNAP"
	echo >> "$SNAP"
	wget -q -O - http://127.0.0.1:$PORT/metrics | grep -E '^tsm_trace_(bindings_|leaked_binding_info|leaks_detected_total|operations_total|events_lost_total|correlation_anomalies_total|sysfs_mismatches_total|state_saves_total)' >> "$SNAP"
}

# The killer: during step $KILL_STEP, at $KILL_AT centiseconds into it.
KILL_STEP=none
KILLER=
killer() {
	[ "$1" = "$KILL_STEP" ] || return 0
	(
		usleep $((KILL_AT * 10000))
		in=$(cat /tmp/cr_step)
		kill -$SIG "$DAEMON" 2>/dev/null
		# SIGKILL: a save under way leaves its temporary file.
		sleep 0.2
		tmp=no
		[ -e /run/tsm-trace/state.json.tmp ] && tmp=yes
		echo "cycle=$CYCLE step=$KILL_STEP sig=$SIG at_cs=$KILL_AT in=$in tmp=$tmp" >> "$LOG"
	) &
	KILLER=$!
}
T0=0
step() {
	now=$(up)
	if [ "$CYCLE" = 0 ] && [ "$T0" != 0 ]; then
		echo "dur step=$STEP cs=$((now - T0))" >> "$LOG"
	fi
	T0=$now
	STEP=$1
	echo "$1" > /tmp/cr_step
	killer "$1"
}
dur() { sed -n "s/^dur step=$1 cs=//p" "$LOG"; }

lo_up
CYCLE=0
start_daemon
STEPS="connect bind guest_req storm unbind teardown vmdestroy vmmexit discbound cleanup"
while [ "$CYCLE" -lt "$CYCLES" ]; do
	if [ "$CYCLE" -gt 0 ]; then
		i=$(((CYCLE - 1) % 10 + 1))
		KILL_STEP=$(echo $STEPS | cut -d' ' -f$i)
		d=$(dur "$KILL_STEP")
		[ -z "$d" ] && d=10
		# 10%, 50%, 90% of the step, in turn.
		KILL_AT=$((d * ((((CYCLE - 1) / 10) % 3) * 40 + 10) / 100))
		SIG=KILL
		[ $((CYCLE % 4)) = 0 ] && SIG=TERM
	fi
	step connect
	if [ "$REAL_PCI" = 1 ]; then
		echo "$TSM" > $P/$D1/tsm/connect
		echo "$TSM" > $P/$D2/tsm/connect
	fi
	step bind
	ctl vm_create 1
	ctl vdev_create 1 $D1 1 71
	ctl ioctl 1 1 0
	step guest_req
	[ "$REAL_PCI" = 1 ] && ctl guest_req $D1 1 16 64
	step storm
	ctl vdev_create 2 $D2 1 72
	ctl storm 2 $STORM
	step unbind
	ctl ioctl 1 2 0
	step teardown
	ctl ioctl 1 1 0
	ctl vdev_destroy 1 nounbind
	step vmdestroy
	[ "$REAL_PCI" = 1 ] && ctl realpci 0
	ctl vm_create 3
	ctl tsm_bind $D3 3 74
	ctl vm_destroy 3
	[ "$REAL_PCI" = 1 ] && ctl realpci 1
	T_CP=$(up)
	checkpoint x "$D3" "$D3:vm_destroyed"
	T0=$((T0 + $(up) - T_CP))
	step vmmexit
	[ "$REAL_PCI" = 1 ] && ctl realpci 0
	ctl vm_create 5
	ctl vdev_create 5 $D4 5 75
	(
		echo "ioctl 5 1 0" > "$CTL"
		touch /tmp/cr_vmm_bound
		exec sleep 600
	) &
	VMM=$!
	while [ ! -e /tmp/cr_vmm_bound ]; do sleep 0.05; done
	rm -f /tmp/cr_vmm_bound
	kill -KILL $VMM
	wait $VMM 2>/dev/null
	[ "$REAL_PCI" = 1 ] && ctl realpci 1
	step discbound
	if [ "$REAL_PCI" = 1 ]; then
		ctl ioctl 2 1 0
		echo "$TSM" > $P/$D2/tsm/disconnect
	fi
	ctl vdev_destroy 2
	T_CP=$(up)
	checkpoint y "$D3,$D4" "$D3:vm_destroyed,$D4:vmm_exited"
	T0=$((T0 + $(up) - T_CP))
	step cleanup
	[ "$REAL_PCI" = 1 ] && ctl realpci 0
	ctl tsm_unbind $D3
	ctl vdev_destroy 5
	ctl vm_destroy 5
	[ "$REAL_PCI" = 1 ] && ctl realpci 1
	ctl vm_destroy 1
	[ "$REAL_PCI" = 1 ] && echo "$TSM" > $P/$D1/tsm/disconnect
	step done
	checkpoint z "" ""
	CYCLE=$((CYCLE + 1))
done
kill -TERM "$DAEMON"
wait "$DAEMON"
echo "final exit=$?" >> /tmp/cr_d.err
frame cr_log "$LOG"
frame cr_snap "$SNAP"
frame cr_d.err /tmp/cr_d.err
$BIN unpin > /dev/null 2>&1
[ "$REAL_PCI" = 1 ] && echo unregister > "$LCTL" 2>/dev/null
exit 0
