#!/usr/bin/env python3
"""A Modbus TCP server for the edge's system tests: pymodbus's own server (PyPI `pymodbus`),
with the values driven by commands on stdin, one per line, each answered by one line on stdout.

    python3 server.py PORT

    set holding|input|coil ADDR V [V ...]    registers (0..65535) or coils (0/1) from ADDR -> ok
    count ADDR N MS                           holding ADDR += 1, N times, one every MS ms, with
                                              16-bit rollover -> ok (when done)
    get ADDR N                                holding ADDR..ADDR+N-1 as a client left them
                                              -> values V [V ...]
    text ADDR N                               the same registers as ASCII, two characters a
                                              register, high byte first, zero bytes dropped
                                              -> text T
    stop                                      closes the listener and every connection -> ok
    start                                     listens again, the values kept (a PLC's retained
                                              memory) -> ok
    quit                                      -> exits

Prints `listening PORT` once it accepts connections. Tables: 1,000 holding registers, 1,000
input registers, 1,000 coils, each from address 0, unit id any.
"""

import asyncio
import sys

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

SIZE = 1000
FUNC = {"coil": 5, "holding": 16, "input": 4}


def device():
    return SimDevice(
        id=0,
        simdata=(
            [SimData(0, count=SIZE, values=False, datatype=DataType.BITS)],
            [SimData(0, count=SIZE, values=False, datatype=DataType.BITS)],
            [SimData(0, count=SIZE, values=0, datatype=DataType.REGISTERS)],
            [SimData(0, count=SIZE, values=0, datatype=DataType.REGISTERS)],
        ),
    )


class Peer:
    def __init__(self, port):
        self.port = port
        self.server = None
        self.task = None
        # What was set, to give a restarted server the same values.
        self.values = {}

    async def start(self):
        self.server = ModbusTcpServer(device(), address=("127.0.0.1", self.port))
        await self.server.serve_forever(background=True)
        for (table, addr), v in sorted(self.values.items()):
            await self.write(table, addr, [v])

    async def stop(self):
        await self.server.shutdown()
        self.server = None

    async def write(self, table, addr, values):
        for i, v in enumerate(values):
            self.values[(table, addr + i)] = v
        if self.server is None:
            return
        if table == "coil":
            values = [bool(v) for v in values]
        # The server's own datastore call, as a request from a client would make it; input
        # registers have no write request, so the store is called directly for all tables.
        await self.server.context.async_setValues(0, FUNC[table], addr, values)

    async def read(self, addr, n):
        # Function code 3's datastore call: what a client's write (function 16) left there.
        return await self.server.context.async_getValues(0, 3, addr, n)

    async def count(self, addr, n, ms):
        for _ in range(n):
            v = (self.values.get(("holding", addr), 0) + 1) % 65536
            await self.write("holding", addr, [v])
            await asyncio.sleep(ms / 1000)


async def main():
    peer = Peer(int(sys.argv[1]))
    await peer.start()
    print(f"listening {peer.port}", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "set":
            await peer.write(cmd[1], int(cmd[2]), [int(v) for v in cmd[3:]])
        elif cmd[0] == "count":
            await peer.count(int(cmd[1]), int(cmd[2]), int(cmd[3]))
        elif cmd[0] == "get":
            values = await peer.read(int(cmd[1]), int(cmd[2]))
            print("values " + " ".join(str(v) for v in values), flush=True)
            continue
        elif cmd[0] == "text":
            values = await peer.read(int(cmd[1]), int(cmd[2]))
            raw = b"".join(v.to_bytes(2, "big") for v in values)
            print("text " + raw.replace(b"\0", b"").decode("ascii"), flush=True)
            continue
        elif cmd[0] == "stop":
            await peer.stop()
        elif cmd[0] == "start":
            await peer.start()
        elif cmd[0] == "quit":
            break
        else:
            print(f"error unknown command {cmd[0]}", flush=True)
            continue
        print("ok", flush=True)
    if peer.server is not None:
        await peer.stop()


if __name__ == "__main__":
    asyncio.run(main())
