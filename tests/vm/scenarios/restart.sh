#!/bin/sh
# /scenarios/run.sh for the restart suite (`cargo xtask vm-test`, checked by
# xtask/src/vm/suites/restart.rs): a daemon with its default persistence (probes and state pinned
# in /sys/fs/bpf/tsm-trace, tables in /run/tsm-trace/state.json) sees five bindings, is
# killed with SIGKILL, and while it is down each binding meets another fate:
#   unbind     (a) unbound by its VMM
#   teardown   (b) its vdevice destroyed without unbind
#   vmdestroy  (c) its VM destroyed (bound by a bare tsm_bind, no vdevice holds the VM)
#   vmmexit    (e) its VMM process exits
#   nothing    (d) nothing: still bound, and on kernels with the PCI TSM core its sysfs
#              tsm/bound names the TSM (the false `sysfs_bound_without_owner` case)
# A second daemon starts, is stopped cleanly (SIGTERM, an upgrade), a third starts as
# nobody (--user) and saves an unbind; then `tsm-trace unpin` removes what was pinned.
#
# Sections (data port):
#   rs_truth     "<case> dev=<bdf> <tsm_standin last>" per bind and per while-down action;
#                "vmm pid=<tgid>", "shell pid=<tgid>", "sysfs dev=<bdf> bound=<tsm/bound>"
#   rs_d<n>.err / rs_d<n>.out (--print json) / rs_d<n>_metrics / rs_d<n>_bindings
#   rs_unpin_refused  `unpin` under a live daemon, with --pin-dir /sys/fs/bpf, --dry-run --force,
#                and with a foreign directory in the root: "== <case>", output, "exit=<rc>"
#   rs_other     `tsm-trace check` (stderr too) while daemon 3 runs, and "exit=<rc>"
#   rs_unpin     `tsm-trace unpin` output, "exit=<rc>", and "left=<entries under the root>"
. /scenarios/lib.sh
# This suite is about persistence: the other suites switch it off (lib.sh).
unset TSM_TRACE_NO_PERSIST
BIN=/bin/tsm-trace
T=/tmp/rs_truth
: > "$T"
PORT=9484
echo "shell pid=$$" >> "$T"
mountpoint -q /sys/fs/bpf 2>/dev/null || mount -t bpf bpf /sys/fs/bpf

if [ "$REAL_PCI" = 1 ]; then
	# The real PCI TSM core: A, B, C are TEE-capable (tsm_linktsm); 02.0 and 03.0 plain.
	FLAGS="$LDRV"
	insmod /lib/modules/tsm_linktsm.ko
	D_NOTHING=$A D_TEARDOWN=$B D_UNBIND=$C D_VMDESTROY=0000:00:02.0 D_VMMEXIT=0000:00:03.0
	echo register > "$LCTL"
	TSM=$(sed -n 's/.*tsm=\([^ ]*\).*/\1/p' "$LLAST")
	echo "$TSM" > $P/$A/tsm/connect
	echo "$TSM" > $P/$C/tsm/connect
	ctl realpci 1
else
	FLAGS="$DRV $PCI_SYMS"
	D_NOTHING=0000:00:02.0 D_TEARDOWN=0000:00:03.0 D_UNBIND=0000:00:01.0
	D_VMDESTROY=0000:00:01.1 D_VMMEXIT=0000:00:01.3
fi

# rec CASE DEV: the stand-in's record of the command just run.
rec() { echo "$1 dev=$2 $(cat "$LAST")" >> "$T"; }
start_daemon() { # start_daemon N [FLAG...]
	n=$1
	shift
	$BIN run --listen 127.0.0.1:$PORT --grace 1s --reconcile-interval 1s --print json \
		$FLAGS "$@" > /tmp/rs_d$n.out 2> /tmp/rs_d$n.err &
	DAEMON=$!
	wait_ready $PORT 60
}
snap() { # snap N: past the grace period and a reconciliation
	sleep 3
	wget -q -O /tmp/rs_d$1_metrics http://127.0.0.1:$PORT/metrics
	wget -q -O /tmp/rs_d$1_bindings http://127.0.0.1:$PORT/bindings
	# The kernel's own word on every device's link and binding, at the same moment.
	: > /tmp/rs_d$1_sysfs
	for d in /sys/bus/pci/devices/*; do
		[ -f "$d/tsm/connect" ] || continue
		echo "${d##*/} connect=$(cat "$d/tsm/connect") bound=$(cat "$d/tsm/bound" 2>/dev/null)" >> /tmp/rs_d$1_sysfs
	done
}
dump() {
	for n in 1 2 3; do
		for f in rs_d$n.err rs_d$n.out rs_d${n}_metrics rs_d${n}_bindings rs_d${n}_sysfs; do
			[ -e /tmp/$f ] && frame $f /tmp/$f
		done
	done
	frame rs_truth "$T"
}

