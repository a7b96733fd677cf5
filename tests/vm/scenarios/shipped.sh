#!/bin/sh
# /scenarios/run.sh of the deployment test (`cargo xtask test`, step "deployments as
# shipped"; checked by xtask/src/dist/shipped.rs). Runs as a oneshot service under systemd
# (PID 1) in a Debian 12 root, on a 7.x kernel with the PCI TSM core, q35 TEE endpoints and
# the fixtures (tsm_standin: the patch's ioctl as a VMM's; tsm_linktsm: a link TSM).
#
# 1. systemd: `dpkg -i` the package (its postinst enables and starts the unit), then with
#    the unit and /etc/default/tsm-trace exactly as installed: probes attached, /metrics,
#    a bind by a VMM of another user (root; the daemon runs as its dynamic user),
#    `systemctl restart` (binding kept, no leak), an unbind, `systemctl stop` + `dpkg -P`
#    (nothing of ours left), `systemd-analyze security`.
# 2. DaemonSet: the binary of the same package, run as the manifest runs it: uid, capability
#    set, no new privileges, read-only mounts and arguments from /opt/tsm-test/daemonset.env
#    (written by the harness from deploy/kubernetes/daemonset.yaml). A bind, SIGTERM (a pod
#    restart), start again: the binding is kept, no leak.
#
# Sections (data port): sd_install, sd_status1, sd_metrics1, sd_bindings1, sd_status2,
# sd_metrics2, sd_bindings2, sd_metrics3, sd_journal, sd_security, sd_purge, ds_env, ds_err1,
# ds_status1, ds_metrics1, ds_err2, ds_status2, ds_metrics2, ds_bindings2, ds_cleanup; truth: "<what> <facts>" lines.
TB=/opt/tsm-test
BB=$TB/busybox
. /scenarios/lib.sh
PORT=9477
T=/tmp/truth
: > "$T"
fetch() { $BB wget -q -O "$2" "http://127.0.0.1:$PORT$1" 2>/dev/null; }
# ready SECONDS: /readyz answers (ready or degraded). After one daemon never became ready,
# the later waits are short: a broken deployment fails in minutes, with every section.
NEVER_READY=0
ready() {
	i=0
	max=$1
	[ $NEVER_READY = 1 ] && max=10
	until $BB wget -q -O /dev/null "http://127.0.0.1:$PORT/readyz" 2>/dev/null; do
		i=$((i + 1))
		if [ $i -gt $((max * 5)) ]; then
			NEVER_READY=1
			return 1
		fi
		sleep 0.2
	done
}
section_cmd() { # section_cmd NAME CMD...: the command's output and exit status as a section
	n=$1
	shift
	"$@" > /tmp/$n 2>&1
	echo "exit=$?" >> /tmp/$n
	frame "$n" /tmp/$n
}

$BB insmod $TB/tsm_standin.ko || echo "insmod tsm_standin failed" >> "$T"
. /scenarios/lib.sh # REAL_PCI etc. need the stand-in's info
# lib.sh switches persistence off for the other suites; here it is what is tested.
unset TSM_TRACE_NO_PERSIST
$BB insmod $TB/tsm_linktsm.ko || echo "insmod tsm_linktsm failed" >> "$T"
echo register > "$LCTL"
TSM=$(sed -n 's/.*tsm=\([^ ]*\).*/\1/p' "$LLAST")
echo "$TSM" > $P/$A/tsm/connect
echo "fixture real_pci=$REAL_PCI tsm=$TSM dev=$A" >> "$T"
ctl realpci 1

# ---- 1. systemd ----
section_cmd sd_install dpkg -i $TB/tsm-trace.deb
ready 120
echo "sd_ready1 rc=$?" >> "$T"
# The bind, by this shell (root): a VMM of another user than the daemon's.
ctl vm_create 1
ctl vdev_create 1 $A 1 71
ctl ioctl 1 1 0
echo "bind rc=$? $(cat "$LAST")" >> "$T"
sleep 2
section_cmd sd_status1 sh -c "systemctl show -p ActiveState,SubState,NRestarts,MainPID,User,DynamicUser tsm-trace; \
	pid=\$(systemctl show -p MainPID --value tsm-trace); grep -E '^(Uid|Cap(Prm|Eff|Bnd)):' /proc/\$pid/status"
