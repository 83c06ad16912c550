#!/usr/bin/env python3
"""xenstore benchmark with python3-pyxs (Debian's pure-Python xenstore client).

Run inside nested Xen's dom0 by xsbench-dom0.sh (tests/nested/xenstore-bench):
    xsbench_pyxs.py SOCKET OP N [THREADS]
OP: read | write | tx | layout. Prints one line like xsload:
    op=read n=2000 c=1 seconds=1.234 ops/s=1621
THREADS > 1 shares one pyxs Router (one connection) between threads, each
with its own Client copy: pyxs' way of having several requests in flight.
The layout is the same node list and permissions as xsload's layout-serial
(domain/build.go's writeLayout for a 2-vCPU PV domain), one request each.
"""
import copy
import sys
import threading
import time

from pyxs import Client

BASE = b"/xsbench-pyxs"


def layout_ops(domid):
    d = str(domid).encode()
    dom = BASE + b"/local/domain/" + d
    vm = BASE + b"/vm/00000000-0000-0000-0000-%012d" % domid
    priv = BASE + b"/xenopsd-ng/00000000-0000-0000-0000-%012d" % domid
    # dom0 in the permissions: C xenstored answers SET_PERMS whose owner is a
    # domain that does not exist with ENOENT (no guest runs in the nested host)
    noperm = [b"n0"]
    roperm = [b"n0", b"r0"]
    rwperm = [b"n0"]
    roots = [(dom, roperm), (vm, roperm), (priv, noperm)]
    body = []

    def add(p, v, perms=None):
        body.append((p, v, perms))

    add(dom + b"/vm", vm)
    add(dom + b"/name", b"xsload-" + d)
    add(dom + b"/domid", d)
    add(dom + b"/cpu", b"", roperm)
    add(dom + b"/cpu/0/availability", b"online")
    add(dom + b"/cpu/1/availability", b"online")
    add(dom + b"/memory", b"", roperm)
    add(dom + b"/memory/static-max", b"262144")
    add(dom + b"/memory/target", b"262144")
    add(dom + b"/device", b"", roperm)
    add(dom + b"/device/suspend/event-channel", b"", rwperm)
    add(dom + b"/control", b"", roperm)
    for f in (b"shutdown", b"feature-poweroff", b"feature-reboot", b"feature-suspend", b"sysrq"):
        add(dom + b"/control/" + f, b"", rwperm)
    add(dom + b"/control/platform-feature-multiprocessor-suspend", b"1")
    add(dom + b"/control/platform-feature-xs_reset_watches", b"1")
    for p in (b"data", b"drivers", b"feature", b"attr", b"error"):
        add(dom + b"/" + p, b"", rwperm)
    add(dom + b"/store/port", b"1")
    add(dom + b"/store/ring-ref", b"1044476")
    add(dom + b"/console/port", b"2")
    add(dom + b"/console/ring-ref", b"1044477")
    add(dom + b"/console/type", b"xenconsoled")
    add(dom + b"/console/limit", b"1048576")
    add(vm + b"/uuid", b"00000000-0000-0000-0000-%012d" % domid)
    add(vm + b"/name", b"xsload-" + d)
    add(vm + b"/domid", d)
    add(priv + b"/domid", d)
    add(priv + b"/type", b"pv")
    add(priv + b"/created", b"2026-01-01T00:00:00Z")
    return roots, body


def transaction(c, fn, attempts=16):
    for _ in range(attempts):
        c.transaction()
        try:
            fn()
        except Exception:
            c.rollback()
            raise
        if c.commit():
            return
    raise RuntimeError("transaction still conflicting after %d attempts" % attempts)


def one_op(c, op, i):
    if op == "read":
        c.read(BASE + b"/r")
    elif op == "write":
        c.write(BASE + b"/w/%d" % (i % 1024), b"value")
    elif op == "tx":
        p = BASE + b"/t/%d" % (i % 1024)

        def body():
            c.read(BASE + b"/r")
            c.write(p, b"v")
        transaction(c, body)
    elif op == "layout":
        roots, body = layout_ops(1 + i % 32000)
        for p, perms in roots:
            c.delete(p)
            c.write(p, b"")
            c.set_perms(p, perms)

        def tx():
            for p, v, perms in body:
                c.write(p, v)
                if perms:
                    c.set_perms(p, perms)
        transaction(c, tx)
    else:
        raise SystemExit("unknown op %r (read|write|tx|layout)" % op)


def main():
    sock, op, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    with Client(unix_socket_path=sock) as c:
        c.write(BASE + b"/r", b"value")
        for p in (b"/local/domain", b"/vm", b"/xenopsd-ng"):
            c.mkdir(BASE + p)
        if op == "tx":
            for i in range(1024):
                c.write(BASE + b"/t/%d" % i, b"")
        nxt = [0]
        lock = threading.Lock()
        errors = []

        def worker():
            cc = copy.copy(c) if threads > 1 else c
            while True:
                with lock:
                    i = nxt[0]
                    nxt[0] += 1
                if i >= n or errors:
                    return
                try:
                    one_op(cc, op, i)
                except Exception as e:  # reported below, ends the run
                    errors.append("%s #%d: %r" % (op, i, e))
                    return

        t0 = time.monotonic()
        ts = [threading.Thread(target=worker) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        el = time.monotonic() - t0
        c.delete(BASE)
    if errors:
        print("pyxs:", errors[0], file=sys.stderr)
        sys.exit(1)
    print("op=%s n=%d c=%d seconds=%.3f ops/s=%.0f" % (op, n, threads, el, n / el))


if __name__ == "__main__":
    main()
