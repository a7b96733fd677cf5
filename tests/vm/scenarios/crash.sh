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
#   teardown  D1 bound again, its vdevice destroyed without unbind -> leak (still bound)
#   vmdestroy D3 bound by a bare tsm_bind, its VM destroyed -> leak vm_destroyed
#   grace     0.3 s: inside the 0.5 s grace period of that VM check
#   --- checkpoint x: bound D1 D3, leaks D1 vdevice_teardown_without_unbind, D3 vm_destroyed ---
#   vmmexit   a VMM (QEMU's argv: -name guest=crash-vmm) binds D4 and exits -> leak
#             vmm_exited, its VM named crash-vmm in /bindings and the leak series
#   discbound [pci] D2 bound again, then disconnected while bound
#   --- checkpoint y: bound D1 D3 D4, the leaks of x and D4 vmm_exited ---
#   cleanup   D1 and D3 unbound, D4's vdevice destroyed with unbind, VMs destroyed,
#             [pci] D1 disconnected
#   --- checkpoint z: nothing bound, no leak ---
# Cycle 0 is never interrupted; it measures each step's duration (microseconds, mono_us).
# Cycle n >= 1 sends SIGKILL (SIGTERM every fourth cycle) during one step (each step in turn),
# at a fraction of the step's measured duration that varies from cycle to cycle. A daemon
# found dead at a checkpoint is started again (everything since its death waits in the
# pinned ring), then the checkpoint waits past the grace period and a reconciliation and
# takes a snapshot.
#
# Then the faults, one after the other, each with the daemon serving throughout:
#   full      the state directory on a full tmpfs: saves fail, then space is freed
#   corrupt   a corrupted state file at start; newer  one of a newer format
#   unpinned  a pinned map removed by hand; unmounted  bpffs unmounted under the daemon
#   clock     the wall clock stepped by an hour
#
# Sections (data port):
#   cr_log    "cycle=<n> step=<s> sig=<KILL|TERM> at_us=<offset> in=<step at the kill>
#             tmp=<yes|no: a state save was under way (its temporary file left behind)>"
#             and "dur step=<s> us=<n>" (cycle 0)
#   cr_snap   "== cycle=<n> cp=<x|y|z> restarted=<0|1> bound=<D,...> leaks=<D=reason,...>
#             sysfs_want=<D,...: bound in sysfs by the fixture> sysfs=<D=tsm/bound,...>",
#             then the /bindings JSON on one line, then the tsm_trace_* lines of /metrics
#   cr_d.err  every daemon's stderr, in order
#   cr_faults "== <fault> <phase>" then the /metrics lines the checker reads (and for
#             "serving" the /bindings JSON); cr_f.err the fault daemons' stderr
. /scenarios/lib.sh
unset TSM_TRACE_NO_PERSIST
BIN=/bin/tsm-trace
PORT=9485
LOG=/tmp/cr_log
SNAP=/tmp/cr_snap
: > "$LOG"
: > "$SNAP"
: > /tmp/cr_d.err
CYCLES=${CR_CYCLES:-13}
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

up() { /bin/mono_us; }
DAEMON=
start_daemon() {
	echo "--- daemon start (cycle $CYCLE) ---" >> /tmp/cr_d.err
	$BIN run --listen 127.0.0.1:$PORT --grace 500ms --reconcile-interval 500ms \
		$FLAGS >> /tmp/cr_d.err 2>&1 &
	DAEMON=$!
	wait_ready $PORT 90
}
alive() { [ -n "$DAEMON" ] && kill -0 "$DAEMON" 2>/dev/null; }

