#!/usr/bin/env python3
"""A load source for the connectors benchmark: FreeOpcUa's asyncua (PyPI `asyncua`) server
whose variables change at a fixed rate.

Namespace 2 ("urn:mes-edge-bench") holds Load.C0 .. Load.C<N-1>, UInt32 counters starting at
--start. Commands on stdin, one a line:

    run RATE SECONDS   RATE changes per second in all, round robin over the counters (each
                       change +1), for SECONDS; open loop: change k is due at start + k/RATE
                       and carries that wall-clock time as its source timestamp, so a late
                       write shows as latency instead of being hidden
    quit

"READY <port>" is printed once the server listens; after a run, one line:
"DONE changes=<n> seconds=<s> rate=<changes/s> late_max_ms=<ms>" (how far behind its due
time the slowest write was).
"""

import argparse
import asyncio
import sys
import time
from datetime import datetime, timezone

try:
    from asyncua import Server, ua
except ImportError:
    print("MISSING asyncua: pip install asyncua", flush=True)
    sys.exit(3)


async def run(nodes, values, rate, seconds):
    total = int(rate * seconds)
    period = 1.0 / rate
    start_mono = time.monotonic()
    start_wall = time.time()
    late_max = 0.0
    k = 0
    while k < total:
        due = start_mono + k * period
        ahead = due - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)
        # Everything due by now is written without yielding between writes.
        now = time.monotonic()
        while k < total and start_mono + k * period <= now:
            i = k % len(nodes)
            values[i] = (values[i] + 1) % (1 << 32)
            ts = datetime.fromtimestamp(start_wall + k * period, timezone.utc)
            await nodes[i].write_value(
                ua.DataValue(
                    ua.Variant(values[i], ua.VariantType.UInt32),
                    SourceTimestamp=ts,
                    ServerTimestamp=ts,
                )
            )
            late_max = max(late_max, now - (start_mono + k * period))
            k += 1
    elapsed = time.monotonic() - start_mono
    return total, elapsed, late_max


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tags", type=int, default=100)
    p.add_argument("--start", type=int, default=1000)
    a = p.parse_args()

    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{a.port}/mes/")
    server.set_server_name("mes-edge benchmark load")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await server.register_namespace("urn:mes-edge-bench")
    obj = await server.nodes.objects.add_object(ua.NodeId("Load", idx), "Load")
    nodes = []
    for i in range(a.tags):
        nodes.append(
            await obj.add_variable(
                ua.NodeId(f"Load.C{i}", idx), f"C{i}", ua.Variant(a.start, ua.VariantType.UInt32)
            )
        )
    values = [a.start] * a.tags
    async with server:
        print(f"READY {a.port}", flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            cmd = line.split()
            if not cmd:
                continue
            if cmd[0] == "quit":
                break
            if cmd[0] == "run":
                n, s, late = await run(nodes, values, float(cmd[1]), float(cmd[2]))
                print(
                    f"DONE changes={n} seconds={s:.3f} rate={n / s:.1f} late_max_ms={late * 1000:.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    asyncio.run(main())
