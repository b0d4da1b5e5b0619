//! One MQTT broker session, v3.1.1 or v5, for the plain MQTT and the Sparkplug B drivers.
//!
//! Acknowledgements are manual: a QoS 1 message is PUBACKed only when the driver says so,
//! after its events committed, so a broker redelivers whatever a crash interrupted. The session
//! is persistent (clean session off) so the broker also keeps what arrives while the edge is
//! away, within its own limits.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{TlsConfiguration, Transport, v5};
use tokio::sync::mpsc;

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

    /// Hands the client a message's acknowledgement if its request channel has room now;
    /// false when it has not (or the session is gone). Never waits: see [`Acks`].
    fn try_ack(&self, m: &Message) -> bool {
        match (self, &m.inner) {
            (Handle::V4(c), Inner::V4(p)) => c.try_ack(p).is_ok(),
            (Handle::V5(c), Inner::V5(p)) => c.try_ack(p).is_ok(),
            // Not reachable: a driver has one session. Dropping it is what a lost session
            // does; the broker sends the message again.
            _ => true,
        }
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

/// How long acknowledgements that found the client's request channel full wait before the
/// next try.
const ACK_RETRY: Duration = Duration::from_millis(5);

/// Acknowledgements of committed messages, handed to the client in the order the messages
/// came (MQTT wants PUBACKs in order) and without ever waiting for it.
///
/// Why never wait: the client's request channel is drained only while the driver polls the
/// event loop, and the driver waits for room in the committer's queue when that is full. A
/// committer waiting for the event loop while the driver waits for the committer moves
/// neither, and no keep-alive goes out: the session locks up (the connectors benchmark found
/// it at 5,000 messages/s with a broker window of 1,000). What does not fit now is handed over
/// at the next try. How many wait is bounded by the broker's in-flight window: it sends no
/// more QoS 1 messages while these are unacknowledged.
#[derive(Debug, Default)]
pub struct Acks {
    pending: VecDeque<Message>,
}

impl Acks {
    /// Acknowledges `m` once everything before it is: call only once what it carried is
    /// committed.
    pub fn push(&mut self, m: Message) {
        self.pending.push_back(m);
    }

    /// Hands the client what its request channel takes now, in order.
    pub fn flush(&mut self, h: &Handle) {
        while let Some(m) = self.pending.front() {
            if !h.try_ack(m) {
                break;
            }
            self.pending.pop_front();
        }
    }

    /// [`super::recv_batch`] for a committer: acknowledgements that found no room are handed
    /// over while it waits, every few milliseconds. When the queue closes, what is still
    /// waiting is dropped: the session ends, and the broker sends those messages again to the
    /// next one (the tag memory makes them move nothing).
    pub async fn next_batch<T>(
        &mut self,
        h: &Handle,
        rx: &mut mpsc::Receiver<T>,
        max: usize,
        batch: &mut Vec<T>,
    ) -> bool {
        loop {
            self.flush(h);
            if self.pending.is_empty() {
                return super::recv_batch(rx, max, batch).await;
            }
            // recv_batch only awaits its first item (mpsc::Receiver::recv is cancel-safe).
            if let Ok(more) =
                tokio::time::timeout(ACK_RETRY, super::recv_batch(rx, max, batch)).await
            {
                self.flush(h);
                return more;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(pkid: u16) -> Message {
        let mut p = rumqttc::Publish::new("t", rumqttc::QoS::AtLeastOnce, vec![1]);
        p.pkid = pkid;
        Message {
            topic: "t".into(),
            payload: Bytes::from_static(b"1"),
            inner: Inner::V4(p),
        }
    }

    /// The lock-up the benchmark found: the client's request channel full and nobody polling
    /// its event loop. The committer must still take its next batch (and the queue's end),
    /// keeping the acknowledgements that found no room, in order, for later.
    #[tokio::test]
    async fn a_full_request_channel_never_stops_the_committer() {
        let (client, _events) =
            rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("t", "127.0.0.1", 1), 2);
        let h = Handle::V4(client);
        let mut acks = Acks::default();
        for pkid in 1..=5 {
            acks.push(message(pkid));
        }
        acks.flush(&h);
        assert_eq!(acks.pending.len(), 3, "two fit the channel");
        let (tx, mut rx) = mpsc::channel(4);
        tx.send(7).await.unwrap();
        let mut batch = Vec::new();
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            acks.next_batch(&h, &mut rx, 10, &mut batch),
        )
        .await
        .expect("the committer waited for the event loop");
        assert!(got);
        assert_eq!(batch, vec![7]);
        // The three that found no room wait, in their order, for the event loop.
        acks.flush(&h);
        assert_eq!(
            acks.pending
                .iter()
                .map(Message::packet_id)
                .collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        drop(tx);
        batch.clear();
        assert!(!acks.next_batch(&h, &mut rx, 10, &mut batch).await);
    }
}
