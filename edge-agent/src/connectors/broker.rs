//! One MQTT broker session, v3.1.1 or v5, for the plain MQTT and the Sparkplug B drivers.
//!
//! Acknowledgements are manual: a QoS 1 message is PUBACKed only when the driver says so,
//! after its events committed, so a broker redelivers whatever a crash interrupted. The session
//! is persistent (clean session off) so the broker also keeps what arrives while the edge is
//! away, within its own limits.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{TlsConfiguration, Transport, v5};

use super::config::BrokerSpec;

/// Messages the client library buffers between the event loop and us.
const CHANNEL_CAP: usize = 1_000;
/// Largest message taken (a Sparkplug birth of a large node fits with room to spare).
pub const MESSAGE_BYTES_MAX: usize = 1 << 20;

/// A message from the broker, to be acknowledged with [`Broker::ack`] once handled.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    inner: Inner,
}

#[derive(Debug, Clone)]
enum Inner {
    V4(rumqttc::Publish),
    // Boxed: a v5 publish carries its properties and is several times a v4 one.
    V5(Box<v5::mqttbytes::v5::Publish>),
}

impl Message {
    /// The packet id (the same when the broker sends the message again).
    pub fn packet_id(&self) -> u16 {
        match &self.inner {
            Inner::V4(p) => p.pkid,
            Inner::V5(p) => p.pkid,
        }
    }

    /// The broker's DUP flag: it may have delivered this message before.
    pub fn redelivered(&self) -> bool {
        match &self.inner {
            Inner::V4(p) => p.dup,
            Inner::V5(p) => p.dup,
        }
    }
}

/// What the last will says when the edge's connection dies without a goodbye.
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

pub enum Broker {
    V4(rumqttc::AsyncClient, Box<rumqttc::EventLoop>),
    V5(v5::AsyncClient, Box<v5::EventLoop>),
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Broker::V4(..) => "Broker::V4",
            Broker::V5(..) => "Broker::V5",
        })
    }
}

/// What the event loop produced.
#[derive(Debug)]
pub enum Polled {
    /// The broker accepted the connection (again).
    Connected,
    Message(Message),
    /// Anything else (acks, pings).
    Other,
}

fn tls(spec: &BrokerSpec) -> anyhow::Result<Transport> {
    let mut roots = rustls::RootCertStore::empty();
    match &spec.ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("reading the broker's CA file {path}: {e}"))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots.add(cert.map_err(|e| anyhow::anyhow!("CA file {path}: {e}"))?)?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(config),
    )))
}

impl Broker {
    /// Sets up the session; the connection itself is made by the first [`Broker::poll`].
    pub fn new(spec: &BrokerSpec, will: Option<Will>) -> anyhow::Result<Self> {
        let transport = if spec.tls { Some(tls(spec)?) } else { None };
        let keep_alive = Duration::from_secs(spec.keep_alive_secs);
        Ok(if spec.v5 {
            let mut o = v5::MqttOptions::new(&spec.client_id, &spec.host, spec.port);
            o.set_keep_alive(keep_alive)
                .set_clean_start(false)
                .set_manual_acks(true)
                .set_max_packet_size(Some(MESSAGE_BYTES_MAX as u32));
            if let (Some(u), p) = (&spec.username, &spec.password) {
                o.set_credentials(u, p.clone().unwrap_or_default());
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            if let Some(w) = will {
                o.set_last_will(v5::mqttbytes::v5::LastWill::new(
                    w.topic,
                    w.payload,
                    v5::mqttbytes::QoS::AtLeastOnce,
                    w.retain,
                    None,
                ));
            }
            let (c, e) = v5::AsyncClient::new(o, CHANNEL_CAP);
            Broker::V5(c, Box::new(e))
        } else {
            let mut o = rumqttc::MqttOptions::new(&spec.client_id, &spec.host, spec.port);
            o.set_keep_alive(keep_alive)
                .set_clean_session(false)
                .set_manual_acks(true)
                .set_max_packet_size(MESSAGE_BYTES_MAX, MESSAGE_BYTES_MAX);
            if let (Some(u), p) = (&spec.username, &spec.password) {
                o.set_credentials(u, p.clone().unwrap_or_default());
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            if let Some(w) = will {
                o.set_last_will(rumqttc::LastWill::new(
                    w.topic,
                    w.payload,
                    rumqttc::QoS::AtLeastOnce,
                    w.retain,
                ));
            }
            let (c, e) = rumqttc::AsyncClient::new(o, CHANNEL_CAP);
            Broker::V4(c, Box::new(e))
        })
    }

    /// Drives the connection: returns the next thing that happened, or the error that broke
    /// the connection (the next call reconnects).
    pub async fn poll(&mut self) -> Result<Polled, String> {
        match self {
            Broker::V4(_, e) => match e.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => Ok(Polled::Connected),
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    Ok(Polled::Message(Message {
                        topic: p.topic.clone(),
                        payload: p.payload.clone(),
                        inner: Inner::V4(p),
                    }))
                }
                Ok(_) => Ok(Polled::Other),
                Err(err) => Err(err.to_string()),
            },
            Broker::V5(_, e) => match e.poll().await {
                Ok(v5::Event::Incoming(v5::mqttbytes::v5::Packet::ConnAck(_))) => {
                    Ok(Polled::Connected)
                }
                Ok(v5::Event::Incoming(v5::mqttbytes::v5::Packet::Publish(p))) => {
                    Ok(Polled::Message(Message {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload.clone(),
                        inner: Inner::V5(Box::new(p)),
                    }))
                }
                Ok(_) => Ok(Polled::Other),
                Err(err) => Err(err.to_string()),
            },
        }
    }

