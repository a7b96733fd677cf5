#!/bin/sh
# /scenarios/run.sh for the probe suite (`cargo xtask vm-test`, checked by
# xtask/src/vm/suites/probes/). Runs /bin/tsm-trace against the tsm_standin
# fixture and prints, as sections on the data port:
#   trace_a.err / trace_a.jsonl / record_a.jsonl   session A (every scenario)
#   truth_a      one line per step: "step=<name> write=ok|fail <last>"
#   trace_b.*, truth_b   session B (7.x only): the real upstream pci_tsm_bind
#   trace_f.*, truth_f   session F: kernel-side diagnostics at --log-level debug
#   cpus         the guest's CPU count (bounds session F's rate-limited log lines)
#   daemon_*     `tsm-trace run`: /metrics, /bindings, /readyz after a scenario
. /scenarios/lib.sh
BIN=/bin/tsm-trace

step() { # step NAME CTL-COMMAND... (from this long-lived shell: no fork, so
	# binds are not held by a process that exits right away)
	name=$1
	shift
	if echo "$*" 2>/dev/null > "$CTL"; then w=ok; else w=fail; fi
	echo "step=$name write=$w $(cat "$LAST")" >> /tmp/truth
}
step_child() { # same, from a short-lived child process (its own tgid)
	name=$1
	shift
	sh -c "echo '$*' > $CTL" 2>/dev/null && w=ok || w=fail
	echo "step=$name write=$w $(cat "$LAST")" >> /tmp/truth
}
start_trace() { # start_trace NAME ARGS...: background `tsm-trace trace --json`
	n=$1
	shift
	$BIN trace --json --record /tmp/record_$n.jsonl --grace 1s "$@" \
		> /tmp/trace_$n.jsonl 2> /tmp/trace_$n.err &
	TRACE_PID=$!
	wait_for /tmp/trace_$n.err 'tracing with' 60 || echo "tsm-trace $n did not start" >> /tmp/trace_$n.err
}
stop_trace() { # stop_trace NAME
	kill -INT $TRACE_PID
	wait $TRACE_PID
	echo "exit=$?" >> /tmp/trace_$1.err
	frame trace_$1.err /tmp/trace_$1.err
	frame trace_$1.jsonl /tmp/trace_$1.jsonl
	frame record_$1.jsonl /tmp/record_$1.jsonl
	frame truth_$1 /tmp/truth
	rm -f /tmp/truth
}

# ---- Session L: the module is loaded after tsm-trace started ----------------
# (iommufd.ko and kvm.ko often load after boot): the module_load event makes
# tsm-trace look again, resolve the new module BTF and attach.
# A daemon runs alongside: it has already dropped its capabilities (all but CAP_BPF and
# CAP_PERFMON) when the module loads, and must still attach.
rmmod tsm_standin
lo_up
$BIN run --listen 127.0.0.1:9478 --grace 1s --reconcile-interval 0 $DRV $PCI_SYMS \
	> /tmp/daemon_l.out 2> /tmp/daemon_l.err &
DAEMON_L=$!
wait_for /tmp/daemon_l.err 'serving http' 60
start_trace l $DRV $PCI_SYMS
insmod /lib/modules/tsm_standin.ko
wait_for /tmp/trace_l.err 'now attached' 60 || echo "no rescan after insmod" >> /tmp/trace_l.err
wait_for /tmp/daemon_l.err 'now attached' 60 || echo "daemon: no rescan after insmod" >> /tmp/daemon_l.err
step l_vm vm_create 1
step l_vdev vdev_create 1 0000:00:02.0 1 77
step l_bind ioctl 1 1 0
step l_destroy vdev_destroy 1
step l_vm_destroy vm_destroy 1
sleep 0.5
wget -q -O /tmp/metrics_l http://127.0.0.1:9478/metrics
kill -TERM $DAEMON_L
wait $DAEMON_L
echo "exit=$?" >> /tmp/daemon_l.err
frame daemon_l_err /tmp/daemon_l.err
frame daemon_l_metrics /tmp/metrics_l
stop_trace l
rmmod tsm_standin && insmod /lib/modules/tsm_standin.ko

