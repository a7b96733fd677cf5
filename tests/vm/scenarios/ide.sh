#!/bin/sh
# IDE stream lifecycle (/scenarios/run.sh, 7.x kernels with the kernel's IDE API; xtask
# RunOptions::ide_pcie: q35 with an e1000e endpoint behind a PCIe root port at 00:06.0).
# tsm_linktsm emulates the IDE extended capability in the configuration space of the
# endpoint (EP) and of its root port (RP) and, as the link TSM of the real PCI TSM core,
# calls the kernel's own pci_ide_stream_* from its connect/disconnect in SEV-TIO's order
# (tests/vm/linktsm/linktsm_ide.c). The root port is removed and the bus rescanned so that
# the kernel's pci_ide_init() finds the emulated capability itself.
#
# Phases (each a step in the output): discovery, secure (a stream that reaches Secure),
# never_secure_rp / never_secure_ep (pci_ide_stream_enable -ENXIO, tolerated: the connect
# succeeds), no_stream_ids (pci_ide_set_nr_streams 0: alloc NULL, connect -EFAULT),
# register_busy (stream id 255, reserved: register -EBUSY, connect fails), leak (a
# disconnect that leaves the stream registered; pci_ide_stream_release later), deep
# (connect's SPDM helpers, a failure injected at each depth: see deep() below).
#
# Output (data port): section "steps" (every step's ground truth: sysfs results, the
# fixture's last records and its events: one line per pci_ide_* call with %pe results),
# section "checks" (one line per comparison: "check=<name> result=ok|FAIL want= got="),
# and, where /bin/tsm-trace is (not --smoke): "ide_check" (`tsm-trace check`), "ide_events"
# (every fixture event of the traced steps), "ide_trace.jsonl"/"ide_trace.err" (a
# `tsm-trace trace --json` session over the steps from "secure" on; xtask compares each
# IDE frame with the fixture's event for the same call), "ide_truth" (after every connect
# and disconnect of the endpoint: its result and the streams sysfs lists), "ide_replay_metrics"
# (`tsm-trace replay --metrics` of the session's capture), and the daemon's view of the
# leaked stream: "ide_d_metrics1"/"ide_d_bindings1" (a `tsm-trace run` started after the
# leak: it learns the stream from sysfs), "ide_d_metrics2"/"ide_d_bindings2" (after its
# release), "ide_d.err". The deep phase's sections: see deep().
. /scenarios/lib.sh
CHECKS=/tmp/checks
: > "$CHECKS"
STEPS=/tmp/steps
: > "$STEPS"
EVS=/tmp/evs

q() { printf '%s' "$1" | tr ' \n' '_~'; }
say() { echo "$*" >> "$STEPS"; }
check() {
	if [ "$2" = "$3" ]; then r=ok; else r=FAIL; fi
	echo "check=$1 result=$r want=$(q "$2") got=$(q "$3")" >> "$CHECKS"
}
kv() { printf '%s\n' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n 1; }
sysw() {
	if err=$({ echo "$1" > "$2"; } 2>&1); then echo ok; else echo "${err##*: }"; fi
}
lctl() { r=$(sysw "$*" "$LCTL"); say "linktsm: $* -> $r | $(cat "$LLAST")"; }
grab() {
	cat "$EV" > "$EVS"
	echo > "$EV"
	sed 's/^/  event: /' "$EVS" >> "$STEPS"
	cat "$EVS" >> /tmp/ide_events
}
# ops: "op:dev ..." of the grabbed events (devices as EP/RP), without the core's
# probe/remove of the device context (the lifecycle suites check those) and connect's SPDM
# helpers (the deep phase checks those).
ops() {
	sed -n 's/.* op=\([a-z_]*\) dev=\([^ ]*\) .*/\1:\2/p' "$EVS" |
		grep -v '^probe:\|^remove:\|^spdm_' |
		sed "s/$EP/EP/;s/$RP/RP/" | tr '\n' ' ' | sed 's/ $//'
}
# evf OP DEV KEY: KEY of the (last) grabbed event OP on DEV.
evf() { kv "$3" "$(grep " op=$1 dev=$2 " "$EVS" | tail -n 1)"; }
step() { say "== step $1"; }
# connect_ep / disconnect_ep: the store's result in $r; the truth line says what sysfs lists
# right after it.
connect_ep() {
	r=$(sysw "$TSM" $P/$EP/tsm/connect)
	say "connect EP: $r"
	echo "connect dev=$EP rc=$(q "$r") streams=$(streams | tr ' ' ',')" >> /tmp/ide_truth
}
disconnect_ep() {
	r=$(sysw "$TSM" $P/$EP/tsm/disconnect)
	say "disconnect EP: $r"
	echo "disconnect dev=$EP rc=$(q "$r") streams=$(streams | tr ' ' ',')" >> /tmp/ide_truth
}
HB=/sys/devices/pci0000:00
streams() { ls "$HB" | grep '^stream' | tr '\n' ' ' | sed 's/ $//'; }

