#!/bin/sh
# /scenarios/run.sh for the lifecycle suite (`cargo xtask vm-test`, checked by
# xtask/src/vm/suites/lifecycle/): tsm-trace against the REAL upstream PCI TSM core
# (drivers/pci/tsm.c) with tsm_linktsm as its link TSM and tsm_standin (realpci 1) as the
# bind path, on the q35 machine of RunOptions::tee_pcie:
#   A = 0000:00:04.0  function 0, TEE-capable (a DSM)
#   B = 0000:00:04.1  function 1, probed through A on connect
#   C = 0000:00:05.0  function 0, TEE-capable
#
# Sections (data port):
#   lc_kernel        "pci_tsm=1|0" (0: no CONFIG_PCI_TSM, e.g. 6.1; only lc_check runs)
#   lc_check         `tsm-trace check` with the linktsm driver flags, then "exit=<rc>"
#   lc_vmm_truth / lc_vmm.err / lc_vmm.jsonl   VMs named from their VMMs' argv (every
#                    kernel, the stand-in's path; see the block below)
#   lc_truth         ground truth, one line per record: "step=<name> src=<source> ..."
#                    src=sysfs    file=<path> value=<written> len=<bytes> pid=<writer>
#                                 write=ok|fail [errno=<n> err=<%pe of -n>]
#                                 (/bin/sysfs_write reports the errno; tsm_linktsm's
#                                 `errname` names it with the kernel's own %pe)
#                    src=linktsm  write=... <tsm_linktsm last>
#                    src=standin  write=... <tsm_standin last>
#                    src=event    <one tsm_linktsm events line (the link op's own record)>
#                    src=state    dev=<bdf> connect= bound= dsm= tsm_dir=yes|no (sysfs tsm/)
#                    src=info     <tsm_linktsm info>
#                    src=mark     daemon=<n> lines=<stdout lines so far>  (phase boundaries)
#   lc_trace.err / lc_trace.jsonl / lc_record.jsonl   the `tsm-trace trace` session
#   lc_d1_* / lc_d2_*  daemons: .err, .out (--print json), metrics_<phase>, bindings_<phase>
# strerror texts have spaces replaced by "_".
. /scenarios/lib.sh
BIN=/bin/tsm-trace
TRUTH=/tmp/lc_truth
: > "$TRUTH"
STEP=none

