# Shared helpers for the guest scenario scripts (sourced as /scenarios/lib.sh; the harness
# puts it in every initramfs). Sets:
#   D CTL LAST OUT   the tsm_standin debugfs files and the data port
#   REAL_PCI         1 on kernels with upstream PCI TSM (7.x), else 0
#   PCI_SYMS         tsm-trace flags pointing the pci_tsm probes at the fixture's own PCI
#                    layer on 7.x (there, pci_tsm_bind is the real vmlinux function)
#   PCI_BIND PCI_UNBIND   the fixture's PCI-layer function names
#   DRV              tsm-trace flags probing the fixture's TSM driver ops
#   L LCTL LLAST EV A B C P LDRV   the tsm_linktsm fixture (see below)
D=/sys/kernel/debug/tsm_standin
CTL=$D/ctl
LAST=$D/last
OUT=${TSM_VM_OUT:-/dev/console}
if grep -q 'pci_tsm=real' "$D/info" 2>/dev/null; then
	REAL_PCI=1
	PCI_BIND=standin_pci_tsm_bind
	PCI_UNBIND=standin_pci_tsm_unbind
	PCI_SYMS="--symbol pci_tsm_bind=$PCI_BIND --symbol pci_tsm_unbind=$PCI_UNBIND"
else
	REAL_PCI=0
	PCI_BIND=pci_tsm_bind
	PCI_UNBIND=pci_tsm_unbind
	PCI_SYMS=""
fi
DRV="--driver-bind standin_tdi_bind --driver-unbind standin_tdi_unbind"

# The tsm_linktsm fixture (7.x, RunOptions::tee_pcie: q35): a link TSM on the real PCI TSM
# core. A (function 0, a DSM) and C are marked TEE-capable; B is A's function 1.
L=/sys/kernel/debug/tsm_linktsm
LCTL=$L/ctl
LLAST=$L/last
EV=$L/events
A=0000:00:04.0
B=0000:00:04.1
C=0000:00:05.0
P=/sys/bus/pci/devices
# tsm-trace flags probing the fixture's link ops (a driver tsm-trace does not know).
LDRV="--driver-probe linktsm_probe --driver-connect linktsm_connect --driver-disconnect linktsm_disconnect --driver-bind linktsm_bind --driver-unbind linktsm_unbind --driver-guest-req linktsm_guest_req"

# frame NAME FILE: print FILE as a section on the data port.
frame() {
	echo "=== BEGIN $1 ===" >> "$OUT"
	cat "$2" >> "$OUT" 2>&1
	# Always end on a new line (JSON bodies have none).
	[ -n "$(tail -c 1 "$2" 2>/dev/null)" ] && echo >> "$OUT"
	echo "=== END $1 rc=0 ===" >> "$OUT"
}

# wait_for FILE PATTERN SECONDS: 0 once PATTERN is in FILE, 1 after SECONDS.
wait_for() {
	i=0
	while ! grep -q "$2" "$1" 2>/dev/null; do
		i=$((i + 1))
		[ $i -gt $(($3 * 10)) ] && return 1
		sleep 0.1
	done
}

# wait_ready PORT SECONDS [FILE]: 0 once the daemon listening on PORT answers /readyz (its
# answer in FILE), 1 after SECONDS.
wait_ready() {
	i=0
	until wget -q -O "${3:-/dev/null}" "http://127.0.0.1:$1/readyz" 2>/dev/null; do
		i=$((i + 1))
		[ $i -gt $(($2 * 10)) ] && return 1
		sleep 0.1
	done
}

# ctl CMD...: one stand-in command from this long-lived shell (no fork: the VMs it creates
# are owned by a process that lives on, like a VMM). Fails with the command's errno.
ctl() { echo "$*" 2>/dev/null > "$CTL"; }

# lo_up: loopback for the daemon's HTTP endpoint.
lo_up() { ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up; }

# The daemon's persistence across restarts (pins in /sys/fs/bpf/tsm-trace, the state file)
# is the restart suite's subject; every other suite starts each daemon afresh.
# (clap takes true/false for a boolean flag from the environment, not 1.)
export TSM_TRACE_NO_PERSIST=true
