#!/bin/sh
# /scenarios/run.sh for `cargo xtask demo`: the daemon on a kernel with no TSM hardware,
# driven through the tsm_standin fixture (the iommufd TSM patch's functions, a PCI TSM
# layer, a TSM driver and KVM VMs, all stand-ins; qemu's PCI devices are the devices).
. /scenarios/lib.sh
say() { echo "# $*" >> /tmp/story; }

lo_up
/bin/tsm-trace run --listen 127.0.0.1:9477 --grace 1s --reconcile-interval 0 --print text \
	$DRV $PCI_SYMS \
	> /tmp/daemon.out 2> /tmp/daemon.err &
DAEMON=$!
i=0
until wget -q -O /dev/null http://127.0.0.1:9477/readyz 2>/dev/null; do
	i=$((i + 1)); [ $i -gt 600 ] && break; sleep 0.1
done

say "a VMM creates two confidential VMs and three vdevices"
ctl vm_create 1
sh -c "echo vm_create 2 > $CTL"  # VM 2 belongs to another VMM process
ctl vdev_create 1 0000:00:02.0 1 7
ctl vdev_create 2 0000:00:02.0 2 8
ctl vdev_create 3 0000:00:03.0 1 9
say "bind 0000:00:02.0 to VM 1 (the TSM firmware takes 15 ms)"
ctl delay_us 15000; ctl ioctl 1 1 0; ctl delay_us 0
say "VM 2 tries to bind the same device: EBUSY from the PCI TSM layer"
ctl ioctl 2 1 0
say "the TSM driver fails a bind with EIO"
ctl inject driver 5; ctl ioctl 3 1 0
say "a bind succeeds but copying the response to userspace faults: EFAULT, device left bound"
ctl inject respond_efault; ctl ioctl 3 1 0
say "VM 1's vdevice on 0000:00:02.0 is torn down without unbinding (a kernel without the patch's unbind)"
ctl vdev_destroy 1 nounbind
sleep 1.5
wget -q -O /tmp/metrics http://127.0.0.1:9477/metrics
wget -q -O /tmp/bindings http://127.0.0.1:9477/bindings
kill -TERM $DAEMON
wait $DAEMON
frame story /tmp/story
frame daemon_err /tmp/daemon.err
frame daemon_out /tmp/daemon.out
frame metrics /tmp/metrics
frame bindings /tmp/bindings
exit 0