RP=0000:00:06.0

steps() {
	step load
	# tee=none: the endpoint qualifies for the PCI TSM core through ide_cap alone.
	if insmod /lib/modules/tsm_linktsm.ko tee=none 2>&1; then check insmod ok ok; else check insmod ok fail; return 1; fi
	EP=$(ls $P/$RP/ | grep -E '^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$' | head -n 1)
	say "EP=$EP RP=$RP"
	check ep_behind_rp 0000:01:00.0 "$EP"
	lctl ide_info "$EP"
	check ep_ide_cap_before 0x0 "$(kv ide_cap "$(cat "$LLAST")")"
	check ep_pf0_before 0 "$(kv pf0 "$(cat "$LLAST")")"

	step discovery
	lctl ide_emulate "$EP"
	check ide_emulate ok "$r"
	r=$(sysw 1 $P/$RP/remove); say "remove $RP: $r"
	check rp_remove ok "$r"
	r=$(sysw 1 /sys/bus/pci/rescan); say "rescan: $r"
	check rescan ok "$r"
	check ep_back yes "$([ -e $P/$EP ] && echo yes || echo no)"
	lctl ide_info "$EP"
	last=$(cat "$LLAST")
	check ep_ide_cap 0xc00 "$(kv ide_cap "$last")"
	check ep_nr_sel_ide 2 "$(kv nr_sel_ide "$last")"
	check ep_nr_ide_mem 1 "$(kv nr_ide_mem "$last")"
	check ep_nr_link_ide 0 "$(kv nr_link_ide "$last")"
	check ep_pf0 1 "$(kv pf0 "$last")"
	check hb_nr_streams 256 "$(kv hb_nr_streams "$last")"
	lctl ide_info "$RP"
	last=$(cat "$LLAST")
	check rp_ide_cap 0xc00 "$(kv ide_cap "$last")"
	check rp_nr_sel_ide 4 "$(kv nr_sel_ide "$last")"
	check rp_nr_ide_mem 2 "$(kv nr_ide_mem "$last")"
	lctl register
	check register ok "$r"
	TSM=$(kv tsm "$(cat "$LLAST")")
	check ep_tsm_connect_file yes "$([ -e $P/$EP/tsm/connect ] && echo yes || echo no)"
	grab
	if [ -x "$BIN" ]; then
		$BIN check $LDRV > /tmp/ide_check 2>&1
		echo "exit=$?" >> /tmp/ide_check
		$BIN trace --json --record /tmp/ide.rec --grace 1s $LDRV > /tmp/ide_trace.jsonl 2> /tmp/ide_trace.err &
		TRACE_PID=$!
		: > /tmp/ide_events
		wait_for /tmp/ide_trace.err 'tracing with' 60 || echo "tsm-trace did not start" >> /tmp/ide_trace.err
	fi

	step secure
	connect_ep
	check secure_connect ok "$r"
	grab
	check secure_ops "ide_alloc:EP ide_setup:EP ide_setup:RP ide_enable:RP ide_enable:EP ide_register:EP connect:EP" "$(ops)"
	check secure_enable_rp 0 "$(evf ide_enable $RP rc)"
	check secure_enable_ep 0 "$(evf ide_enable $EP rc)"
	check secure_register 0 "$(evf ide_register $EP rc)"
	check secure_stream stream0.0.0 "$(evf ide_register $EP stream)"
	check secure_stream_id 0 "$(evf ide_register $EP stream_id)"
	check secure_rp "$RP" "$(evf ide_register $EP rp)"
	check secure_sysfs stream0.0.0 "$(streams)"
	check secure_sysfs_target "$EP" "$(readlink $HB/stream0.0.0 | sed 's|.*/||')"
	disconnect_ep
	check secure_disconnect ok "$r"
	grab
	check secure_disc_ops "ide_disable:EP ide_disable:RP ide_unregister:EP ide_teardown:EP ide_teardown:RP ide_free:EP disconnect:EP" "$(ops)"
	check secure_sysfs_gone "" "$(streams)"

	step never_secure_rp
	lctl ide_secure rp 0
	connect_ep
	check nsrp_connect_tolerated ok "$r"
	grab
	check nsrp_ops "ide_alloc:EP ide_setup:EP ide_setup:RP ide_enable:RP ide_register:EP connect:EP" "$(ops)"
	check nsrp_enable_rp_err -ENXIO "$(evf ide_enable $RP err)"
	check nsrp_register 0 "$(evf ide_register $EP rc)"
	check nsrp_connect_rc 0 "$(evf connect $EP rc)"
	check nsrp_sysfs stream0.0.0 "$(streams)"
	disconnect_ep
	grab
	lctl ide_secure rp 1

	step never_secure_ep
	lctl ide_secure ep 0
	connect_ep
	check nsep_connect_tolerated ok "$r"
	grab
	check nsep_ops "ide_alloc:EP ide_setup:EP ide_setup:RP ide_enable:RP ide_enable:EP ide_disable:RP ide_register:EP connect:EP" "$(ops)"
	check nsep_enable_rp 0 "$(evf ide_enable $RP rc)"
	check nsep_enable_ep_err -ENXIO "$(evf ide_enable $EP err)"
	disconnect_ep
	grab
	lctl ide_secure ep 1

	step no_stream_ids
	lctl ide_nr_streams 0
	check nr_streams_0 ok "$r"
	connect_ep
	check nsi_connect_EFAULT "Bad address" "$r"
	grab
	check nsi_ops "ide_alloc:EP connect:EP" "$(ops)"
	check nsi_alloc_null none "$(evf ide_alloc $EP stream_id)"
	check nsi_connect_err -EFAULT "$(evf connect $EP err)"
	lctl ide_nr_streams 256

	step register_busy
	lctl ide_stream_id 255
	connect_ep
	check rb_connect_EBUSY "Device or resource busy" "$r"
	grab
	check rb_ops "ide_alloc:EP ide_setup:EP ide_setup:RP ide_enable:RP ide_enable:EP ide_register:EP ide_disable:EP ide_disable:RP ide_teardown:EP ide_teardown:RP ide_free:EP connect:EP" "$(ops)"
	check rb_register_err -EBUSY "$(evf ide_register $EP err)"
	check rb_stream_id 255 "$(evf ide_register $EP stream_id)"
	check rb_sysfs "" "$(streams)"

	step leak
	lctl ide_leak 1
	connect_ep
	check leak_connect ok "$r"
	disconnect_ep
	check leak_disconnect ok "$r"
	grab
	check leak_disc_ops "ide_disable:EP ide_disable:RP ide_teardown:EP ide_teardown:RP disconnect:EP" "$(ops | sed 's/.*ide_register:EP connect:EP //')"
	check leak_sysfs_stays stream0.0.0 "$(streams)"
	if [ -x "$BIN" ]; then
		# A daemon started now never saw the stream made: sysfs shows it registered, its
		# endpoint not connected.
		lo_up
		$BIN run --listen 127.0.0.1:$IPORT --grace 1s --reconcile-interval 1s $LDRV \
			> /tmp/ide_d.out 2> /tmp/ide_d.err &
		DAEMON=$!
		wait_ready $IPORT 60 || echo "daemon not ready" >> /tmp/ide_d.err
		echo "daemon_started dev=$EP streams=$(streams | tr ' ' ',')" >> /tmp/ide_truth
		wget -q -O /tmp/ide_d_metrics1 http://127.0.0.1:$IPORT/metrics
		wget -q -O /tmp/ide_d_bindings1 http://127.0.0.1:$IPORT/bindings
	fi
	connect_ep
	check leak_second_connect ok "$r"
	grab
	check leak_second_stream stream1.1.1 "$(evf ide_register $EP stream)"
	check leak_second_stream_id 1 "$(evf ide_register $EP stream_id)"
	check leak_sysfs_both "stream0.0.0 stream1.1.1" "$(streams)"
	disconnect_ep
	lctl ide_release
	check release ok "$r"
	check released 1 "$(kv released "$(cat "$LLAST")")"
	grab
	check release_ops "ide_release:EP" "$(ops | sed 's/.*disconnect:EP //')"
	check release_sysfs_gone "" "$(streams)"
	echo "release dev=$EP rc=$(q "$r") streams=$(streams | tr ' ' ',')" >> /tmp/ide_truth
	if [ -n "$DAEMON" ]; then
		# Past a reconciliation after the release.
		sleep 2.5
		wget -q -O /tmp/ide_d_metrics2 http://127.0.0.1:$IPORT/metrics
		wget -q -O /tmp/ide_d_bindings2 http://127.0.0.1:$IPORT/bindings
		kill -TERM $DAEMON
		wait $DAEMON
		echo "exit=$?" >> /tmp/ide_d.err
	fi
}

