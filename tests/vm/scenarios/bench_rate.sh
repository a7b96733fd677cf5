# Detail under storms (figure 9), sourced by tests/vm/scenarios/bench.sh (as
# /scenarios/bench_rate.sh; parsed by xtask/src/bench/rate.rs). Needs lib.sh, $H, $PORT,
# RATE_STEPS, COMPARE.
#
# The daemon (`tsm-trace run`, its default ring buffer size, on CPU 1) watches steps of
# `storm <vdev> <pairs> <gap_us>` written from CPU 0: <pairs> bind+unbind pairs from one write, the writer asleep
# gap_us after each pair (gap 0: back to back), so each step is a steady rate on the guest's
# clock (the stand-in's duration_ns, sleeps included; under icount an idle guest skips ahead,
# so a sleep costs no host time). After each step the daemon's loss and processed counters
# (read from /metrics once its next sweep exported the kernel's loss counters) say whether any
# per-event detail was lost at that rate. The same steps run for each --compare revision.
# Section: rate_steps, the counters after a warm-up storm, then one line per step:
#   base block=<b> lost=<cumulative> processed=<cumulative>
#   step block=<b> pairs=<n> gap_us=<g> duration_ns=<ns> bind_ok=<k> lost=<cumulative> processed=<cumulative>
RV=801

# counters: the daemon's records lost (every reason) and processed so far, from /metrics.
counters() {
	wget -q -O - http://127.0.0.1:$PORT/metrics 2>/dev/null | awk '
		/^tsm_trace_events_lost_total/ { l += $NF }
		/^tsm_trace_events_processed_total/ { p += $NF }
		END { printf "lost=%d processed=%d", l, p }'
}

# rate_block BLOCK BINARY
rate_block() {
	taskset 2 $2 run --listen 127.0.0.1:$PORT --grace 1s $DRV $PCI_SYMS > /tmp/rate_$1.out 2> /tmp/rate_$1.err &
	RP=$!
	if wait_ready $PORT 120; then
		ctl storm $RV 10 # the path translated once under TCG
		sleep 6
		echo "base block=$1 $(counters)" >> /tmp/rate_steps
		for step in $RATE_STEPS; do
			n=${step%%:*}
			g=${step##*:}
			sleep 6
			$H settle $RP
			ctl storm $RV "$n" "$g"
			read -r l < "$LAST"
			d=${l##*duration_ns=}
			k=${l##*bind_ok=}
			sleep 6 # the daemon's next sweep exports the kernel's loss counters
			echo "step block=$1 pairs=$n gap_us=$g duration_ns=${d%% *} bind_ok=${k%% *} $(counters)" >> /tmp/rate_steps
		done
	else
		echo "daemon not ready after 120 s" >> /tmp/rate_$1.err
	fi
	kill -TERM $RP
	wait $RP
	echo "exit=$?" >> /tmp/rate_$1.err
	tail -n 20 /tmp/rate_$1.err > /tmp/rate_$1.all
	frame "rate_out_$1" /tmp/rate_$1.all
}

rate_blocks() {
	: > /tmp/rate_steps
	# The storm's writer (this shell and its children) on CPU 0, the daemon on CPU 1: where
	# the scheduler put the daemon decided how much of a storm it could drain (unpinned, the
	# same tree kept 0.4% or 11% of a 20,000-pair storm's records from one run to the next).
	taskset -p 1 $$ > /dev/null
	ctl vm_create $RV
	ctl vdev_create $RV 0000:00:02.0 $RV 9
	rate_block tsm-trace /bin/tsm-trace
	for rev in $COMPARE; do
		rate_block "tsm-trace@$rev" "/bin/tsm-trace-$rev"
	done
	frame rate_steps /tmp/rate_steps
	ctl vdev_destroy $RV
	ctl vm_destroy $RV
	taskset -p 3 $$ > /dev/null
}
