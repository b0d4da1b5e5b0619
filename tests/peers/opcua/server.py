#!/usr/bin/env python3
"""A real OPC UA server for the edge's system tests: FreeOpcUa's asyncua (PyPI `asyncua`).

Namespace 2 ("urn:mes-edge-test") holds Press1.Good (UInt32 counter), Press1.State (Int32)
and Press1.Diameter (Double), and the writable Press1.OrderId (String), Press1.Material
(String) and Press1.PlannedQty (Int32) that the edge writes an order to: each value a client
writes is printed as "WROTE <node> <variant type> <value> <status>" (one line per node of a
Write request, after the server applied it). The test drives them with commands on stdin, one
a line:

    count N      the counter goes up by 1, N times (each a change of its own)
    state V      the state becomes V
    measure X    the diameter becomes X
    quit

Each write carries its source timestamp. "READY <port>" is printed once the server listens;
"OK <command>" after each command. Start values come from the arguments so that a restarted
server holds what the killed one held.

With --security the server offers only Basic256Sha256 Sign and SignAndEncrypt, with the
certificate/key given, and accepts client certificates found in --trusted (a directory).
"""

import argparse
import asyncio
import sys
from datetime import datetime, timezone

try:
    from asyncua import Server, ua
except ImportError:
    print("MISSING asyncua: pip install asyncua", flush=True)
    sys.exit(3)


def now():
    return datetime.now(timezone.utc)


async def write(node, value, vtype):
    await node.write_value(
        ua.DataValue(ua.Variant(value, vtype), SourceTimestamp=now(), ServerTimestamp=now())
    )


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--counter", type=int, default=0)
    p.add_argument("--state", type=int, default=1)
    p.add_argument("--measure", type=float, default=10.0)
    p.add_argument("--security", action="store_true")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--trusted")
    a = p.parse_args()

    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{a.port}/mes/")
    server.set_server_name("mes-edge test press")
    if a.security:
        server.set_security_policy(
            [
                ua.SecurityPolicyType.Basic256Sha256_Sign,
                ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
            ]
        )
        await server.load_certificate(a.cert)
        await server.load_private_key(a.key)
        if a.trusted:
            from asyncua.crypto.truststore import TrustStore
            from asyncua.crypto.validator import CertificateValidator

            store = TrustStore([a.trusted], [])
            await store.load()
            server.set_certificate_validator(CertificateValidator(trust_store=store))
    else:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await server.register_namespace("urn:mes-edge-test")
    press = await server.nodes.objects.add_object(ua.NodeId("Press1", idx), "Press1")
    good = await press.add_variable(
        ua.NodeId("Press1.Good", idx), "Good", ua.Variant(a.counter, ua.VariantType.UInt32)
    )
    state = await press.add_variable(
        ua.NodeId("Press1.State", idx), "State", ua.Variant(a.state, ua.VariantType.Int32)
    )
    dia = await press.add_variable(
        ua.NodeId("Press1.Diameter", idx), "Diameter", ua.Variant(a.measure, ua.VariantType.Double)
    )
    for name, vtype, start in [
        ("OrderId", ua.VariantType.String, ""),
        ("Material", ua.VariantType.String, ""),
        ("PlannedQty", ua.VariantType.Int32, 0),
    ]:
        node = await press.add_variable(
            ua.NodeId(f"Press1.{name}", idx), name, ua.Variant(start, vtype)
        )
        await node.set_writable()

    from asyncua.common.callback import CallbackType

    def wrote(event, _dispatcher):
        if not event.is_external:
            return
        for item, status in zip(event.request_params.NodesToWrite, event.response_params):
            v = item.Value.Value
            print(
                f"WROTE {item.NodeId.Identifier} {v.VariantType.name} {v.Value} {status.name}",
                flush=True,
            )

    server.subscribe_server_callback(CallbackType.PostWrite, wrote)
    counter = a.counter
    async with server:
        await write(good, counter, ua.VariantType.UInt32)
        await write(state, a.state, ua.VariantType.Int32)
        await write(dia, a.measure, ua.VariantType.Double)
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
            if cmd[0] == "count":
                for _ in range(int(cmd[1])):
                    counter = (counter + 1) % (1 << 32)
                    await write(good, counter, ua.VariantType.UInt32)
                    await asyncio.sleep(0.02)
            elif cmd[0] == "state":
                await write(state, int(cmd[1]), ua.VariantType.Int32)
            elif cmd[0] == "measure":
                await write(dia, float(cmd[1]), ua.VariantType.Double)
            print(f"OK {line.strip()}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