# The deep phase: connect's SPDM helpers (tsm_linktsm's lt_spdm_*, linktsm_spdm.c: session,
# exchange, recv, verify at depths 1..4, and lt_spdm_notrace, which ftrace cannot attach to).
# Four steps, each one connect of EP: a (no injection; then a disconnect), b (spdm_fail 4 71:
# verify fails -EPROTO), c (spdm_fail 2 110: exchange, -ETIMEDOUT), d (spdm_fail 1 5: the
# session itself, -EIO). Sections: "deep_syms" (every lt_spdm_ function in kallsyms and
# whether ftrace lists it), "deep_events" (the fixture's events of the steps, each line
# prefixed with "step=<a..d> "), and where tsm-trace is, "deep_trace.jsonl"/"deep_trace.err"
# (a `trace --json --deep` session over the steps; xtask's ide_deep.rs compares its calls and
# failure origins with the fixture's events).
AFF=/sys/kernel/tracing/available_filter_functions
# spdm: "op:depth:msg:err ..." of the grabbed SPDM helper events, in log (return) order.
spdm() {
	sed -n 's/.* op=\(spdm_[a-z]*\) .* err=\([^ ]*\) .* depth=\([0-9]*\) msg=\([0-9]*\).*/\1:\3:\4:\2/p' "$EVS" |
		tr '\n' ' ' | sed 's/ $//'
}
# dgrab STEP: grab, and keep the step's events for the checker.
dgrab() {
	grab
	sed -n "/./s/^/step=$1 /p" "$EVS" >> /tmp/deep_events
}
# dconnect STEP / ddisconnect STEP: ok or fail (the store's errno is in the fixture's event).
dconnect() {
	r=$(sysw "$TSM" $P/$EP/tsm/connect)
	say "connect EP: $r"
	[ "$r" = ok ] || r=fail
}
ddisconnect() {
	r=$(sysw "$TSM" $P/$EP/tsm/disconnect)
	say "disconnect EP: $r"
}
deep() {
	step deep
	# Each helper under its own name (no clone: .isra, .constprop), ftrace-able but notrace,
	# and in the module's BTF (the tracer reads a deep function's return type there).
	for f in session exchange recv verify notrace; do
		check "deep_kallsyms_$f" 1 "$(grep -c " [tT] lt_spdm_$f	\[tsm_linktsm\]\$" /proc/kallsyms)"
		want=1
		[ $f = notrace ] && want=0
		check "deep_ftrace_$f" $want "$(grep -cxF "lt_spdm_$f [tsm_linktsm]" $AFF)"
		check "deep_btf_$f" 1 "$(grep -c "lt_spdm_$f" /sys/kernel/btf/tsm_linktsm 2>/dev/null | sed 's/^[1-9][0-9]*$/1/')"
	done
	check deep_no_clones 0 "$(grep -c ' lt_spdm_[a-z_]*\.' /proc/kallsyms)"
	grep ' [tT] lt_spdm_' /proc/kallsyms | while read -r _ ty name mod; do
		echo "sym=$name type=$ty module=$(echo "$mod" | tr -d '[]') ftrace=$(grep -cxF "$name $mod" $AFF)"
	done > /tmp/deep_syms
	: > /tmp/deep_events
	if [ -x "$BIN" ]; then
		$BIN trace --json --record /tmp/deep.rec --grace 1s $LDRV --deep 'tsm_linktsm:lt_spdm_*' \
			--deep 'tsm_linktsm:lt_nothing_matches_*' --deep-known \
			> /tmp/deep_trace.jsonl 2> /tmp/deep_trace.err &
		DEEP_PID=$!
		wait_for /tmp/deep_trace.err 'tracing with' 60 || echo "tsm-trace did not start" >> /tmp/deep_trace.err
	fi
	grab

	say "== deep a: no injection"
	dconnect
	check deep_a_connect ok "$r"
	ddisconnect
	check deep_a_disconnect ok "$r"
	dgrab a
	check deep_a_spdm "spdm_verify:4:1:0 spdm_recv:3:1:0 spdm_exchange:2:1:0 spdm_verify:4:2:0 spdm_recv:3:2:0 spdm_exchange:2:2:0 spdm_session:1:0:0" "$(spdm)"
	# The session comes first in connect, before its IDE work.
	check deep_a_spdm_first spdm_verify "$(sed -n 's/.* op=\([a-z_]*\) .*/\1/p' "$EVS" | grep -v '^probe$' | head -n 1)"

	say "== deep b: verify fails"
	lctl spdm_fail 4 71
	check deep_b_inject ok "$r"
	dconnect
	check deep_b_connect fail "$r"
	dgrab b
	check deep_b_spdm "spdm_verify:4:1:-EPROTO spdm_recv:3:1:-EPROTO spdm_exchange:2:1:-EPROTO spdm_session:1:0:-EPROTO" "$(spdm)"
	check deep_b_ops "connect:EP" "$(ops)"
	check deep_b_connect_err -EPROTO "$(evf connect $EP err)"

	say "== deep c: exchange fails"
	lctl spdm_fail 2 110
	check deep_c_inject ok "$r"
	dconnect
	check deep_c_connect fail "$r"
	dgrab c
	check deep_c_spdm "spdm_exchange:2:1:-ETIMEDOUT spdm_session:1:0:-ETIMEDOUT" "$(spdm)"
	check deep_c_connect_err -ETIMEDOUT "$(evf connect $EP err)"

	say "== deep d: the session fails"
	lctl spdm_fail 1 5
	check deep_d_inject ok "$r"
	dconnect
	check deep_d_connect fail "$r"
	dgrab d
	check deep_d_spdm "spdm_session:1:0:-EIO" "$(spdm)"
	check deep_d_connect_err -EIO "$(evf connect $EP err)"
	lctl spdm_fail 0 0
	check deep_clear ok "$r"
	lctl spdm_fail 5 5
	check deep_bad_depth "Invalid argument" "$r"
	# The chain outside any TSM operation (from the ctl write): the gate is closed, so the
	# session's count of deep calls stays that of steps a..d.
	say "== deep outside: the SPDM chain outside a TSM operation"
	lctl spdm_run $EP
	check deep_outside_run ok "$r"
	grab
	check deep_outside_spdm "spdm_verify:4:1:0 spdm_recv:3:1:0 spdm_exchange:2:1:0 spdm_verify:4:2:0 spdm_recv:3:2:0 spdm_exchange:2:2:0 spdm_session:1:0:0" "$(spdm)"
	echo "calls=$(spdm | wc -w)" > /tmp/deep_outside

	if [ -n "$DEEP_PID" ]; then
		sleep 1.5
		kill -INT $DEEP_PID
		wait $DEEP_PID
		echo "exit=$?" >> /tmp/deep_trace.err
		frame deep_trace.jsonl /tmp/deep_trace.jsonl
		frame deep_trace.err /tmp/deep_trace.err
		# The capture replays to the same operations, calls and origins.
		$BIN replay --json /tmp/deep.rec > /tmp/deep_replay.jsonl 2> /tmp/deep_replay.err
		echo "exit=$?" >> /tmp/deep_replay.err
		frame deep_replay.jsonl /tmp/deep_replay.jsonl
		frame deep_replay.err /tmp/deep_replay.err
		frame deep_capture /tmp/deep.rec
	fi
	frame deep_outside /tmp/deep_outside
	frame deep_syms /tmp/deep_syms
	frame deep_events /tmp/deep_events
}

