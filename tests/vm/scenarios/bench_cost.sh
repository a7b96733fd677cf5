# Cost per probed call, sourced by tests/vm/scenarios/bench.sh (as /scenarios/bench_cost.sh;
# parsed by xtask/src/bench/cost.rs). Needs lib.sh, $BIN, $H, $PORT, ROUNDS, PAIRS, COMPARE.
#
# Every block times ROUNDS rounds of `storm <vdev> PAIRS` (PAIRS bind+unbind pairs in one
# write, timed by the stand-in itself: duration_ns in `last`), interleaved: a baseline round
# with every kprobe disarmed (/sys/kernel/debug/kprobes/enabled = 0: the tool stays loaded,
# nothing fires), then a round with them armed, and so on. Blocks:
#   empty        bench_vm's empty kprobe+kretprobe pair on each probed function
#   ftrace0      tracefs kprobe events (p:/r:), no fields
#   ftrace       the same fetching the fields tsm-trace reads (BTF argument syntax)
#   tsm-trace    the daemon (`tsm-trace run`)
#   tsm-trace-paused  the same daemon stopped (SIGSTOP) through each armed round and let go
#                after it: the in-kernel path alone, as a host with a core to spare for the
#                daemon pays it (under TCG every vCPU runs on one host thread, so a daemon
#                decoding during a round is on that round's clock); a 1 MiB ring buffer holds
#                a round's records, and any loss is reported (it would make the block cheaper)
#   tsm-trace@REV  the same, built from git revision REV (cargo xtask bench --compare)
# With COST_ONLY=1 (cargo xtask bench --cost-only) only tsm-trace-paused and the tsm-trace@REV
# blocks run, each with its daemon stopped through the armed rounds: the in-kernel path alone.
#   bpftrace0    bpftrace: latency histogram + return-value counts, no fields
#   bpftrace     the same reading the fields tsm-trace reads into maps
# Sections: cost_env, cost_rounds (round block= base_ns= tool_ns=), cost_hits_<block>
# (kprobe_profile after a disarmed round and after all rounds), cost_val_<block> (bpf program
# stats before/after a disarmed round and after an armed one), cost_out_<block> (tool output).
KPE=/sys/kernel/debug/kprobes/enabled
TR=/sys/kernel/tracing
CV=800
# The probed set: what tsm-trace attaches with the stand-in (the same for every tool).
FUNCS="iommufd_vdevice_tsm_op_ioctl tsm_bind tsm_unbind $PCI_BIND $PCI_UNBIND standin_tdi_bind standin_tdi_unbind iommufd_vdevice_abort kvm_destroy_vm"