    /// A handle that subscribes, publishes and acknowledges from another task.
    pub fn handle(&self) -> Handle {
        match self {
            Broker::V4(c, _) => Handle::V4(c.clone()),
            Broker::V5(c, _) => Handle::V5(c.clone()),
        }
    }
}

/// The sending side of a [`Broker`].
#[derive(Clone)]
pub enum Handle {
    V4(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("broker::Handle")
    }
}

impl Handle {
    /// Subscribes at QoS 1 (queued until the connection is up).
    pub async fn subscribe(&self, topics: &[String]) -> anyhow::Result<()> {
        for t in topics {
            match self {
                Handle::V4(c) => c.subscribe(t, rumqttc::QoS::AtLeastOnce).await?,
                Handle::V5(c) => c.subscribe(t, v5::mqttbytes::QoS::AtLeastOnce).await?,
            }
        }
        Ok(())
    }

    /// Acknowledges a message: call only once what it carried is committed.
    pub async fn ack(&self, m: &Message) -> anyhow::Result<()> {
        match (self, &m.inner) {
            (Handle::V4(c), Inner::V4(p)) => c.ack(p).await?,
            (Handle::V5(c), Inner::V5(p)) => c.ack(p).await?,
            _ => anyhow::bail!("a message acknowledged on another protocol version's session"),
        }
        Ok(())
    }

    /// Publishes at QoS 1.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) -> anyhow::Result<()> {
        self.publish_qos(topic, payload, retain, true).await
    }

    /// Publishes at QoS 0, not retained: Sparkplug's rule for commands (NCMD, DCMD), which
    /// must not arrive late after a reconnect. Success is the client taking it.
    pub async fn command(&self, topic: &str, payload: Vec<u8>) -> anyhow::Result<()> {
        self.publish_qos(topic, payload, false, false).await
    }

    async fn publish_qos(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
        at_least_once: bool,
    ) -> anyhow::Result<()> {
        match self {
            Handle::V4(c) => {
                let qos = if at_least_once {
                    rumqttc::QoS::AtLeastOnce
                } else {
                    rumqttc::QoS::AtMostOnce
                };
                c.publish(topic, qos, retain, payload).await?
            }
            Handle::V5(c) => {
                let qos = if at_least_once {
                    v5::mqttbytes::QoS::AtLeastOnce
                } else {
                    v5::mqttbytes::QoS::AtMostOnce
                };
                c.publish(topic, qos, retain, payload).await?
            }
        }
        Ok(())
    }

    pub async fn disconnect(&self) {
        let _ = match self {
            Handle::V4(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Handle::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
        };
    }
}