BIN=/bin/tsm-trace
IPORT=9487
: > /tmp/ide_events
: > /tmp/ide_truth
steps
if [ -n "$TRACE_PID" ]; then
	sleep 1.5
	kill -INT $TRACE_PID
	wait $TRACE_PID
	echo "exit=$?" >> /tmp/ide_trace.err
	frame ide_check /tmp/ide_check
	frame ide_trace.err /tmp/ide_trace.err
	frame ide_trace.jsonl /tmp/ide_trace.jsonl
	frame ide_events /tmp/ide_events
	$BIN replay --metrics /tmp/ide.rec > /tmp/ide_replay_metrics 2> /tmp/ide_replay.err
	echo "exit=$?" >> /tmp/ide_replay.err
	frame ide_replay_metrics /tmp/ide_replay_metrics
	frame ide_replay.err /tmp/ide_replay.err
	# The capture itself (fuzz/corpus/record/vm-7.3-ide.jsonl is one: the promtool
	# scenarios replay it).
	frame ide.rec /tmp/ide.rec
	for f in ide_d.err ide_d_metrics1 ide_d_bindings1 ide_d_metrics2 ide_d_bindings2; do
		[ -e /tmp/$f ] && frame $f /tmp/$f
	done
fi
[ -n "$TSM" ] && deep
frame ide_truth /tmp/ide_truth
frame steps "$STEPS"
frame checks "$CHECKS"
grep -q 'result=FAIL' "$CHECKS" && exit 1
exit 0
