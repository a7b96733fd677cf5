#!/bin/sh
# /scenarios/run.sh for `cargo xtask demo`: the daemon on a kernel with no TSM hardware.
# The PCI TSM code is the kernel's own (drivers/pci/tsm.c of Debian 7.x); what no hardware
# provides comes from two test modules:
#   tsm_linktsm  a link TSM driver registered with the real tsm_register(), on qemu q35's
#                e1000e endpoints marked TEE-capable (A = 0000:00:04.0, C = 0000:00:05.0)
#   tsm_standin  the iommufd TSM patch's ioctl and tsm_bind (not in any released kernel) and
#                KVM VMs owned by this shell (the "VMM"); `realpci 1` binds through the real
#                pci_tsm_bind().
# E = 0000:01:00.0, an e1000e behind the PCIe root port RP = 0000:00:06.0: tsm_linktsm emulates
# the IDE capability of both in configuration space, and its connect and disconnect call the
# kernel's own pci_ide_stream_* (drivers/pci/ide.c) in SEV-TIO's order.
. /scenarios/lib.sh
RP=0000:00:06.0
say() { echo "# $*" >> /tmp/story; }
lctl() { echo "$*" > $L/ctl; }
# sysw VALUE FILE: echo VALUE > FILE, noting the error if the kernel refuses.
sysw() {
	if ! err=$({ echo "$1" > "$2"; } 2>&1); then say "  -> ${err##*: }"; fi
}

insmod /lib/modules/tsm_linktsm.ko tee=$A,$C
# IDE on the endpoint behind the root port; the kernel's pci_ide_init() finds it on a rescan.
E=$(ls $P/$RP/ | grep -E '^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$' | head -n 1)
lctl ide_emulate $E
echo 1 > $P/$RP/remove
echo 1 > /sys/bus/pci/rescan
lo_up
/bin/tsm-trace run --listen 127.0.0.1:9477 --grace 1s --reconcile-interval 1s --print text \
	$LDRV > /tmp/daemon.out 2> /tmp/daemon.err &
DAEMON=$!
wait_ready 9477 60
# A kernel engineer's view beside the daemon: the driver's own SPDM and IDE helpers, deep.
/bin/tsm-trace trace --time relative --deep 'tsm_linktsm:lt_spdm_*' --deep 'tsm_linktsm:lt_ide_*' \
	$LDRV > /tmp/deep.out 2> /tmp/deep.err &
DEEP=$!
wait_for /tmp/deep.err 'tracing with' 60

say "the TSM driver registers tsm0; the kernel's PCI TSM core offers $A and $C (tsm/ in sysfs)"
lctl register
say "connect $A to tsm0, but the SPDM handshake fails: the check of the device's first response"
say "  (lt_spdm_verify, four calls deep in the driver) returns -EIO, and the driver's connect with it"
lctl spdm_fail 4 5
sysw tsm0 $P/$A/tsm/connect
say "connect $A again (the driver takes 20 ms) and $C"
lctl delay connect 20000
sysw tsm0 $P/$A/tsm/connect
lctl delay connect 0
sysw tsm0 $P/$C/tsm/connect
say "connect $E, an endpoint behind a PCIe root port with IDE: the driver allocates, sets up and enables a"
say "  Selective IDE stream with the kernel's pci_ide_stream_* and registers it: Secure on both ports"
sysw tsm0 $P/$E/tsm/connect
say "  $(ls /sys/devices/pci0000:00 | grep '^stream') -> $(readlink /sys/devices/pci0000:00/stream0.0.0 | sed 's|.*/||')"
sysw tsm0 $P/$E/tsm/disconnect
say "connect $E again, but its root port never reaches Secure: pci_ide_stream_enable returns -ENXIO, which"
say "  the driver ignores (as SEV-TIO does): the device is connected, its link not encrypted, the kernel silent"
lctl ide_secure rp 0
sysw tsm0 $P/$E/tsm/connect
lctl ide_secure rp 1
say "disconnect $E, but the driver does not release its stream: it stays registered on the host bridge"
lctl ide_leak 1
sysw tsm0 $P/$E/tsm/disconnect
say "  $(ls /sys/devices/pci0000:00 | grep '^stream') still there; $E is connected to: '$(cat $P/$E/tsm/connect)'"
say "a VMM creates two confidential VMs and vdevices; binds go through the real pci_tsm_bind"
ctl realpci 1
ctl vm_create 1
sh -c "echo vm_create 2 > $CTL"  # VM 2 belongs to another VMM process
ctl vdev_create 1 $A 1 7
ctl vdev_create 2 $A 2 8
ctl vdev_create 3 $C 1 9
say "bind $A to VM 1 (the TSM firmware takes 15 ms): tsm/bound names the TSM"
lctl delay bind 15000; ctl ioctl 1 1 0; lctl delay bind 0
say "  $P/$A/tsm/bound: $(cat $P/$A/tsm/bound)"
say "VM 2 tries to bind the same device: EBUSY from the PCI TSM core"
ctl ioctl 2 1 0
say "the TSM driver fails a bind of $C with EIO"
lctl inject bind 5; ctl ioctl 3 1 0
say "the guest of VM 1 asks for a TDISP state change through the series' guest-request ioctl (vdevice 1;"
say "  5 bytes of the reply unused): ioctl, tsm_guest_req, the kernel's pci_tsm_guest_req, the driver"
lctl guest_req_residue 5
ctl tsm_req 1 1 16 64
say "a bind of $C succeeds, but copying the response to userspace faults: EFAULT, device left bound"
ctl inject respond_efault; ctl ioctl 3 1 0
say "$A is disconnected while VM 1 holds it: the kernel unbinds it first"
sysw tsm0 $P/$A/tsm/disconnect
say "VM 1's vdevice on $C is torn down without unbinding (a kernel without the patch's unbind)"
ctl vdev_destroy 3 nounbind
sleep 2.5
wget -q -O /tmp/metrics http://127.0.0.1:9477/metrics
wget -q -O /tmp/bindings http://127.0.0.1:9477/bindings
kill -TERM $DAEMON
wait $DAEMON
kill -INT $DEEP
wait $DEEP
frame story /tmp/story
frame daemon_err /tmp/daemon.err
frame daemon_out /tmp/daemon.out
frame deep_out /tmp/deep.out
frame deep_err /tmp/deep.err
frame metrics /tmp/metrics
frame bindings /tmp/bindings
exit 0
