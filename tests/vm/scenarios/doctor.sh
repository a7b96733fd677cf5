#!/bin/sh
# /scenarios/run.sh for the doctor suite (`cargo xtask vm-test --suite doctor`, checked by
# xtask/src/vm/suites/doctor.rs): `tsm-trace doctor` on a real kernel, as root (the stand-in loaded:
# ok), as nobody (cannot run: no capabilities, yet it says which probes' functions are
# here), without bpffs (degraded), and, last because it cannot be undone, under
# lockdown=confidentiality (cannot run). Each in --json and in text.
#
# Sections (data port):
#   dr_truth     the kernel's own answers: release, lockdown, perf_event_paranoid,
#                kallsyms counts, /sys/class/tsm, and each doctor run's exit status
#   dr_<case>.json / dr_<case>.txt / dr_<case>.err   cases: root nobody nobpffs lockdown
. /scenarios/lib.sh
BIN=/bin/tsm-trace
T=/tmp/dr_truth
: > "$T"
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
FLAGS="$DRV $PCI_SYMS"

doctor() { # doctor CASE [nobody]: both formats, exit statuses into the truth file
	c=$1
	if [ "$2" = nobody ]; then
		# busybox su as root: no password; uid/gid 65534, no capabilities at all.
		su -s /bin/sh nobody -c "$BIN doctor --json $FLAGS" > /tmp/dr_$c.json 2> /tmp/dr_$c.err
		echo "rc_$c=$?" >> "$T"
		su -s /bin/sh nobody -c "$BIN doctor $FLAGS" > /tmp/dr_$c.txt 2>> /tmp/dr_$c.err
		echo "rc_${c}_text=$?" >> "$T"
	else
		$BIN doctor --json $FLAGS > /tmp/dr_$c.json 2> /tmp/dr_$c.err
		echo "rc_$c=$?" >> "$T"
		$BIN doctor $FLAGS > /tmp/dr_$c.txt 2>> /tmp/dr_$c.err
		echo "rc_${c}_text=$?" >> "$T"
	fi
	frame dr_$c.json /tmp/dr_$c.json
	frame dr_$c.txt /tmp/dr_$c.txt
	frame dr_$c.err /tmp/dr_$c.err
}

{
	echo "release=$(uname -r)"
	echo "lockdown=$(sed 's/.*\[\(.*\)\].*/\1/' /sys/kernel/security/lockdown 2>/dev/null)"
	echo "paranoid=$(cat /proc/sys/kernel/perf_event_paranoid)"
	echo "pci_tsm_bind=$(grep -c ' pci_tsm_bind$' /proc/kallsyms)"
	echo "tsm_register=$(grep -c ' tsm_register$' /proc/kallsyms)"
	echo "tsm_bind=$(grep -c ' tsm_bind\s' /proc/kallsyms)"
	echo "tsm_class=$(ls /sys/class/tsm 2>/dev/null | tr '\n' ',')"
	echo "bpffs=$(grep -c ' /sys/fs/bpf bpf ' /proc/mounts)"
} >> "$T"

doctor root
mkdir -p /etc
grep -q '^nobody:' /etc/passwd 2>/dev/null ||
	echo 'nobody:x:65534:65534:nobody:/:/bin/sh' >> /etc/passwd
grep -q '^nogroup:' /etc/group 2>/dev/null || echo 'nogroup:x:65534:' >> /etc/group
doctor nobody nobody
umount /sys/fs/bpf
doctor nobpffs
mount -t bpf bpf /sys/fs/bpf
echo confidentiality > /sys/kernel/security/lockdown
echo "lockdown_after=$(sed 's/.*\[\(.*\)\].*/\1/' /sys/kernel/security/lockdown 2>/dev/null)" >> "$T"
doctor lockdown
frame dr_truth "$T"
