//! Where the simulated presses show their values, as real PLCs and gateways would: JSON
//! messages on an MQTT broker and variables of an OPC UA server. Both peers are third-party
//! implementations: any broker (Mosquitto in the tests, rumqttd embedded in the demo, which must
//! run with nothing but Rust and PostgreSQL) and async-opcua's server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use opcua::server::node_manager::memory::{SimpleNodeManager, simple_node_manager};
use opcua::server::{ServerBuilder, ServerHandle};
use opcua::types::{DataValue, DateTime, NodeId, Variant};

use super::{STATE_MAP, Snapshot};

/// The JSON a line gateway publishes for a press: both counters, the state code and the
/// PLC's time (Unix milliseconds).
pub fn mqtt_payload(s: &Snapshot) -> Vec<u8> {
    serde_json::json!({"good": s.good, "scrap": s.scrap, "state": s.state, "ts": s.at_ms})
        .to_string()
        .into_bytes()
}

/// The `[[connector.tag]]` tables that read a press from [`mqtt_payload`] messages on `topic`.
pub fn mqtt_tags(prefix: &str, equipment: &str, topic: &str) -> String {
    press_tags(equipment, |field| {
        format!(
            "name = \"{prefix}.{field}\"\ntopic = \"{topic}\"\npath = \"{field}\"\ntimestamp_path = \"ts\"\n"
        )
    })
}

/// A press's three tags (the good and scrap counters, the state), `source` giving the lines
/// that name each and say where it is read, from its field name.
fn press_tags(equipment: &str, source: impl Fn(&str) -> String) -> String {
    let mut out = String::new();
    for (field, mapping) in [
        ("good", "map = \"counter\"\nmodulus = 65536".to_owned()),
        (
            "scrap",
            "map = \"counter\"\ncounts = \"scrap\"\nmodulus = 65536".to_owned(),
        ),
        ("state", format!("map = \"state\"\nstates = {STATE_MAP}")),
    ] {
        out.push_str(&format!(
            "\n[[connector.tag]]\nequipment = \"{equipment}\"\n{}{mapping}\n",
            source(field)
        ));
    }
    out
}

