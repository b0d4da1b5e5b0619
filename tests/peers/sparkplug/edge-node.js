// A Sparkplug B edge node built on Eclipse Tahu's npm client (`sparkplug-client`, which encodes
// with `sparkplug-payload`): the independent peer of the edge agent's Sparkplug system test.
//
//   node edge-node.js <mqtt url> <group> <edge node> <device> [good]
//
// (`good`, 1000 by default, is where its counter stands: a restarted node goes on from there.)
// On connect it publishes NBIRTH (with bdSeq and a node metric, aliased) and DBIRTH of the
// device with aliases 10 (Counters/Good, UInt32) and 11 (State, Int32), and the writable
// 20 (Order/Id, String), 21 (Order/Material, String), 22 (Order/Quantity, Int32). Then it obeys one JSON
// command per line on stdin and answers one line on stdout per thing that happened:
//   {"ddata": {"good": 17, "state": 1}}  DDATA by alias only       -> "sent ddata seq=N"
//   {"gap": true}                        skip one seq number         -> "gap"
//   {"death": true}                      NDEATH (bdSeq) and exit     -> "death"
// and on each NCMD from a host: "ncmd <metric>=<value> ..."; a Node Control/Rebirth = true
// makes it publish its births again ("birth"); on each DCMD to its device:
// "dcmd <device> <metric>:<type>=<value> ...", a metric sent by alias only as "#<alias>:<name>".
"use strict";

const sparkplug = require("sparkplug-client");
const readline = require("readline");

const [url, groupId, edgeNode, device, startGood] = process.argv.slice(2);
if (!device) {
    console.error("usage: node edge-node.js <mqtt url> <group> <edge node> <device> [good]");
    process.exit(2);
}

const client = sparkplug.newClient({
    serverUrl: url,
    username: "",
    password: "",
    groupId,
    edgeNode,
    clientId: `${edgeNode}-${process.pid}`,
    publishDeath: true,
    version: "spBv1.0",
});

let good = startGood === undefined ? 1000 : Number(startGood);
let state = 1;
const say = (line) => process.stdout.write(line + "\n");

function births() {
    client.publishNodeBirth({
        timestamp: Date.now(),
        metrics: [
            { name: "Node Control/Rebirth", alias: 1, type: "Boolean", value: false },
            { name: "Line/Speed", alias: 2, type: "Double", value: 1.5 },
        ],
    });
    client.publishDeviceBirth(device, {
        timestamp: Date.now(),
        metrics: [
            { name: "Counters/Good", alias: 10, type: "UInt32", value: good },
            { name: "State", alias: 11, type: "Int32", value: state },
            { name: "Order/Id", alias: 20, type: "String", value: "" },
            { name: "Order/Material", alias: 21, type: "String", value: "" },
            { name: "Order/Quantity", alias: 22, type: "Int32", value: 0 },
        ],
    });
    say("birth");
}

client.on("birth", births);
client.on("error", (e) => {
    console.error("sparkplug client error: " + e);
    process.exit(1);
});
client.on("ncmd", (payload) => {
    const metrics = payload.metrics || [];
    say("ncmd " + metrics.map((m) => `${m.name}=${m.value}`).join(" "));
    if (metrics.some((m) => m.name === "Node Control/Rebirth" && m.value === true)) {
        births();
    }
});

const deviceAliases = { 10: "Counters/Good", 11: "State", 20: "Order/Id", 21: "Order/Material", 22: "Order/Quantity" };
client.on("dcmd", (dev, payload) => {
    const metrics = payload.metrics || [];
    const label = (m) => (m.name !== undefined ? m.name : `#${m.alias}:${deviceAliases[m.alias]}`);
    say(`dcmd ${dev} ` + metrics.map((m) => `${label(m)}:${m.type}=${m.value}`).join(" "));
});

readline.createInterface({ input: process.stdin }).on("line", (line) => {
    if (!line.trim()) return;
    const cmd = JSON.parse(line);
    if (cmd.ddata) {
        const metrics = [];
        if (cmd.ddata.good !== undefined) {
            good = cmd.ddata.good;
            metrics.push({ alias: 10, type: "UInt32", value: good, timestamp: Date.now() });
        }
        if (cmd.ddata.state !== undefined) {
            state = cmd.ddata.state;
            metrics.push({ alias: 11, type: "Int32", value: state });
        }
        client.publishDeviceData(device, { timestamp: Date.now(), metrics });
        say(`sent ddata seq=${(client.seq + 255) % 256}`);
    } else if (cmd.gap) {
        // One message "lost": the next one's seq is one further on.
        client.incrementSeqNum();
        say("gap");
    } else if (cmd.death) {
        // publishDeath: stop() publishes the NDEATH with the birth's bdSeq, then disconnects.
        client.stop();
        say("death");
        setTimeout(() => process.exit(0), 500);
    }
});
