#!/bin/sh
# /scenarios/run.sh for `cargo xtask e2e` (xtask/src/e2e.rs): `tsm-trace run` serves /metrics
# on a virtio-net NIC (guest port 9477, forwarded by qemu user networking to a host port that a
# real Prometheus scrapes) while the tsm_standin fixture plays a scenario.
#
# With tsm_e2e.otlp=PORT the daemon also sends its spans to the host's OTLP receiver
# (10.0.2.2:PORT, xtask/src/e2e/otlp.rs).
#
# The host runs a tiny control server on 10.0.2.2:<tsm_e2e.ctl=PORT on the kernel command line>;
# GET /<gate> answers 200 once the host has opened that gate, 503 before:
#   /ready           opened when Prometheus has scraped the daemon (so counters start at 0);
#   /scenario-done   always open: tells the host the scenario is over;
#   /done            opened when the host has evaluated every query; then the guest stops.
#
# Scenario: ROUNDS rounds (tsm_e2e.rounds=N, default 8), GAP seconds apart (tsm_e2e.gap=S,
# default 2), each with fresh VMs and vDevices: a 15 ms bind that succeeds, EBUSY (VM B binds
# the same device), EIO injected at the TSM driver, an unbind, three vDevice teardowns and two
# VM destructions. Round 2 also leaks two bindings (on other devices, so later rounds still bind):
# EFAULT after a successful bind (ioctl_failed_after_bind) and a vDevice torn down without
# unbind (vdevice_teardown_without_unbind). Their VM is never destroyed (the stand-in would keep
# a dangling struct kvm pointer in the leaked binding).
. /scenarios/lib.sh
CTLPORT=
OTLP=
ROUNDS=8
GAP=2
for a in $(cat /proc/cmdline); do
	case "$a" in
	tsm_e2e.ctl=*) CTLPORT=${a#*=} ;;
	tsm_e2e.rounds=*) ROUNDS=${a#*=} ;;
	tsm_e2e.gap=*) GAP=${a#*=} ;;
	tsm_e2e.otlp=*) OTLP="--otlp-endpoint http://10.0.2.2:${a#*=}" ;;
	esac
done
log() { echo "e2e: $*"; echo "$(cut -d' ' -f1 /proc/uptime) $*" >> /tmp/story; }
# ctl NAME CMD...: one stand-in command, written by this shell (so the VMs it creates are owned
# by a process that lives until the end, like a VMM); the ground truth goes to /tmp/steps.
ctl() {
	name=$1
	shift
	if echo "$*" 2>/dev/null > "$CTL"; then w=ok; else w=fail; fi
	echo "step=$name write=$w $(cat $D/last)" >> /tmp/steps
}
# Same from a child process (another "VMM").
ctl_child() {
	name=$1
	shift
	sh -c "echo '$*' > $CTL" 2>/dev/null && w=ok || w=fail
	echo "step=$name write=$w $(cat $D/last)" >> /tmp/steps
}
# gate NAME: 0 if the host has opened /NAME. (No wget -T: it segfaults in busybox 1.35.)
gate() { wget -q -O /dev/null "http://10.0.2.2:$CTLPORT/$1" 2>/dev/null; }
# wait_gate NAME SECONDS
wait_gate() {
	i=0
	until gate "$1"; do
		i=$((i + 1))
		[ $i -gt "$2" ] && return 1
		# Say why once (on the console), in case the host is unreachable.
		[ $i -eq 5 ] && wget -O /dev/null "http://10.0.2.2:$CTLPORT/$1"
		sleep 1
	done
}
finish() {
	wget -q -O /tmp/metrics http://127.0.0.1:9477/metrics 2>/dev/null
	wget -q -O /tmp/bindings http://127.0.0.1:9477/bindings 2>/dev/null
	[ -n "$DAEMON" ] && kill -TERM "$DAEMON" && wait "$DAEMON"
	ip addr > /tmp/net 2>&1
	frame story /tmp/story
	frame steps /tmp/steps
	frame net /tmp/net
	frame daemon_err /tmp/daemon.err
	frame daemon_out /tmp/daemon.out
	frame metrics /tmp/metrics
	frame bindings /tmp/bindings
	exit "$1"
}
: > /tmp/story
: > /tmp/steps
: > /tmp/daemon.out
: > /tmp/daemon.err
DAEMON=