[ $NEVER_READY = 1 ] && section_cmd sd_journal_start journalctl -u tsm-trace --no-pager -o cat
fetch /metrics /tmp/sd_metrics1
fetch /bindings /tmp/sd_bindings1
frame sd_metrics1 /tmp/sd_metrics1
frame sd_bindings1 /tmp/sd_bindings1
systemctl restart tsm-trace
ready 120
echo "sd_ready2 rc=$?" >> "$T"
sleep 3
section_cmd sd_status2 systemctl show -p ActiveState,SubState,NRestarts,MainPID tsm-trace
fetch /metrics /tmp/sd_metrics2
fetch /bindings /tmp/sd_bindings2
frame sd_metrics2 /tmp/sd_metrics2
frame sd_bindings2 /tmp/sd_bindings2
ctl ioctl 1 2 0
echo "unbind rc=$? $(cat "$LAST")" >> "$T"
sleep 2
fetch /metrics /tmp/sd_metrics3
frame sd_metrics3 /tmp/sd_metrics3
section_cmd sd_security systemd-analyze security --no-pager tsm-trace.service
section_cmd sd_journal journalctl -u tsm-trace --no-pager -o cat
# The binary as the package shipped it, for the DaemonSet part.
dpkg-deb -x $TB/tsm-trace.deb $TB/x
section_cmd sd_purge sh -c "systemctl stop tsm-trace; echo stop=\$?; dpkg -P tsm-trace; echo purge=\$?; \
	systemctl daemon-reload; \
	echo unit=\$(systemctl show -p LoadState --value tsm-trace); \
	echo pins=\$(ls -A /sys/fs/bpf | tr '\n' ' '); \
	echo run=\$(ls -A /run | grep -c tsm-trace); \
	echo private=\$(ls -A /run/private 2>/dev/null | grep -c tsm-trace); \
	echo files=\$(find / -xdev \\( -path /opt/tsm-test -o -path /proc -o -path /sys \\) -prune -o -name '*tsm-trace*' -print | tr '\n' ' ')"

# ---- 2. DaemonSet ----
# daemonset.env: DS_UID DS_GID DS_CAPS (setpriv form, e.g. +bpf,+perfmon) DS_NNP (1: no new
# privileges) DS_ROFS (1: read-only root) DS_MKDIR (hostPath DirectoryOrCreate paths)
# DS_RO (mount paths mounted read-only) DS_ARGS (the container's args).
. $TB/daemonset.env
frame ds_env $TB/daemonset.env
for d in $DS_MKDIR; do mkdir -p "$d"; done # as the kubelet makes them: root, 0755
ds_start() { # ds_start N: the daemon as the pod runs it, in its own mount namespace
	NNP=
	[ "$DS_NNP" = 1 ] && NNP=--no-new-privs
	unshare -m sh -c '
		mount --make-rprivate /
		[ "$DS_ROFS" = 1 ] && mount -o remount,bind,ro /
		for p in $DS_RO; do mount -o remount,bind,ro "$p"; done
		exec "$@"' ds \
		setpriv --reuid "$DS_UID" --regid "$DS_GID" --clear-groups \
		--inh-caps -all --bounding-set "-all,$DS_CAPS" $NNP \
		-- $TB/x/usr/bin/tsm-trace $DS_ARGS > /tmp/ds_out$1 2> /tmp/ds_err$1 &
	DS=$!
	ready 120
	echo "ds_ready$1 rc=$?" >> "$T"
	grep -E '^(Uid|Gid|CapEff|CapPrm):' /proc/$DS/status > /tmp/ds_status$1 2>&1
	frame ds_status$1 /tmp/ds_status$1
}
export DS_ROFS DS_RO
ds_start 1
ctl ioctl 1 1 0
echo "ds_bind rc=$? $(cat "$LAST")" >> "$T"
sleep 2
fetch /metrics /tmp/ds_metrics1
frame ds_metrics1 /tmp/ds_metrics1
kill -TERM $DS
wait $DS
echo "ds_exit1 rc=$?" >> "$T"
ds_start 2
sleep 3
fetch /metrics /tmp/ds_metrics2
fetch /bindings /tmp/ds_bindings2
frame ds_metrics2 /tmp/ds_metrics2
frame ds_bindings2 /tmp/ds_bindings2
kill -TERM $DS
wait $DS
echo "ds_exit2 rc=$?" >> "$T"
frame ds_err1 /tmp/ds_err1
frame ds_err2 /tmp/ds_err2
section_cmd ds_cleanup sh -c "$TB/x/usr/bin/tsm-trace unpin; rm -rf /run/tsm-trace; echo left=\$(ls -A /sys/fs/bpf | tr '\n' ' ')"
ctl ioctl 1 2 0
ctl vdev_destroy 1
frame truth "$T"
exit 0