q() { printf '%s' "$1" | tr ' \n' '_~'; }
# kv KEY LINE: value of KEY in a key=value line (first occurrence).
kv() { printf '%s\n' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n 1; }
# wr VALUE FILE: `echo VALUE > FILE` from this long-lived shell (no fork: the VMs and
# bindings it makes are owned by a process that lives on, like a VMM); r=ok or the error.
wr() {
	if echo "$1" 2> /tmp/lc_err > "$2"; then r=ok; else r=$(cat /tmp/lc_err); r=${r##*: }; fi
}
rd() { if [ -e "$1" ]; then cat "$1" 2>&1; else echo absent; fi; }
t() { echo "step=$STEP $*" >> "$TRUTH"; }
step() { STEP=$1; }
# grab: the link ops' own records since the last grab, then clear them.
grab() {
	while IFS= read -r l; do
		[ -n "$l" ] && t "src=event $l"
	done < "$EV"
	echo > "$EV"
}
# sfs VALUE FILE: a sysfs write through the real core, recorded with the errno the kernel
# returned and the kernel's name for it.
sfs() {
	o=$(/bin/sysfs_write "$1" "$2")
	e=$(kv errno "$o")
	n=
	if [ -n "$e" ]; then
		echo "errname $e" > "$LCTL"
		n=" err=$(kv name "$(cat "$LLAST")")"
	fi
	t "src=sysfs file=$2 value=$1 len=$((${#1} + 1)) $o$n"
	grab
}
lctl() { wr "$*" "$LCTL"; t "src=linktsm write=$(q "$r") $(cat "$LLAST")"; grab; }
sctl() { wr "$*" "$CTL"; t "src=standin write=$(q "$r") $(cat "$LAST")"; grab; }
state() {
	t "src=state dev=$1 connect=$(q "$(rd $P/$1/tsm/connect)") bound=$(q "$(rd $P/$1/tsm/bound)") dsm=$(q "$(rd $P/$1/tsm/dsm)") tsm_dir=$([ -d $P/$1/tsm ] && echo yes || echo no)"
}
info() { t "src=info $(cat $L/info)"; }

if [ -f /lib/modules/tsm_linktsm.ko ] && [ $REAL_PCI = 1 ]; then
	HAVE=1
	insmod /lib/modules/tsm_linktsm.ko || HAVE=0
else
	HAVE=0
fi
echo "pci_tsm=$HAVE" > /tmp/lc_kernel
frame lc_kernel /tmp/lc_kernel

# What attaches here (on 6.1: the lifecycle probes absent, each with a reason).
$BIN check $LDRV > /tmp/lc_check 2>&1
echo "exit=$?" >> /tmp/lc_check
frame lc_check /tmp/lc_check

# ---- VMs by the names users know (every kernel: the stand-in's bind path) ---------------
# Stand-in VMMs (/bin/vmm_bind: a process with exactly the given argv writes the bind) each
# bind a VM of their own (VM n, vdevice n on 0000:00:02.0, a device every machine has: the
# TEE devices are on PCI TSM kernels only); tsm-trace must name each VM as the argv we
# launched names it. Ground truth: lc_vmm_truth, one line per case: "case=<c> expect=<name>
# stats_id=<the stand-in's own record of kvm->stats_id> pid=<binder> write=ok|fail ..."
# (expect=stats_id: that argv names nothing, the VM's KVM stats id names it).
$BIN trace --json $PCI_SYMS $DRV > /tmp/lc_vmm.jsonl 2> /tmp/lc_vmm.err &
VMM_PID=$!
wait_for /tmp/lc_vmm.err 'tracing with' 60 || echo "tsm-trace did not start" >> /tmp/lc_vmm.err
: > /tmp/lc_vmm_truth
VN=10
# vcase CASE EXPECT ARGV...: a VM and vdevice made by this shell, bound as that VMM, then
# unbound and torn down from this shell.
vcase() {
	c=$1
	e=$2
	shift 2
	VN=$((VN + 1))
	echo "vm_create $VN" > "$CTL"
	st=$(tr ' ' '\n' < "$LAST" | grep '^stats_id=')
	echo "vdev_create $VN 0000:00:02.0 $VN $((VN + 80))" > "$CTL"
	echo "case=$c expect=$e $st $(/bin/vmm_bind "$CTL" "ioctl $VN 1 0" "$@")" >> /tmp/lc_vmm_truth
	echo "ioctl $VN 2 0" > "$CTL"
	echo "vdev_destroy $VN" > "$CTL"
	echo "vm_destroy $VN" > "$CTL"
}
LONG=$(printf 'x%.0s' $(seq 1 300))
vcase qemu web-1 /usr/bin/qemu-system-x86_64 -machine q35 -name web-1 -m 512
vcase libvirt db-2 /usr/bin/qemu-system-x86_64 -name guest=db-2,debug-threads=on -S \
	-object secret,id=masterKey0,format=raw,file=/var/lib/libvirt/qemu/domain-2-db-2/master-key.aes
vcase kata 3f9a1c2b /opt/kata/bin/qemu-system-x86_64 -name sandbox-3f9a1c2b,debug-threads=on -uuid 5a1e
vcase cloud-hypervisor ch-4 /usr/bin/cloud-hypervisor --api-socket path=/run/ch/ch-4.sock --kernel vmlinux
vcase firecracker fc-5 /usr/bin/firecracker --api-sock /run/firecracker.socket --id fc-5
vcase crosvm cv-6 /usr/bin/crosvm run --socket /run/crosvm/cv-6.sock vmlinux
vcase qemu_no_name stats_id /usr/bin/qemu-system-x86_64 -m 512
vcase qemu_name_last stats_id /usr/bin/qemu-system-x86_64 -m 512 -name
vcase qemu_name_past_bound stats_id /usr/bin/qemu-system-x86_64 -append "$LONG" -name past-7
vcase not_a_vmm stats_id /usr/sbin/my-vmm -name not-8
sleep 1
kill -INT $VMM_PID
wait $VMM_PID
echo "exit=$?" >> /tmp/lc_vmm.err
frame lc_vmm_truth /tmp/lc_vmm_truth
frame lc_vmm.err /tmp/lc_vmm.err
frame lc_vmm.jsonl /tmp/lc_vmm.jsonl
if [ $HAVE = 0 ]; then
	echo "lifecycle: skipped (no CONFIG_PCI_TSM or no tsm_linktsm)"
	exit 0
fi

# ---- The trace session: the whole lifecycle through the real core -----------
$BIN trace --json --record /tmp/lc_record.jsonl --grace 1s $LDRV \
	> /tmp/lc_trace.jsonl 2> /tmp/lc_trace.err &
TRACE_PID=$!
wait_for /tmp/lc_trace.err 'tracing with' 60 || echo "tsm-trace did not start" >> /tmp/lc_trace.err

step register
lctl register
TSM=$(kv tsm "$(cat "$LLAST")")
info
state $A; state $B; state $C

step connect_badname
sfs foo $P/$A/tsm/connect
step connect_notsm
sfs tsm9 $P/$A/tsm/connect

step connect_probe_fail
lctl inject probe_fail
sfs "$TSM" $P/$C/tsm/connect
state $C

step connect_eio
lctl inject connect -5
sfs "$TSM" $P/$C/tsm/connect
state $C

step connect_A
lctl delay connect 20000
sfs "$TSM" $P/$A/tsm/connect
lctl delay connect 0
state $A; state $B

step connect_twice
sfs "$TSM" $P/$A/tsm/connect

step vms
sctl vm_create 1
sctl vdev_create 1 $A 1 77
sctl vdev_create 2 $B 1 78
sctl realpci 1

step bind_A
sctl ioctl 1 1 0
state $A

step bind_B
lctl delay bind 20000
sctl ioctl 2 1 0
lctl delay bind 0
state $B

step guest_req
lctl guest_req_residue 5
lctl tsm_code 0xabc
sctl guest_req $A 1 16 64

step guest_req_scope
sctl guest_req $A 2 16 64

step guest_req_eio
lctl inject guest_req -5
sctl guest_req $A 0 8 8

step unbind_A
sctl ioctl 1 2 0
state $A

step rebind_A
sctl ioctl 1 1 0
state $A

step disconnect_bound
sfs "$TSM" $P/$A/tsm/disconnect
state $A; state $B
info

step connect_C
sfs "$TSM" $P/$C/tsm/connect
sctl vdev_create 4 $C 1 80
sctl ioctl 4 1 0
state $C

step remove_C
lctl delay disconnect 20000
sfs 1 $P/$C/remove
lctl delay disconnect 0
t "src=gone dev=$C present=$([ -e $P/$C ] && echo yes || echo no)"

step reconnect_A
sfs "$TSM" $P/$A/tsm/connect
sctl ioctl 1 1 0
sctl ioctl 2 1 0
state $A; state $B

step unregister
lctl unregister
state $A; state $B
info

sleep 1.5
kill -INT $TRACE_PID
wait $TRACE_PID
echo "exit=$?" >> /tmp/lc_trace.err
frame lc_trace.err /tmp/lc_trace.err
frame lc_trace.jsonl /tmp/lc_trace.jsonl
frame lc_record.jsonl /tmp/lc_record.jsonl

# ---- Daemons: reconciliation against the real tsm/bound ---------------------
lo_up
# start_daemon N PORT ARGS...: `tsm-trace run` printing JSON lines, reconciling every 1s.
start_daemon() {
	n=$1
	port=$2
	shift 2
	$BIN run --listen 127.0.0.1:$port --grace 1s --reconcile-interval ${RECONCILE:-1s} --print json \
		$LDRV "$@" > /tmp/lc_d$n.out 2> /tmp/lc_d$n.err &
	DAEMON=$!
	wait_ready $port 60
}
# snap N PORT PHASE: metrics and bindings now, and where the daemon's output stands.
snap() {
	wget -q -O /tmp/lc_d$1_metrics_$3 http://127.0.0.1:$2/metrics
	wget -q -O /tmp/lc_d$1_bindings_$3 http://127.0.0.1:$2/bindings
	# The kernel's word on every device's link at the scrape (tsm_trace_devices).
	for d in $P/*; do
		[ -f $d/tsm/connect ] || continue
		t "src=links phase=$3 dev=${d##*/} connect=$(q "$(rd $d/tsm/connect)") bound=$(q "$(rd $d/tsm/bound)")"
	done
	t "src=mark daemon=$1 phase=$3 lines=$(wc -l < /tmp/lc_d$1.out)"
}
stop_daemon() {
	kill -TERM $DAEMON
	wait $DAEMON
	echo "exit=$?" >> /tmp/lc_d$1.err
	frame lc_d$1.err /tmp/lc_d$1.err
	frame lc_d$1.out /tmp/lc_d$1.out
	for f in /tmp/lc_d$1_metrics_* /tmp/lc_d$1_bindings_*; do
		frame "${f#/tmp/}" "$f"
	done
}

