#!/bin/sh
# Lifecycle smoke (/scenarios/run.sh, 7.x kernels only, no tsm-trace): the REAL upstream
# PCI TSM core (drivers/pci/tsm.c) with the tsm_linktsm fixture as its link TSM, on a q35
# machine (xtask RunOptions::tee_pcie):
#   A = 0000:00:04.0  e1000e, function 0, marked TEE-capable (a DSM)
#   B = 0000:00:04.1  e1000e, function 1: probed by the core through A on connect
#   C = 0000:00:05.0  e1000e, function 0, marked TEE-capable
# Binds go through tsm_standin (realpci 1): a struct kvm stand-in with a real pid and
# stats_id → the patch's tsm_bind() → the real pci_tsm_bind() → linktsm_bind().
#
# Output (data port): section "steps" (every step's ground truth: sysfs write results,
# the fixtures' last records, the link ops' own events), section "checks" (one line per
# comparison: "check=<name> result=ok|FAIL want=<..> got=<..>"; xtask fails on any FAIL),
# section "kallsyms" (names + module of the TSM symbols).
. /scenarios/lib.sh
CHECKS=/tmp/checks
: > "$CHECKS"
STEPS=/tmp/steps
: > "$STEPS"
EVS=/tmp/evs

q() { printf '%s' "$1" | tr ' \n' '_~'; }
say() { echo "$*" >> "$STEPS"; }
# check NAME WANT GOT
check() {
	if [ "$2" = "$3" ]; then r=ok; else r=FAIL; fi
	echo "check=$1 result=$r want=$(q "$2") got=$(q "$3")" >> "$CHECKS"
}
# check_ge NAME MIN GOT (integers)
check_ge() {
	if [ -n "$3" ] && [ "$3" -ge "$2" ] 2>/dev/null; then r=ok; else r=FAIL; fi
	echo "check=$1 result=$r want=\>=$2 got=$(q "$3")" >> "$CHECKS"
}
# kv KEY LINE: value of KEY in a key=value line (first occurrence).
kv() { printf '%s\n' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n 1; }
# sysw VALUE FILE: write like `echo VALUE > FILE`; prints ok or the error text.
sysw() {
	if err=$({ echo "$1" > "$2"; } 2>&1); then echo ok; else echo "${err##*: }"; fi
}
# rd FILE: contents (or "absent").
rd() { if [ -e "$1" ]; then cat "$1" 2>&1; else echo absent; fi; }
lctl() { r=$(sysw "$*" "$LCTL"); say "linktsm: $* -> $r | $(cat "$LLAST")"; }
sctl() { r=$(sysw "$*" "$CTL"); say "standin: $* -> $r | $(cat "$LAST")"; }
# grab: move the events logged so far to $EVS (and into the steps output).
grab() {
	cat "$EV" > "$EVS"
	echo > "$EV"
	sed 's/^/  event: /' "$EVS" >> "$STEPS"
}
# ops: "op:dev op:dev ..." of the grabbed events (devices as A/B/C), without connect's SPDM
# helpers (the ide suite's deep phase checks those).
ops() {
	sed -n 's/.* op=\([a-z_]*\) dev=\([^ ]*\) .*/\1:\2/p' "$EVS" |
		grep -v '^spdm_' |
		sed "s/$A/A/;s/$B/B/;s/$C/C/" | tr '\n' ' ' | sed 's/ $//'
}
# evf OP DEV KEY: KEY of the (last) grabbed event OP on DEV.
evf() { kv "$3" "$(grep " op=$1 dev=$2 " "$EVS" | tail -n 1)"; }
step() { say "== step $1"; }
sysfs_state() { # sysfs_state DEV: one line of the device's tsm/ files
	say "  sysfs $1: connect=$(q "$(rd $P/$1/tsm/connect)") bound=$(q "$(rd $P/$1/tsm/bound)") dsm=$(q "$(rd $P/$1/tsm/dsm)") tsm_dir=$([ -d $P/$1/tsm ] && echo yes || echo no)"
}