# storm_ns: one round; prints the module's duration_ns (no fork).
storm_ns() {
	ctl storm $CV "$PAIRS"
	read -r l < "$LAST"
	l=${l##*duration_ns=}
	echo "${l%% *}"
}

# rounds BLOCK [PID [pause]]: ROUNDS interleaved baseline/tool rounds (kprobes armed on
# return), each started once the tool's process PID has settled (bench_vm settle: its threads
# used no CPU for 20 ms, so work it deferred never lands in the next round, a baseline
# included); with `pause`, PID is stopped (SIGSTOP) through each armed round. The CPU time PID
# used from the first round to the end of the last goes into a `tool_cpu` line.
rounds() {
	r=1
	if [ -n "$2" ]; then
		$H settle "$2"
		c0=$($H cpu "$2")
	fi
	while [ $r -le "$ROUNDS" ]; do
		echo 0 > $KPE
		b=$(storm_ns)
		echo 1 > $KPE
		[ "$3" = pause ] && kill -STOP "$2"
		t=$(storm_ns)
		[ "$3" = pause ] && kill -CONT "$2"
		[ -n "$2" ] && $H settle "$2"
		echo "round block=$1 r=$r base_ns=$b tool_ns=$t" >> /tmp/cost_rounds
		r=$((r + 1))
	done
	[ -n "$2" ] && echo "tool_cpu block=$1 cpu_ns=$(($($H cpu "$2") - c0)) rounds=$ROUNDS" >> /tmp/cost_rounds
	return 0
}

# validate BLOCK [PID pause]: bpf program stats around one disarmed and one armed round (not
# timed); with `pause`, PID is stopped through the armed round as in `rounds`.
validate() {
	echo 1 > /proc/sys/kernel/bpf_stats_enabled
	{ echo "pairs=$PAIRS"; $H stats | sed 's/^prog /pre /'; } > /tmp/val
	echo 0 > $KPE
	ctl storm $CV "$PAIRS"
	echo 1 > $KPE
	$H stats | sed 's/^prog /mid /' >> /tmp/val
	[ "$3" = pause ] && kill -STOP "$2"
	ctl storm $CV "$PAIRS"
	$H stats | sed 's/^prog /post /' >> /tmp/val
	[ "$3" = pause ] && kill -CONT "$2"
	echo 0 > /proc/sys/kernel/bpf_stats_enabled
	frame "cost_val_$1" /tmp/val
}

# profile BLOCK: ftrace hit counts around one disarmed round, then the timed rounds.
ftrace_block() {
	{ echo "pairs=$PAIRS rounds=$ROUNDS"; sed 's/^/start /' $TR/kprobe_profile; } > /tmp/hits
	echo 0 > $KPE
	ctl storm $CV "$PAIRS"
	echo 1 > $KPE
	sed 's/^/disarmed /' $TR/kprobe_profile >> /tmp/hits
	rounds "$1"
	sed 's/^/end /' $TR/kprobe_profile >> /tmp/hits
	frame "cost_hits_$1" /tmp/hits
}

# ftrace_def LINE...: the first candidate tracefs accepts (BTF syntax differs between
# kernels); prints what was used, or the error_log when none was accepted.
ftrace_def() {
	for c in "$@"; do
		if echo "$c" >> $TR/kprobe_events 2>/dev/null; then
			echo "def $c" >> /tmp/ftrace_defs
			return 0
		fi
	done
	echo "rejected $1 ($(tail -n 3 $TR/error_log 2>/dev/null | tr '\n' ' '))" >> /tmp/ftrace_defs
	return 1
}

ftrace_clear() {
	echo 0 > $TR/events/tsmb/enable 2>/dev/null
	echo > $TR/kprobe_events
}

# ftrace_events FIELDS(0|1): one p: and one r: event per probed function.
ftrace_events() {
	fields=$1
	i=0
	for f in $FUNCS; do
		i=$((i + 1))
		if [ "$fields" = 0 ]; then
			ftrace_def "p:tsmb/e$i $f"
			ftrace_def "r:tsmb/r$i $f"
			continue
		fi
		case $f in
		iommufd_vdevice_tsm_op_ioctl)
			# ucmd->cmd is a void *: the UAPI struct behind it at BTF's offsets (OFFS).
			set -- $OFFS
			ftrace_def "p:tsmb/e$i $f op=+$2(+$1(\$arg1)):u32 flags=+$3(+$1(\$arg1)):u32 vdev=+$4(+$1(\$arg1)):u32"
			set --
			;;
		tsm_bind)
			ftrace_def "p:tsmb/e$i $f dev=dev->kobj.name:string pid=kvm->userspace_pid sid=kvm->stats_id:string tdi=tdi_id" \
				"p:tsmb/e$i $f dev=+0(dev->kobj.name):string pid=kvm->userspace_pid sid=+0(kvm->stats_id):string tdi=tdi_id"
			;;
		tsm_unbind)
			ftrace_def "p:tsmb/e$i $f dev=dev->kobj.name:string" "p:tsmb/e$i $f dev=+0(dev->kobj.name):string"
			;;
		iommufd_vdevice_abort)
			ftrace_def "p:tsmb/e$i $f id=obj->id"
			;;
		kvm_destroy_vm)
			ftrace_def "p:tsmb/e$i $f pid=kvm->userspace_pid sid=kvm->stats_id:string" \
				"p:tsmb/e$i $f pid=kvm->userspace_pid sid=+0(kvm->stats_id):string"
			;;
		*bind | *unbind)
			case $f in
			*unbind) k="" ;;
			*) k=" pid=kvm->userspace_pid sid=kvm->stats_id:string tdi=tdi_id" ;;
			esac
			ftrace_def "p:tsmb/e$i $f dev=pdev->dev.kobj.name:string$k" \
				"p:tsmb/e$i $f dev=+0(pdev->dev.kobj.name):string$k"
			;;
		esac
		ftrace_def "r:tsmb/r$i $f ret=\$retval" "r:tsmb/r$i $f" # void functions have no $retval
	done
	echo 1 > $TR/events/tsmb/enable
}

