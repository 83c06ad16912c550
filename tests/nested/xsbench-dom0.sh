#!/bin/sh
# xsbench-dom0.sh - runs INSIDE nested Xen's dom0 (busybox sh), started by
# tests/nested/xenstore-bench. Optionally runs the xenstore conformance suite,
# then benchmarks, on the running daemon ($NX_XENSTORED), side by side:
#   ours     xsload (package xenstore): serial (-c 1) and pipelined (-c K)
#   ctool    Debian's xenstore-read/-write/-rm/-chmod: one process per op, and
#            many ops in one process (xenstore-read p1 p2 ...; one transaction)
#   pyxs     python3-pyxs (when /opt/py is present): serial and threaded
# Every result is one line:  XSB <client> <mode> op=.. n=.. c=.. seconds=.. ops/s=..
# Timing of the C tools uses /proc/uptime (10 ms resolution; runs last seconds).
# Counts are small: under software-emulated nested Xen one round trip to the
# daemon costs milliseconds, and a process start far more.
SOCK=/run/xenstored/socket
export XENSTORED_PATH=$SOCK
B=/nx/xsbench
echo "XSB-BEGIN daemon=$NX_XENSTORED uptime=$(cut -d' ' -f1 /proc/uptime)"

if [ -x $B/xenstore_conformance.test ] && [ "${XSB_CONFORMANCE:-1}" = 1 ]; then
  echo "NXT-BEGIN xenstore_conformance"
  (cd $B && XENSTORE_CONFORMANCE_SOCKET=$SOCK XENSTORE_CONFORMANCE_DAEMON=$NX_XENSTORED \
    ./xenstore_conformance.test -test.v -test.timeout 10m ${XSB_RUN:+-test.run "$XSB_RUN"} 2>&1)
  echo "NXT-END xenstore_conformance rc=$?"
fi

cs() { cut -d' ' -f1 /proc/uptime | tr -d .; }   # centiseconds since boot
report() { # client mode op n c t0 t1
  awk -v cl="$1" -v m="$2" -v op="$3" -v n="$4" -v c="$5" -v a="$6" -v b="$7" 'BEGIN{
    s=(b-a)/100; if (s<=0) s=0.01
    printf "XSB %s %s op=%s n=%d c=%d seconds=%.2f ops/s=%.0f\n", cl, m, op, n, c, s, n/s }'
}
ours() { # mode op n c
  r=$($B/xsload -socket $SOCK -base /xsbench-ours -op "$2" -n "$3" -c "$4" 2>&1) || { echo "XSB ours $1 op=$2 FAILED: $r"; return; }
  echo "XSB ours $1 $r"
}

# ---- our client
ours serial read 200 1
ours pipelined read 2000 32
ours serial write 200 1
ours pipelined write 2000 32
ours serial tx 50 1
ours pipelined tx 200 16
ours serial layout-serial 3 1
ours serial layout 10 1
ours pipelined layout 24 8

# ---- Debian C clients (libxenstore); every invocation is one transaction
xenstore-write /xsbench-c/r value
N=20
t0=$(cs); i=0
while [ $i -lt $N ]; do xenstore-read /xsbench-c/r >/dev/null || echo "XSB ctool read FAILED"; i=$((i+1)); done
report ctool process-per-op read $N 1 "$t0" "$(cs)"
t0=$(cs); i=0
while [ $i -lt $N ]; do xenstore-write /xsbench-c/w/$((i % 1024)) value || echo "XSB ctool write FAILED"; i=$((i+1)); done
report ctool process-per-op write $N 1 "$t0" "$(cs)"
# (a xenstore-write process is TRANSACTION_START, WRITE, TRANSACTION_END:
# its rate is also the C tools' transaction rate)
# many ops in one process (one connection, one transaction, serial requests)
M=150
args=""; i=0; while [ $i -lt $M ]; do args="$args /xsbench-c/r"; i=$((i+1)); done
t0=$(cs); xenstore-read $args >/dev/null || echo "XSB ctool read-one-process FAILED"
report ctool one-process read $M 1 "$t0" "$(cs)"
args=""; i=0; while [ $i -lt $M ]; do args="$args /xsbench-c/w/$((i % 1024)) value"; i=$((i+1)); done
t0=$(cs); xenstore-write $args || echo "XSB ctool write-one-process FAILED"
report ctool one-process write $M 1 "$t0" "$(cs)"
# one domain's layout, as a shell toolstack would: rm+write+chmod the roots,
# all nodes in one xenstore-write (one transaction), one xenstore-chmod per
# node with its own permissions (same nodes/perms as xsload's layout; dom0 in
# the permissions since no guest domain exists: see xsload's layoutOps)
L=2
t0=$(cs); j=1
while [ $j -le $L ]; do
  d=/xsbench-c/local/domain/$j; vm=/xsbench-c/vm/00000000-0000-0000-0000-$j; pr=/xsbench-c/xenopsd-ng/00000000-0000-0000-0000-$j
  xenstore-rm $d $vm $pr 2>/dev/null
  xenstore-write $d "" $vm "" $pr ""
  xenstore-chmod $d n0 r0; xenstore-chmod $vm n0 r0; xenstore-chmod $pr n0
  xenstore-write $d/vm $vm $d/name xsload-$j $d/domid $j $d/cpu "" $d/cpu/0/availability online \
    $d/cpu/1/availability online $d/memory "" $d/memory/static-max 262144 $d/memory/target 262144 \
    $d/device "" $d/device/suspend/event-channel "" $d/control "" $d/control/shutdown "" \
    $d/control/feature-poweroff "" $d/control/feature-reboot "" $d/control/feature-suspend "" \
    $d/control/sysrq "" $d/control/platform-feature-multiprocessor-suspend 1 \
    $d/control/platform-feature-xs_reset_watches 1 $d/data "" $d/drivers "" $d/feature "" $d/attr "" \
    $d/error "" $d/store/port 1 $d/store/ring-ref 1044476 $d/console/port 2 $d/console/ring-ref 1044477 \
    $d/console/type xenconsoled $d/console/limit 1048576 $vm/uuid 00000000-0000-0000-0000-$j \
    $vm/name xsload-$j $vm/domid $j $pr/domid $j $pr/type pv $pr/created 2026-01-01T00:00:00Z \
    || echo "XSB ctool layout FAILED"
  for p in cpu memory device control; do xenstore-chmod $d/$p n0 r0; done
  for p in device/suspend/event-channel control/shutdown control/feature-poweroff control/feature-reboot \
    control/feature-suspend control/sysrq data drivers feature attr error; do xenstore-chmod $d/$p n0; done
  j=$((j+1))
done
report ctool processes layout $L 1 "$t0" "$(cs)"
xenstore-rm /xsbench-c

# ---- python3-pyxs
if [ -x /opt/py/usr/bin/python3.11 ]; then
  py() {
    r=$(LD_LIBRARY_PATH=/opt/py/usr/lib/x86_64-linux-gnu:/opt/py/lib/x86_64-linux-gnu PYTHONHOME=/opt/py/usr \
      PYTHONPATH=/opt/py/usr/lib/python3/dist-packages /opt/py/usr/bin/python3.11 -S $B/xsbench_pyxs.py $SOCK "$@" 2>&1) \
      || { echo "XSB pyxs op=$1 FAILED: $r"; return; }
    echo "XSB pyxs $mode $r"
  }
  mode=serial; py read 150; py write 150; py tx 50; py layout 3
  mode=threaded; py read 300 8; py write 300 8
else
  echo "XSB pyxs not present (/opt/py missing)"
fi
echo "XSB-END uptime=$(cut -d' ' -f1 /proc/uptime)"