/// An MQTT client publishing at QoS 1 that knows when the broker has acknowledged everything.
pub struct MqttOut {
    client: rumqttc::AsyncClient,
    sent: u64,
    acked: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl MqttOut {
    pub fn connect(host: &str, port: u16, client_id: &str) -> Self {
        let mut opts = rumqttc::MqttOptions::new(client_id, host, port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_inflight(100);
        let (client, mut events) = rumqttc::AsyncClient::new(opts, 1_000);
        let acked = Arc::new(AtomicU64::new(0));
        let counter = acked.clone();
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    // rumqttc reconnects on the next poll; pause so a broker that is away
                    // is not hammered.
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        Self {
            client,
            sent: 0,
            acked,
            task,
        }
    }

    pub async fn publish(&mut self, topic: &str, s: &Snapshot) -> anyhow::Result<()> {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, mqtt_payload(s))
            .await
            .context("publishing a press's values")?;
        self.sent += 1;
        Ok(())
    }

    /// Waits until the broker acknowledged every message published so far.
    pub async fn flushed(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        while self.acked.load(Ordering::Relaxed) < self.sent {
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "the broker acknowledged {} of {} messages",
                    self.acked.load(Ordering::Relaxed),
                    self.sent
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl Drop for MqttOut {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A broker for a machine without one: rumqttd on `port` (loopback), in threads of its own for
/// the life of the process.
pub fn embedded_broker(port: u16) -> anyhow::Result<()> {
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: 64 * 1024,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "v4-demo".into(),
        listen: ([127, 0, 0, 1], port).into(),
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let config = rumqttd::Config {
        router: rumqttd::RouterConfig {
            max_connections: 100,
            max_outgoing_packet_count: 200,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some([("1".to_owned(), server)].into_iter().collect()),
        ..Default::default()
    };
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                eprintln!("the embedded MQTT broker stopped: {e}");
            }
        })
        .context("starting the embedded MQTT broker")?;
    // Ready once it accepts connections.
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the embedded MQTT broker did not listen on {port}")
}

/// 1970-01-01 in OPC UA ticks (100 ns since 1601-01-01).
const UNIX_EPOCH_TICKS: i64 = 116_444_736_000_000_000;

/// The namespace of the presses' variables.
pub const UA_NAMESPACE: &str = "urn:mes-demo:line";

/// An OPC UA server holding each press's counters and state as variables
/// `<ns>;s=<key>.Good|Scrap|State`, updated with the PLC's source timestamps.
pub struct UaServer {
    handle: ServerHandle,
    nodes: Arc<SimpleNodeManager>,
    ns: u16,
    pub port: u16,
}

impl UaServer {
    /// Starts the server on `port` (loopback, security None, anonymous); its keys in `pki`.
    pub async fn start(port: u16, pki: &std::path::Path) -> anyhow::Result<Self> {
        let mut builder = ServerBuilder::new_anonymous("mes-demo line")
            .application_uri("urn:mes-demo:line-server")
            .product_uri("urn:mes-demo:line-server")
            .host("127.0.0.1")
            .port(port)
            .pki_dir(pki)
            .create_sample_keypair(true)
            .trust_client_certs(true)
            .with_node_manager(simple_node_manager(
                opcua::server::diagnostics::NamespaceMetadata {
                    namespace_uri: UA_NAMESPACE.to_owned(),
                    ..Default::default()
                },
                "line",
            ));
        // async-opcua keeps 10 values per monitored item and 20 notifications per
        // subscription by default and revises larger requests down; the connectors ask for
        // 1,000 so that the history, played fast, loses nothing.
        let limits = &mut builder.limits_mut().subscriptions;
        limits.max_monitored_item_queue_size = 1_000;
        limits.max_queued_notifications = 10_000;
        let (server, handle) = builder
            .build()
            .map_err(|e| anyhow::anyhow!("building the OPC UA server: {e}"))?;
        let nodes = handle
            .node_managers()
            .get_of_type::<SimpleNodeManager>()
            .context("the OPC UA server has no simple node manager")?;
        let ns = handle
            .get_namespace_index(UA_NAMESPACE)
            .context("the OPC UA server lost its namespace")?;
        tokio::spawn(async move {
            if let Err(e) = server.run().await {
                eprintln!("the OPC UA server stopped: {e}");
            }
        });
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(Self {
                    handle,
                    nodes,
                    ns,
                    port,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the OPC UA server did not listen on {port}")
    }

    fn node(&self, key: &str, what: &str) -> NodeId {
        NodeId::new(self.ns, format!("{key}.{what}"))
    }

    /// Adds a press's variables, holding `first` (its values before anyone connects).
    pub fn add_press(&self, key: &str, first: &Snapshot) -> anyhow::Result<()> {
        let folder = NodeId::new(self.ns, key.to_owned());
        {
            let mut space = self.nodes.address_space().write();
            space.add_folder(&folder, key, key, &NodeId::objects_folder_id());
            let vars = vec![
                opcua::nodes::Variable::new(&self.node(key, "Good"), "Good", "Good", 0_u32),
                opcua::nodes::Variable::new(&self.node(key, "Scrap"), "Scrap", "Scrap", 0_u32),
                opcua::nodes::Variable::new(&self.node(key, "State"), "State", "State", 0_i32),
            ];
            if space.add_variables(vars, &folder).iter().any(|ok| !ok) {
                bail!("adding the OPC UA variables of {key}");
            }
        }
        self.set(key, first)
    }

    /// Shows a snapshot: the three variables change together, with its time as their source
    /// timestamp.
    pub fn set(&self, key: &str, s: &Snapshot) -> anyhow::Result<()> {
        // OPC UA time: 100 ns ticks since 1601-01-01.
        let at = DateTime::from(s.at_ms * 10_000 + UNIX_EPOCH_TICKS);
        let value = |v: Variant| DataValue {
            value: Some(v),
            status: None,
            source_timestamp: Some(at),
            source_picoseconds: None,
            server_timestamp: Some(DateTime::now()),
            server_picoseconds: None,
        };
        let (g, sc, st) = (
            self.node(key, "Good"),
            self.node(key, "Scrap"),
            self.node(key, "State"),
        );
        self.nodes
            .set_values(
                self.handle.subscriptions(),
                [
                    (&g, None, value(Variant::from(u32::from(s.good)))),
                    (&sc, None, value(Variant::from(u32::from(s.scrap)))),
                    (&st, None, value(Variant::from(s.state))),
                ]
                .into_iter(),
            )
            .map_err(|e| anyhow::anyhow!("setting the OPC UA variables of {key}: {e}"))
    }

    /// The `[[connector]]` table (and its tags) that reads the press `key` as `equipment`.
    pub fn connector(&self, name: &str, key: &str, equipment: &str) -> String {
        let mut out = format!(
            "\n[[connector]]\nname = \"{name}\"\nkind = \"opcua\"\nendpoint = \"opc.tcp://127.0.0.1:{}/\"\n",
            self.port
        );
        out.push_str(&press_tags(equipment, |field| {
            let node = format!("ns={};s={key}.{}{}", self.ns, field[..1].to_uppercase(), &field[1..]);
            format!("name = \"{key}.{field}\"\nnode = \"{node}\"\nsampling_ms = 100\nqueue_size = 1000\n")
        }));
        out
    }

    pub fn stop(&self) {
        self.handle.cancel();
    }
}

opaque_debug!(MqttOut, UaServer);