# bpftrace_script FIELDS(0|1): latency histogram + return-value counts per function,
# with FIELDS=1 also the fields tsm-trace reads, into maps.
bpftrace_script() {
	fields=$1
	# BEGIN runs once every probe is attached ("Attaching N probes..." comes before loading).
	echo 'BEGIN { printf("bench-ready\n"); }'
	for f in $FUNCS; do
		fl=""
		if [ "$fields" = 1 ]; then
			case $f in
			iommufd_vdevice_tsm_op_ioctl)
				# struct iommufd_ucmd and the UAPI struct are in the module's BTF only,
				# which bpftrace's kprobe casts cannot name: read at BTF's offsets (OFFS).
				set -- $OFFS
				fl="\$c = *(uint64 *)(arg0 + $1); @op[*(uint32 *)(\$c + $2), *(uint32 *)(\$c + $3), *(uint32 *)(\$c + $4)] = count();"
				set -- ;;
			tsm_bind)
				fl="@tb[str(((struct device *)arg0)->kobj.name), ((struct kvm *)arg1)->userspace_pid, ((struct kvm *)arg1)->stats_id, arg2] = count();" ;;
			tsm_unbind)
				fl="@tu[str(((struct device *)arg0)->kobj.name)] = count();" ;;
			iommufd_vdevice_abort)
				fl="@va[((struct iommufd_object *)arg0)->id] = count();" ;;
			kvm_destroy_vm)
				fl="@kd[((struct kvm *)arg0)->userspace_pid, ((struct kvm *)arg0)->stats_id] = count();" ;;
			*unbind)
				fl="@u_$f[str(((struct pci_dev *)arg0)->dev.kobj.name)] = count();" ;;
			*bind)
				fl="@b_$f[str(((struct pci_dev *)arg0)->dev.kobj.name), ((struct kvm *)arg1)->userspace_pid, ((struct kvm *)arg1)->stats_id, arg2] = count();" ;;
			esac
		fi
		echo "kprobe:$f { $fl @s[tid, \"$f\"] = nsecs; }"
		echo "kretprobe:$f /@s[tid, \"$f\"]/ { @lat[\"$f\"] = hist(nsecs - @s[tid, \"$f\"]); delete(@s[tid, \"$f\"]); @ret[\"$f\", retval] = count(); }"
	done
}

# bpftrace_block BLOCK FIELDS
bpftrace_block() {
	bpftrace_script "$2" > /tmp/$1.bt
	BPFTRACE_MAX_STRLEN=64 bpftrace /tmp/$1.bt > /tmp/$1.out 2>&1 &
	BT=$!
	: > /tmp/$1.err
	if wait_for /tmp/$1.out 'bench-ready' 300; then
		rounds "$1" $BT
		validate "$1"
	else
		echo "bpftrace did not attach within 300 s" >> /tmp/$1.err
	fi
	kill -INT $BT
	wait $BT
	echo "exit=$?" >> /tmp/$1.err
	{ cat /tmp/$1.bt; echo "--- output"; cat /tmp/$1.out; echo "--- status"; cat /tmp/$1.err; } > /tmp/$1.all
	frame "cost_out_$1" /tmp/$1.all
}

# daemon_block BLOCK BINARY [pause]
daemon_block() {
	rb=""
	[ "$3" = pause ] && rb="--ringbuf-size 1m"
	$2 run --listen 127.0.0.1:$PORT --grace 1s $rb $DRV $PCI_SYMS > /tmp/$1.out 2> /tmp/$1.err &
	DP=$!
	if wait_ready $PORT 120; then
		rounds "$1" $DP $3
		validate "$1" $DP $3
		sleep 6 # the daemon's next sweep exports the kernel's loss counters
		wget -q -O - http://127.0.0.1:$PORT/metrics 2>/dev/null |
			grep '^tsm_trace_operations_total\|^tsm_trace_events_lost_total' > /tmp/$1.metrics
	else
		echo "daemon not ready after 120 s" >> /tmp/$1.err
	fi
	kill -TERM $DP
	wait $DP
	echo "exit=$?" >> /tmp/$1.err
	{ tail -n 20 /tmp/$1.err; echo "--- metrics"; cat /tmp/$1.metrics 2>/dev/null; } > /tmp/$1.all
	frame "cost_out_$1" /tmp/$1.all
}

