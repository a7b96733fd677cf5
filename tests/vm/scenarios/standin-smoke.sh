#!/bin/sh
# Placeholder /scenarios/run.sh: exercises every tsm_standin ctl command once
# and prints, per step, "step=<name> write=ok|fail <contents of last>".
# `cargo xtask vm-test` (xtask/src/vm/suites/smoke.rs) checks the expected rc of each
# step. Devices: qemu's default i440fx machine has 00:02.0 (VGA) and 00:03.0
# (NIC) on every kernel.
D=/sys/kernel/debug/tsm_standin
CTL=$D/ctl
LAST=$D/last

step() { # step NAME CTL-COMMAND...
	name=$1
	shift
	if (echo "$*" > "$CTL") 2>/dev/null; then w=ok; else w=fail; fi
	echo "step=$name write=$w $(cat "$LAST")"
}
# Same, from a separate process (so the caller pid differs from the shell's).
step_child() {
	name=$1
	shift
	sh -c "echo '$*' > $CTL" 2>/dev/null && w=ok || w=fail
	echo "step=$name write=$w $(cat "$LAST")"
}

steps() {
	step vm1 vm_create 1
	step_child vm2 vm_create 2
	step vm1_again vm_create 1
	step vdev1 vdev_create 1 0000:00:02.0 1 77
	step vdev2_nonpci vdev_create 2 nonpci 1 78
	step vdev3_nokvm vdev_create 3 0000:00:03.0 nokvm 79
	step vdev4_vm2 vdev_create 4 0000:00:02.0 2 80
	step vdev_nodev vdev_create 5 0000:00:1f.7 1 81
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
	step vdev6 vdev_create 6 0000:00:03.0 2 82
	step bind6 ioctl 6 1 0
	step destroy6_nounbind vdev_destroy 6 nounbind
	step disconnect disconnect 0000:00:03.0
	step tsm_bind tsm_bind 0000:00:02.0 2 5
	step tsm_unbind tsm_unbind 0000:00:02.0
	step tsm_unbind_nonpci tsm_unbind nonpci
	step vm2_destroy vm_destroy 2
	step destroy4 vdev_destroy 4
	step vm1_destroy vm_destroy 1
	step destroy2 vdev_destroy 2
	step destroy3 vdev_destroy 3
	step realpci_on realpci 1
	if grep -q 'realpci=1' "$D/info"; then
		step vm3 vm_create 3
		step vdev7 vdev_create 7 0000:00:02.0 3 90
		step real_bind ioctl 7 1 0
		step real_unbind ioctl 7 2 0
		step realpci_off realpci 0
		step destroy7 vdev_destroy 7
		step vm3_destroy vm_destroy 3
	fi
	step bogus frobnicate 1
	step inject_clear inject clear
}

# Shell functions can't run under /bin/section; frame the output by hand.
{
	echo "=== BEGIN steps ==="
	steps
	echo "=== END steps rc=$? ==="
} >> "${TSM_VM_OUT:-/dev/console}" 2>&1
section bound cat "$D/bound"