# Network: NIC driver modules (put there by RunOptions::hostfwd), qemu user-net addresses.
for m in /lib/modules/net/*.ko; do
	[ -e "$m" ] && { insmod "$m" || log "insmod $m failed"; }
done
ip link set lo up
i=0
until ip link set eth0 up 2>/dev/null; do
	i=$((i + 1)); [ $i -gt 50 ] && { log "no eth0"; finish 1; }; sleep 0.1
done
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2 2>/dev/null
[ -n "$CTLPORT" ] || { log "no tsm_e2e.ctl= on the kernel command line"; finish 1; }

/bin/tsm-trace run --listen 0.0.0.0:9477 --grace 1s --reconcile-interval 2s --print text \
	--driver-bind standin_tdi_bind --driver-unbind standin_tdi_unbind $PCI_SYMS $OTLP \
	> /tmp/daemon.out 2> /tmp/daemon.err &
DAEMON=$!
wait_ready 9477 60 || { log "daemon not ready"; finish 1; }
log "daemon ready; waiting for the host's Prometheus to scrape it"
wait_gate ready 180 || { log "host never opened /ready"; finish 1; }

round() {
	r=$1
	a=$((r * 10 + 1)); b=$((r * 10 + 2))
	v1=$((r * 10 + 1)); v2=$((r * 10 + 2)); v3=$((r * 10 + 3))
	ctl "r$r.vm_a" vm_create $a
	ctl_child "r$r.vm_b" vm_create $b
	ctl "r$r.vdev1" vdev_create $v1 0000:00:02.0 $a $((1000 + v1))
	ctl "r$r.vdev2" vdev_create $v2 0000:00:02.0 $b $((1000 + v2))
	ctl "r$r.vdev3" vdev_create $v3 0000:00:03.0 $a $((1000 + v3))
	ctl "r$r.delay" delay_us 15000
	ctl "r$r.bind_ok" ioctl $v1 1 0
	ctl "r$r.delay0" delay_us 0
	ctl "r$r.bind_ebusy" ioctl $v2 1 0
	ctl "r$r.inject_eio" inject driver 5
	ctl "r$r.bind_eio" ioctl $v3 1 0
	ctl "r$r.unbind" ioctl $v1 2 0
	ctl "r$r.destroy1" vdev_destroy $v1
	ctl "r$r.destroy2" vdev_destroy $v2
	ctl "r$r.destroy3" vdev_destroy $v3
	ctl "r$r.vm_a_destroy" vm_destroy $a
	ctl "r$r.vm_b_destroy" vm_destroy $b
}

leaks() {
	ctl leak.vm vm_create 901
	ctl leak.vdev_efault vdev_create 901 0000:00:01.0 901 1901
	ctl leak.inject_efault inject respond_efault
	ctl leak.bind_efault ioctl 901 1 0
	ctl leak.vdev_nounbind vdev_create 902 0000:00:01.1 901 1902
	ctl leak.bind_nounbind ioctl 902 1 0
	ctl leak.destroy_nounbind vdev_destroy 902 nounbind
}

r=1
while [ $r -le "$ROUNDS" ]; do
	log "round $r of $ROUNDS"
	round $r
	if [ $r -eq 2 ]; then
		log "leaks: EFAULT after bind, vDevice teardown without unbind"
		leaks
	fi
	[ $r -lt "$ROUNDS" ] && sleep "$GAP"
	r=$((r + 1))
done
log "scenario done"
gate scenario-done || log "host did not acknowledge scenario-done"
wait_gate done 600 || { log "host never opened /done"; finish 1; }
log "host is done"
finish 0