# settle: until no frame waits for its outer call (a bare call waits up to 1 s) and two sysfs
# reconciliations (0.5 s apart) ran since it began: one after the last change, and past the
# 0.5 s grace period of every VM check the daemon holds. At most 3 s; what is not settled by
# then shows in the snapshot. (A fixed 2 s sleep, 39 times a run, was a fifth of the suite.)
settle() {
	base=
	n=0
	while [ $n -lt 30 ]; do
		set -- $(wget -q -O - http://127.0.0.1:$PORT/metrics 2>/dev/null |
			awk '/^tsm_trace_sysfs_reconcile_runs_total /{r=$2} /^tsm_trace_pending_frames /{p=$2}
				END{print (r==""?-1:r), (p==""?-1:p)}')
		[ -z "$base" ] && base=$1
		[ "$1" -ge $((base + 2)) ] && [ "$2" = 0 ] && return 0
		sleep 0.1
		n=$((n + 1))
	done
}

# checkpoint NAME BOUND LEAKS SYSFS_BOUND: the daemon (started again if it died) after the grace period
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
	settle
	sys=
	want=
	if [ "$REAL_PCI" = 1 ]; then
		for d in $D1 $D2; do
			sys="$sys $d=$(cat $P/$d/tsm/bound 2>/dev/null | tr -d ' ')"
		done
		want=$4
	fi
	echo "== cycle=$CYCLE cp=$1 restarted=$restarted bound=$2 leaks=$3 sysfs_want=$want sysfs=$(echo $sys | tr ' ' ',')" >> "$SNAP"
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
		/bin/mono_us $KILL_AT > /dev/null
		in=$(cat /tmp/cr_step)
		kill -$SIG "$DAEMON" 2>/dev/null
		# Gone before the checkpoint looks (a SIGTERM drains and saves first).
		n=0
		while [ -e /proc/$DAEMON ] && ! grep -q '^State:.*Z' /proc/$DAEMON/status 2>/dev/null &&
			[ $n -lt 300 ]; do
			sleep 0.1
			n=$((n + 1))
		done
		# SIGKILL: a save under way leaves its temporary file.
		tmp=no
		[ -e /run/tsm-trace/state.json.tmp ] && tmp=yes
		echo "cycle=$CYCLE step=$KILL_STEP sig=$SIG at_us=$KILL_AT in=$in tmp=$tmp" >> "$LOG"
	) &
	KILLER=$!
}
T0=0
step() {
	now=$(up)
	if [ "$CYCLE" = 0 ] && [ "$T0" != 0 ]; then
		echo "dur step=$STEP us=$((now - T0))" >> "$LOG"
	fi
	T0=$now
	STEP=$1
	echo "$1" > /tmp/cr_step
	killer "$1"
}
dur() { sed -n "s/^dur step=$1 us=//p" "$LOG"; }

lo_up
CYCLE=0
start_daemon
STEPS="connect bind guest_req storm unbind teardown vmdestroy grace vmmexit discbound cleanup"
while [ "$CYCLE" -lt "$CYCLES" ]; do
	if [ "$CYCLE" -gt 0 ]; then
		i=$(((CYCLE - 1) % 11 + 1))
		KILL_STEP=$(echo $STEPS | cut -d' ' -f$i)
		d=$(dur "$KILL_STEP")
		[ -z "$d" ] && d=10000
		# From 5% to 95% of the step, a different fraction each cycle.
		KILL_AT=$((d * ((CYCLE * 37) % 91 + 5) / 100))
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
	step grace
	sleep 0.3
	T_CP=$(up)
	checkpoint x "$D1,$D3" "$D1=vdevice_teardown_without_unbind,$D3=vm_destroyed" "$D1"
	T0=$((T0 + $(up) - T_CP))
	step vmmexit
	[ "$REAL_PCI" = 1 ] && ctl realpci 0
	ctl vm_create 5
	ctl vdev_create 5 $D4 5 75
	# A stand-in QEMU (its argv names the VM crash-vmm) binds and exits.
	/bin/vmm_bind "$CTL" "ioctl 5 1 0" qemu-system-x86_64 -name guest=crash-vmm,debug-threads=on \
		-machine q35 > /dev/null
	[ "$REAL_PCI" = 1 ] && ctl realpci 1
	step discbound
	if [ "$REAL_PCI" = 1 ]; then
		ctl ioctl 2 1 0
		echo "$TSM" > $P/$D2/tsm/disconnect
	fi
	ctl vdev_destroy 2
	T_CP=$(up)
	checkpoint y "$D1,$D3,$D4" "$D1=vdevice_teardown_without_unbind,$D3=vm_destroyed,$D4=vmm_exited" "$D1"
	T0=$((T0 + $(up) - T_CP))
	step cleanup
	ctl tsm_unbind $D1
	[ "$REAL_PCI" = 1 ] && ctl realpci 0
	ctl tsm_unbind $D3
	ctl vdev_destroy 5
	ctl vm_destroy 5
	[ "$REAL_PCI" = 1 ] && ctl realpci 1
	ctl vm_destroy 1
	[ "$REAL_PCI" = 1 ] && echo "$TSM" > $P/$D1/tsm/disconnect
	step done
	checkpoint z "" "" ""
	CYCLE=$((CYCLE + 1))