lo_up
start_daemon 1
ctl vm_create 1
ctl vdev_create 1 $D_NOTHING 1 71
ctl ioctl 1 1 0; rec nothing $D_NOTHING
ctl vdev_create 2 $D_TEARDOWN 1 72
ctl ioctl 2 1 0; rec teardown $D_TEARDOWN
ctl vdev_create 3 $D_UNBIND 1 73
ctl ioctl 3 1 0; rec unbind $D_UNBIND
[ "$REAL_PCI" = 1 ] && ctl realpci 0
ctl vm_create 3
ctl tsm_bind $D_VMDESTROY 3 74; rec vmdestroy $D_VMDESTROY
# A VMM of its own binds and lives on until it is killed.
ctl vm_create 5
ctl vdev_create 5 $D_VMMEXIT 5 75
(
	echo "ioctl 5 1 0" > "$CTL"
	echo "vmmexit dev=$D_VMMEXIT $(cat "$LAST")" >> "$T"
	exec sleep 600
) &
VMM=$!
echo "vmm pid=$VMM" >> "$T"
wait_for "$T" vmmexit 20
[ "$REAL_PCI" = 1 ] && ctl realpci 1
snap 1
kill -KILL $DAEMON
wait $DAEMON 2>/dev/null
echo "exit=$? (SIGKILL)" >> /tmp/rs_d1.err

# ---- while no daemon runs ----
ctl ioctl 3 2 0; rec down_unbind $D_UNBIND
ctl vdev_destroy 2 nounbind; rec down_teardown $D_TEARDOWN
ctl vm_destroy 3; rec down_vmdestroy $D_VMDESTROY
kill -KILL $VMM
wait $VMM 2>/dev/null
echo "down_vmmexit dev=$D_VMMEXIT" >> "$T"
if [ "$REAL_PCI" = 1 ]; then
	for d in $D_NOTHING $D_TEARDOWN $D_UNBIND; do
		echo "sysfs dev=$d bound=$(cat $P/$d/tsm/bound 2>&1 | tr ' ' '_')" >> "$T"
	done
fi

start_daemon 2
snap 2
kill -TERM $DAEMON
wait $DAEMON
echo "exit=$?" >> /tmp/rs_d2.err
# The third runs as nobody after attaching (as the DaemonSet does): it must still save the
# table (an unbind while it runs) in the state directory handed over to it.
start_daemon 3 --user 65534:65534
snap 3
ctl ioctl 1 2 0; rec d3_unbind $D_NOTHING
sleep 1
# Another session on the same functions: `check` must warn that daemon 3's programs run too
# (the daemons themselves, taking over their own pinned epoch, must not).
{
	$BIN check $FLAGS 2>&1
	echo "exit=$?"
} > /tmp/rs_other
frame rs_other /tmp/rs_other
# unpin must not take a live daemon's pins, nor anything outside tsm-trace's own directory;
# --dry-run --force checks every real pin (maps by name, links by their program's name).
{
	echo "== busy"
	$BIN unpin 2>&1
	echo "exit=$?"
	echo "== wrong-dir"
	$BIN unpin --pin-dir /sys/fs/bpf 2>&1
	echo "exit=$?"
	echo "== dry-run"
	$BIN unpin --dry-run --force 2>&1
	echo "exit=$?"
	echo "links=$(ls /sys/fs/bpf/tsm-trace/*/links | wc -l)"
} > /tmp/rs_unpin_refused
kill -TERM $DAEMON
wait $DAEMON
echo "exit=$?" >> /tmp/rs_d3.err
echo "d3_state owner=$(ls -ln /run/tsm-trace/state.json | awk '{print $3}') has_nothing=$(sed -n 's/.*"bindings":\(.*\),"leaks":.*/\1/p' /run/tsm-trace/state.json | grep -c "$D_NOTHING")" >> "$T"

mkdir /sys/fs/bpf/tsm-trace/foreign
{
	echo "== foreign"
	$BIN unpin 2>&1
	echo "exit=$?"
} >> /tmp/rs_unpin_refused
rmdir /sys/fs/bpf/tsm-trace/foreign
frame rs_unpin_refused /tmp/rs_unpin_refused
{
	$BIN unpin 2>&1
	echo "exit=$?"
	echo "left=$(ls -A /sys/fs/bpf/tsm-trace 2>/dev/null | wc -l) state=$([ -e /run/tsm-trace/state.json ] && echo yes || echo no)"
} > /tmp/rs_unpin
frame rs_unpin /tmp/rs_unpin
dump

# Cleanup (untraced).
ctl vdev_destroy 1
ctl vdev_destroy 5
if [ "$REAL_PCI" = 1 ]; then
	echo "$TSM" > $P/$A/tsm/disconnect 2>/dev/null
	echo "$TSM" > $P/$C/tsm/disconnect 2>/dev/null
	ctl realpci 0
	echo unregister > "$LCTL" 2>/dev/null
fi
exit 0