# ---- Session A: every scenario, all layers visible -------------------------
start_trace a $DRV $PCI_SYMS
step vm1 vm_create 1
step_child vm2 vm_create 2
step vdev1 vdev_create 1 0000:00:02.0 1 77
step vdev2 vdev_create 2 nonpci 1 78
step vdev3 vdev_create 3 0000:00:03.0 nokvm 79
step vdev4 vdev_create 4 0000:00:02.0 2 80
step flags ioctl 1 1 1
step novdev ioctl 99 1 0
step nokvm ioctl 3 1 0
step badop ioctl 1 9 0
step nonpci ioctl 2 1 0
step inject_eio inject driver 5
step bind_eio ioctl 1 1 0
step delay delay_us 20000
step inject_efault inject respond_efault
step bind_efault ioctl 1 1 0
step delay0 delay_us 0
step bind_same ioctl 1 1 0
step bind_other_vm ioctl 4 1 0
step unbind ioctl 1 2 0
step rebind ioctl 1 1 0
step destroy1 vdev_destroy 1
step vdev6 vdev_create 6 0000:00:03.0 1 82
step bind6 ioctl 6 1 0
step destroy6 vdev_destroy 6 nounbind
step unbind_direct tsm_unbind 0000:00:03.0
step_child vm3 vm_create 3
step vdev7 vdev_create 7 0000:00:02.0 3 83
step_child bind7 ioctl 7 1 0
step vm4 vm_create 4
step bind_direct tsm_bind 0000:00:03.0 4 5
step vm4_destroy vm_destroy 4
step unbind_nonpci tsm_unbind nonpci
sleep 2
stop_trace a
# Leave no binding behind for the next sessions (untraced).
echo "tsm_unbind 0000:00:02.0" > "$CTL"
echo "tsm_unbind 0000:00:03.0" > "$CTL"

# ---- Session B (7.x): the real upstream pci_tsm_bind ------------------------
if [ $REAL_PCI = 1 ]; then
	start_trace b
	step realpci_on realpci 1
	step vm5 vm_create 5
	step vdev8 vdev_create 8 0000:00:03.0 5 90
	step real_bind ioctl 8 1 0
	step real_unbind ioctl 8 2 0
	step realpci_off realpci 0
	sleep 0.5
	stop_trace b
fi

# ---- Session F: kernel-side diagnostics (aya-log) at --log-level debug ------
# tsm_bind() of a non-PCI device with a poisoned struct kvm * (the stand-in's
# "badkvm"): tsm_bind rejects the device without touching the VM, while the
# entry program's reads of kvm->userspace_pid and kvm->stats_id fault. Each
# must be named (field and offset) in the debug log, and counted. Then a storm
# of 300 bind+unbind pairs from inside the kernel into a one-page ring buffer:
# the full ring buffer must be named (EVENTS) and its drops counted.
start_trace f --log-level debug --ringbuf-size 4096 $DRV $PCI_SYMS
step f_badkvm tsm_bind nonpci badkvm 7
step f_vm vm_create 20
step f_vdev vdev_create 20 0000:00:02.0 20 120
step f_storm storm 20 300
sleep 0.5
stop_trace f
grep -c ^processor /proc/cpuinfo > /tmp/cpus
frame cpus /tmp/cpus

# ---- The daemon: metrics and the bindings view ------------------------------
lo_up
$BIN run --listen 127.0.0.1:9477 --grace 1s --reconcile-interval 0 $DRV $PCI_SYMS \
	> /tmp/daemon.out 2> /tmp/daemon.err &
DAEMON=$!
wait_ready 9477 60 /tmp/readyz
step d_vm vm_create 10
step d_vdev1 vdev_create 11 0000:00:02.0 10 101
step d_vdev2 vdev_create 12 0000:00:03.0 10 102
step d_bind1 ioctl 11 1 0
step d_unbind_first ioctl 11 2 0
step d_rebind ioctl 11 1 0
step d_busy_inject inject driver 16
step d_bind_busy ioctl 12 1 0
step d_bind2 ioctl 12 1 0
step d_teardown_leak vdev_destroy 12 nounbind
sleep 1
wget -q -O /tmp/metrics http://127.0.0.1:9477/metrics
wget -q -O /tmp/bindings http://127.0.0.1:9477/bindings
kill -TERM $DAEMON
wait $DAEMON
echo "exit=$?" >> /tmp/daemon.err
frame daemon_readyz /tmp/readyz
frame daemon_metrics /tmp/metrics
frame daemon_bindings /tmp/bindings
frame daemon_err /tmp/daemon.err
frame truth_d /tmp/truth
exit 0