# (a) bound before the daemon starts: the probes never saw the bind.
step d1_prebind
lctl register
TSM=$(kv tsm "$(cat "$LLAST")")
sfs "$TSM" $P/$A/tsm/connect
sctl ioctl 1 1 0
state $A
start_daemon 1 9481
step d1_start
sleep 2.5
snap 1 9481 a
# Its unbind, seen: the unowned binding is gone.
step d1_unbind
sctl ioctl 1 2 0
state $A
sleep 2.5
snap 1 9481 a2
# (c) bound and disconnected while the daemon watches, every probe on: no mismatch.
step d1_bind
sctl ioctl 1 1 0
sctl ioctl 2 1 0
state $A; state $B
sleep 2.5
snap 1 9481 c1
step d1_disconnect
sfs "$TSM" $P/$A/tsm/disconnect
state $A; state $B
sleep 2.5
snap 1 9481 c2
stop_daemon 1

# (b) a binding the daemon saw, whose unbind it misses.
start_daemon 2 9482 --disable pci_tsm_unbind --disable pci_tsm_unbind_any --disable driver_unbind
step d2_connect
sfs "$TSM" $P/$A/tsm/connect
step d2_bind
sctl ioctl 1 1 0
state $A
sleep 2.5
snap 2 9482 b1
step d2_unbind_unseen
lctl unbind $A
state $A
sleep 2.5
snap 2 9482 b2
stop_daemon 2

# (d) a bind still running while sysfs already shows it (3 s between the binding and the
# ioctl's return), reconciled every 100 ms: owned by the call in flight, nothing raised.
RECONCILE=100ms start_daemon 3 9483
step d3_slow_bind
sctl respond_delay_us 3000000
sctl ioctl 1 1 0
state $A
sctl respond_delay_us 0
sleep 1.5
snap 3 9483 d
stop_daemon 3

# ---- Cleanup (untraced) -----------------------------------------------------
step cleanup
sfs "$TSM" $P/$A/tsm/disconnect
for v in 1 2 4; do sctl vdev_destroy $v; done
sctl vm_destroy 1
sctl realpci 0
lctl unregister
frame lc_truth "$TRUTH"
exit 0