cost_blocks() {
	: > /tmp/cost_rounds
	: > /tmp/ftrace_defs
	HAVE_BT=no
	command -v bpftrace > /dev/null && bpftrace --version > /tmp/btver 2>&1 && HAVE_BT=yes
	# Offsets of iommufd_ucmd.cmd and of the UAPI struct's op, flags and vdevice_id, from
	# BTF (the module's split BTF) as tsm-trace's resolver reports them: bpftrace cannot name
	# module-only types in kprobe casts, and ftrace needs them behind a void *.
	$BIN check $DRV $PCI_SYMS > /tmp/check.err 2>&1
	off() { sed -n "s/.*resolved $1 = \([0-9]*\) .*/\1/p" /tmp/check.err | head -n 1; }
	OFFS="$(off iommufd_ucmd.cmd) $(off iommu_vdevice_tsm_op.op) $(off iommu_vdevice_tsm_op.flags) $(off iommu_vdevice_tsm_op.vdevice_id)"
	set -- $OFFS
	if [ $# != 4 ]; then
		echo "offsets: want 4 from tsm-trace check, got '$OFFS'" >> /tmp/check.err
		OFFS="0 0 0 0"
		frame cost_check /tmp/check.err
	fi
	set --
	{
		echo "kprobes_enabled_file=$([ -w $KPE ] && echo yes || echo no)"
		echo "tracefs=$([ -w $TR/kprobe_events ] && echo yes || echo no)"
		echo "bpftrace=$HAVE_BT $(head -n 1 /tmp/btver 2>/dev/null)"
		echo "offsets=$(echo $OFFS | tr ' ' ',') (iommufd_ucmd.cmd,op,flags,vdevice_id)"
		echo "funcs=$FUNCS"
		echo "pairs=$PAIRS rounds=$ROUNDS compare=$COMPARE"
	} > /tmp/cost_env
	frame cost_env /tmp/cost_env
	ctl vm_create $CV
	ctl vdev_create $CV 0000:00:02.0 $CV 8
	storm_ns > /dev/null # first translation of the path under TCG, before any block

	args=""
	for f in $FUNCS; do
		case $f in
		iommufd_vdevice_tsm_op_ioctl) p=tsm_op_ioctl ;;
		iommufd_vdevice_abort) p=vdevice_abort ;;
		standin_tdi_bind) p=driver_bind ;;
		standin_tdi_unbind) p=driver_unbind ;;
		"$PCI_BIND") p=pci_tsm_bind ;;
		"$PCI_UNBIND") p=pci_tsm_unbind ;;
		*) p=$f ;;
		esac
		args="$args $p=$f"
	done
	if [ "$COST_ONLY" = 1 ]; then
		# cargo xtask bench --cost-only: the in-kernel path alone, this tree's and --compare's.
		daemon_block tsm-trace-paused $BIN pause
		for rev in $COMPARE; do
			daemon_block "tsm-trace@$rev" "/bin/tsm-trace-$rev" pause
		done
		echo 1 > $KPE
		frame cost_rounds /tmp/cost_rounds
		ctl vdev_destroy $CV
		ctl vm_destroy $CV
		return 0
	fi
	$H empty $args > /tmp/empty.out 2> /tmp/empty.err &
	EP=$!
	if wait_for /tmp/empty.err 'baselines attached' 120; then
		rounds empty $EP
		validate empty
	fi
	kill $EP
	wait $EP 2>/dev/null
	cat /tmp/empty.err >> /tmp/empty.out
	frame cost_out_empty /tmp/empty.out

	for fl in 0 1; do
		b=ftrace
		[ $fl = 0 ] && b=ftrace0
		ftrace_clear
		ftrace_events $fl
		ftrace_block $b
		ftrace_clear
	done
	frame ftrace_defs /tmp/ftrace_defs

	daemon_block tsm-trace $BIN
	daemon_block tsm-trace-paused $BIN pause
	for rev in $COMPARE; do
		daemon_block "tsm-trace@$rev" "/bin/tsm-trace-$rev"
	done
	if [ $HAVE_BT = yes ]; then
		bpftrace_block bpftrace0 0
		bpftrace_block bpftrace 1
	fi
	echo 1 > $KPE
	frame cost_rounds /tmp/cost_rounds
	ctl vdev_destroy $CV
	ctl vm_destroy $CV
}