done
kill -TERM "$DAEMON"
wait "$DAEMON"
echo "final exit=$?" >> /tmp/cr_d.err
frame cr_log "$LOG"
frame cr_snap "$SNAP"
frame cr_d.err /tmp/cr_d.err

# ---- faults ----
F=/tmp/cr_faults
: > "$F"
: > /tmp/cr_f.err
fstart() {
	echo "--- daemon start ($1) ---" >> /tmp/cr_f.err
	$BIN run --listen 127.0.0.1:$PORT --grace 500ms --reconcile-interval 500ms \
		$FLAGS >> /tmp/cr_f.err 2>&1 &
	DAEMON=$!
	wait_ready $PORT 90
}
fstop() { kill -TERM "$DAEMON"; wait "$DAEMON"; echo "exit=$?" >> /tmp/cr_f.err; }
fsnap() { # fsnap FAULT PHASE
	echo "== $1 $2" >> "$F"
	wget -q -O - http://127.0.0.1:$PORT/bindings | tr -d '\n' >> "$F"
	echo >> "$F"
	wget -q -O - http://127.0.0.1:$PORT/metrics | grep -E '^tsm_trace_(bindings_active|state_|pins_missing|wall_clock_steps_total)' >> "$F"
}
# Wakes the daemon's loop (its housekeeping runs while events come).
poke() { ctl tsm_bind $D3 3 74; ctl tsm_unbind $D3; }
[ "$REAL_PCI" = 1 ] && ctl realpci 0
ctl vm_create 3
# full: the state directory on a 16 KiB tmpfs, filled up.
mkdir -p /tmp/rt && cp -a /run/tsm-trace/. /tmp/rt/
mount -t tmpfs -o size=16k tmpfs /run/tsm-trace
cp -a /tmp/rt/. /run/tsm-trace/
rm -f /run/tsm-trace/state.json
fstart full
dd if=/dev/zero of=/run/tsm-trace/fill bs=1k count=64 2>/dev/null
ctl tsm_bind $D3 3 74
sleep 2
fsnap full serving
rm -f /run/tsm-trace/fill
poke
ctl tsm_bind $D3 3 74
sleep 2
fsnap full freed
fstop
cp /run/tsm-trace/state.json /tmp/rt/state.json
umount /run/tsm-trace
cp /tmp/rt/state.json /run/tsm-trace/state.json
# The binding of D3 survives the fault: a SIGKILLed daemon brings it back.
fstart restored
fsnap full restored
kill -KILL "$DAEMON"; wait "$DAEMON" 2>/dev/null
# corrupt / newer: the file at start.
echo '{"format":2,"boot_id":' > /run/tsm-trace/state.json
fstart corrupt
fsnap corrupt serving
fstop
echo '{"format":99,"boot_id":"x"}' > /run/tsm-trace/state.json
fstart newer
fsnap newer serving
# unpinned: a pinned map removed by hand; noticed at the next sweep (5 s while busy).
rm -f /sys/fs/bpf/tsm-trace/*/maps/LAST_RETURN
for i in 1 2 3 4 5 6 7 8; do poke; sleep 1; done
fsnap unpinned gone
fstop
# The next daemon pins again.
fstart repinned
fsnap unpinned back
# unmounted: bpffs unmounted under the daemon (lazily: its references stay), with D3 bound.
ctl tsm_bind $D3 3 74
umount -l /sys/fs/bpf
for i in 1 2 3 4 5 6 7 8; do ctl tsm_bind $D4 3 75; ctl tsm_unbind $D4; sleep 1; done
# A bare tsm_unbind waits 1 s for an outer call before it counts.
sleep 1.5
fsnap unmounted gone
mount -t bpf bpf /sys/fs/bpf
fstop
# Back: a fresh bpffs, pinned again; D3's binding comes from the state file.
fstart remounted
fsnap unmounted back
ctl tsm_unbind $D3
# clock: an hour forward.
date -s "@$(($(date +%s) + 3600))" > /dev/null
for i in 1 2 3 4 5 6 7 8; do poke; sleep 1; done
fsnap clock stepped
fstop
ctl tsm_unbind $D3
ctl vm_destroy 3
[ "$REAL_PCI" = 1 ] && ctl realpci 1
frame cr_faults "$F"
frame cr_f.err /tmp/cr_f.err
$BIN unpin > /dev/null 2>&1
[ "$REAL_PCI" = 1 ] && echo unregister > "$LCTL" 2>/dev/null
exit 0