steps() {
	step load
	if insmod /lib/modules/tsm_linktsm.ko 2>&1; then check insmod ok ok; else check insmod ok fail; return 1; fi
	info=$(cat $L/info)
	say "info: $info"
	check tee_devices "$A,$C" "$(kv tee "$info")"
	check errname_symbolic -EIO "$(kv errname "$info")"
	check registered_before 0 "$(kv registered "$info")"
	check tsm_dir_before_register no "$([ -d $P/$A/tsm ] && echo yes || echo no)"
	check kallsyms_linktsm_connect 1 "$(grep -c ' linktsm_connect	\[tsm_linktsm\]' /proc/kallsyms)"
	for f in probe remove connect disconnect bind unbind guest_req; do
		check "btf_linktsm_$f" 1 "$(grep -c "linktsm_$f" /sys/kernel/btf/tsm_linktsm 2>/dev/null | sed 's/^[1-9][0-9]*$/1/')"
	done
	section kallsyms sh -c "grep -E 'connect_store|disconnect_store|__pci_tsm_disconnect|__pci_tsm_unbind|__pci_tsm_destroy|pci_tsm_guest_req|pci_tsm_bind|pci_tsm_unbind|tsm_register|tsm_unregister|linktsm_|bound_show|dsm_show' /proc/kallsyms | cut -d' ' -f2- | grep -vE ' (__pfx_|__kstrtab|__ksymtab|__flags_)'"

	step register
	lctl register
	check register ok "$r"
	TSM=$(kv tsm "$(cat "$LLAST")")
	check tsm_name tsm0 "$TSM"
	check class_tsm yes "$([ -e /sys/class/tsm/$TSM ] && echo yes || echo no)"
	for f in connect disconnect bound dsm; do
		check "A_tsm_$f" yes "$([ -e $P/$A/tsm/$f ] && echo yes || echo no)"
		check "C_tsm_$f" yes "$([ -e $P/$C/tsm/$f ] && echo yes || echo no)"
	done
	check B_tsm_dir_before_connect no "$([ -d $P/$B/tsm ] && echo yes || echo no)"
	check A_connect_empty "" "$(cat $P/$A/tsm/connect)"
	sysfs_state $A; sysfs_state $B; sysfs_state $C
	grab

	step errors_before_connect
	r=$(sysw "$TSM" $P/$C/tsm/disconnect); say "disconnect C (not connected): $r"
	check disconnect_unconnected_ENXIO "No such device or address" "$r"
	r=$(sysw foo $P/$A/tsm/connect); say "connect A foo: $r"
	check connect_badname_EINVAL "Invalid argument" "$r"
	r=$(sysw tsm9 $P/$A/tsm/connect); say "connect A tsm9: $r"
	check connect_notsm_ENXIO "No such device or address" "$r"
	grab
	check no_ops_on_errors "" "$(ops)"

	step probe_fail
	lctl inject probe_fail
	r=$(sysw "$TSM" $P/$C/tsm/connect); say "connect C: $r"
	check probe_fail_ENXIO "No such device or address" "$r"
	grab
	check probe_fail_ops "probe:C" "$(ops)"
	check probe_fail_err -ENODEV "$(evf probe $C err)"
	check probe_fail_ret null "$(evf probe $C ret)"
	check probe_fail_connect_empty "" "$(cat $P/$C/tsm/connect)"

	step connect_eio
	lctl inject connect -5
	lctl delay connect 20000
	r=$(sysw "$TSM" $P/$C/tsm/connect); say "connect C: $r"
	check connect_eio_write "Input/output error" "$r"
	lctl delay connect 0
	grab
	check connect_eio_ops "probe:C connect:C remove:C" "$(ops)"
	check connect_eio_err -EIO "$(evf connect $C err)"
	check connect_eio_rc -5 "$(evf connect $C rc)"
	check connect_eio_tsm "$TSM" "$(evf connect $C tsm)"
	check_ge connect_eio_ns_delay 20000000 "$(evf connect $C ns)"
	check connect_eio_connect_empty "" "$(cat $P/$C/tsm/connect)"
	check connect_eio_contexts 0 "$(kv contexts "$(cat $L/info)")"

	step connect_A
	r=$(sysw "$TSM" $P/$A/tsm/connect); say "connect A: $r"
	check connect_A ok "$r"
	grab
	check connect_A_ops "probe:A connect:A probe:B" "$(ops)"
	check connect_A_probe_role pf0 "$(evf probe $A role)"
	check connect_B_probe_role fn "$(evf probe $B role)"
	check connect_B_probe_dsm "$A" "$(evf probe $B dsm)"
	check connect_A_err 0 "$(evf connect $A err)"
	sysfs_state $A; sysfs_state $B
	check A_connect "$TSM" "$(cat $P/$A/tsm/connect)"
	check A_dsm "$A" "$(cat $P/$A/tsm/dsm)"
	check B_dsm "$A" "$(rd $P/$B/tsm/dsm)"
	check A_bound_empty "" "$(cat $P/$A/tsm/bound)"
	check B_bound_empty "" "$(rd $P/$B/tsm/bound)"
	check B_no_connect_file no "$([ -e $P/$B/tsm/connect ] && echo yes || echo no)"
	check contexts_after_connect 2 "$(kv contexts "$(cat $L/info)")"

	step connect_twice
	r=$(sysw "$TSM" $P/$A/tsm/connect); say "connect A again: $r"
	check connect_twice_EBUSY "Device or resource busy" "$r"
	r=$(sysw tsm7 $P/$A/tsm/disconnect); say "disconnect A tsm7: $r"
	check disconnect_wrongname_EINVAL "Invalid argument" "$r"
	grab
	check no_ops_busy_wrongname "" "$(ops)"
	check A_still_connected "$TSM" "$(cat $P/$A/tsm/connect)"

	step bind_A_standin
	sctl vm_create 1
	KVM1=$(kv kvm "$(cat "$LAST")")
	sctl vdev_create 1 $A 1 77
	sctl realpci 1
	check realpci_on ok "$r"
	sctl ioctl 1 1 0
	check bind_A ok "$r"
	check bind_A_layer pci_tsm_bind "$(kv layer "$(cat "$LAST")")"
	check bind_A_after_kvm "$KVM1" "$(kv after_kvm "$(cat "$LAST")")"
	grab
	check bind_A_ops "bind:A" "$(ops)"
	check bind_A_kvm "$KVM1" "$(evf bind $A kvm)"
	check bind_A_tdi 77 "$(evf bind $A tdi_id)"
	check A_bound "$TSM" "$(cat $P/$A/tsm/bound)"

	step bind_B_standin
	sctl vdev_create 2 $B 1 78
	sctl ioctl 2 1 0
	check bind_B ok "$r"
	grab
	check bind_B_ops "bind:B" "$(ops)"
	check B_bound "$TSM" "$(rd $P/$B/tsm/bound)"

	step bind_same_and_other_vm
	sctl ioctl 1 1 0
	check bind_same ok "$r"
	sctl vm_create 2
	KVM2=$(kv kvm "$(cat "$LAST")")
	sctl vdev_create 3 $A 2 79
	sctl ioctl 3 1 0
	check bind_other_vm_EBUSY "Device or resource busy" "$r"
	grab
	check bind_same_other_no_ops "" "$(ops)"

	step guest_req
	lctl guest_req_residue 5
	lctl tsm_code 0xabc
	sctl guest_req $A 1 16 64
	check guest_req_write ok "$r"
	last=$(cat "$LAST")
	check guest_req_layer pci_tsm_guest_req "$(kv layer "$last")"
	check guest_req_residue 5 "$(kv residue "$last")"
	check guest_req_tsm_code 0xabc "$(kv tsm_code "$last")"
	want_sum=0; i=0
	while [ $i -lt 59 ]; do want_sum=$((want_sum + (0xa5 ^ i))); i=$((i + 1)); done
	check guest_req_out_sum "$want_sum" "$(kv out_sum "$last")"
	grab
	check guest_req_ops "guest_req:A" "$(ops)"
	check guest_req_in_sum 120 "$(evf guest_req $A in_sum)"
	check guest_req_ev_ret 5 "$(evf guest_req $A ret)"
	check guest_req_ev_kvm "$KVM1" "$(evf guest_req $A kvm)"
	check guest_req_ev_scope 1 "$(evf guest_req $A scope)"
	sctl guest_req $A 2 16 64
	check guest_req_scope2_EINVAL "Invalid argument" "$r"
	check guest_req_scope2_err -EINVAL "$(kv err "$(cat "$LAST")")"
	lctl inject guest_req -5
	sctl guest_req $A 0 8 8
	check guest_req_eio "Input/output error" "$r"
	check guest_req_eio_err -EIO "$(kv err "$(cat "$LAST")")"
	check guest_req_eio_tsm_code 0xabc "$(kv tsm_code "$(cat "$LAST")")"
	sctl guest_req $C 0 8 8
	check guest_req_unconnected_ENXIO -ENXIO "$(kv err "$(cat "$LAST")")"
	lctl guest_req $B 0 8 8
	check linktsm_guest_req_B ok "$r"
	check linktsm_guest_req_B_residue 5 "$(kv residue "$(cat "$LLAST")")"
	grab
	check guest_req_err_ops "guest_req:A guest_req:B" "$(ops)"
	check guest_req_eio_ev_err -EIO "$(evf guest_req $A err)"
	check guest_req_B_tdi 78 "$(evf guest_req $B tdi_id)"

	step disconnect_while_bound
	r=$(sysw "$TSM" $P/$A/tsm/disconnect); say "disconnect A: $r"
	check disconnect_A ok "$r"
	grab
	check disconnect_bound_ops "unbind:B unbind:A remove:B disconnect:A remove:A" "$(ops)"
	check disconnect_unbind_A_kvm "$KVM1" "$(evf unbind $A kvm)"
	check disconnect_unbind_A_tdi 77 "$(evf unbind $A tdi_id)"
	sysfs_state $A; sysfs_state $B
	check A_connect_after_disconnect "" "$(cat $P/$A/tsm/connect)"
	check A_bound_after_disconnect "" "$(cat $P/$A/tsm/bound)"
	check B_tsm_dir_after_disconnect no "$([ -d $P/$B/tsm ] && echo yes || echo no)"
	info=$(cat $L/info)
	check disconnect_contexts 0 "$(kv contexts "$info")"
	check disconnect_tdis 0 "$(kv tdis "$info")"

	step after_disconnect
	sctl ioctl 1 2 0
	check unbind_after_disconnect ok "$r"
	check unbind_after_disconnect_after_kvm 0x0 "$(kv after_kvm "$(cat "$LAST")")"
	sctl ioctl 1 1 0
	check bind_unconnected_EINVAL "Invalid argument" "$r"
	grab
	check after_disconnect_no_ops "" "$(ops)"

	step linktsm_bind_ctl
	r=$(sysw "$TSM" $P/$C/tsm/connect); say "connect C: $r"
	check connect_C ok "$r"
	lctl bind $C 0 1
	check linktsm_bind_nullkvm_EINVAL "Invalid argument" "$r"
	lctl inject bind -12
	lctl bind $C 0x1234 9
	check linktsm_bind_enomem "Cannot allocate memory" "$r"
	check linktsm_bind_enomem_err -ENOMEM "$(kv err "$(cat "$LLAST")")"
	check C_unbound_after_enomem "" "$(cat $P/$C/tsm/bound)"
	lctl delay bind 20000
	lctl bind $C 0x1234 9
	lctl delay bind 0
	check linktsm_bind ok "$r"
	check C_bound "$TSM" "$(cat $P/$C/tsm/bound)"
	lctl unbind $C
	check linktsm_unbind ok "$r"
	check C_unbound "" "$(cat $P/$C/tsm/bound)"
	grab
	check linktsm_bind_ops "probe:C connect:C bind:C bind:C unbind:C" "$(ops)"
	check linktsm_bind_ev_kvm 0x0000000000001234 "$(evf unbind $C kvm)"
	check linktsm_bind_ev_err_first -ENOMEM "$(kv err "$(grep ' op=bind ' "$EVS" | head -n 1)")"
	check_ge linktsm_bind_ns_delay 20000000 "$(evf bind $C ns)"

	step remove_while_bound
	sctl vdev_create 4 $C 2 80
	sctl ioctl 4 1 0
	check bind_C_standin ok "$r"
	check C_bound_standin "$TSM" "$(cat $P/$C/tsm/bound)"
	grab
	r=$(sysw 1 $P/$C/remove); say "remove C: $r"
	check remove_C ok "$r"
	grab
	check remove_bound_ops "unbind:C disconnect:C remove:C" "$(ops)"
	check remove_unbind_kvm "$KVM2" "$(evf unbind $C kvm)"
	check C_gone no "$([ -e $P/$C ] && echo yes || echo no)"
	sctl vdev_destroy 4
	check vdev_destroy_removed_dev ok "$r"
	grab
	check vdev_destroy_removed_no_ops "" "$(ops)"

	step unregister_while_bound
	r=$(sysw "$TSM" $P/$A/tsm/connect); say "connect A: $r"
	check reconnect_A ok "$r"
	sctl ioctl 1 1 0
	check rebind_A ok "$r"
	sctl ioctl 2 1 0
	check rebind_B ok "$r"
	sysfs_state $A; sysfs_state $B
	grab
	check reconnect_rebind_ops "probe:A connect:A probe:B bind:A bind:B" "$(ops)"
	lctl unregister
	check unregister ok "$r"
	grab
	check unregister_ops "unbind:B remove:B unbind:A disconnect:A remove:A" "$(ops)"
	sysfs_state $A; sysfs_state $B
	check class_tsm_gone no "$([ -e /sys/class/tsm/$TSM ] && echo yes || echo no)"
	check A_tsm_dir_gone no "$([ -d $P/$A/tsm ] && echo yes || echo no)"
	info=$(cat $L/info)
	say "info: $info"
	check unregister_registered 0 "$(kv registered "$info")"
	check unregister_contexts 0 "$(kv contexts "$info")"
	check unregister_tdis 0 "$(kv tdis "$info")"
	sctl ioctl 1 2 0
	check unbind_after_unregister ok "$r"

	step rmmod_while_bound
	lctl register
	check register_again ok "$r"
	TSM=$(kv tsm "$(cat "$LLAST")")
	r=$(sysw "$TSM" $P/$A/tsm/connect); say "connect A: $r"
	check connect_again ok "$r"
	lctl bind $A 0x5678 3
	check bind_before_rmmod ok "$r"
	grab
	if rmmod tsm_linktsm 2>&1; then r=ok; else r=fail; fi
	say "rmmod tsm_linktsm: $r"
	check rmmod ok "$r"
	check class_tsm_empty "" "$(ls /sys/class/tsm 2>/dev/null)"
	check A_tsm_dir_after_rmmod no "$([ -d $P/$A/tsm ] && echo yes || echo no)"
	check module_gone no "$([ -d /sys/module/tsm_linktsm ] && echo yes || echo no)"

	step cleanup
	for v in 1 2 3; do sctl vdev_destroy $v; done
	sctl vm_destroy 1
	sctl vm_destroy 2
	sctl realpci 0
}

steps
src=$?
{
	echo "=== BEGIN steps ==="
	cat "$STEPS"
	echo "=== END steps rc=$src ==="
	echo "=== BEGIN checks ==="
	cat "$CHECKS"
	echo "=== END checks rc=$(grep -c 'result=FAIL' "$CHECKS") ==="
} >> "$OUT" 2>&1
grep -q 'result=FAIL' "$CHECKS" && exit 1
exit $src
