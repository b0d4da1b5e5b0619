//! Entry points of the fuzz targets (`fuzz/`), here so an ordinary test can replay the
//! committed crashers and corpus (`fuzz/fixtures/`) on stable Rust. Each takes arbitrary bytes
//! and must return without panicking, whatever they are.

use std::time::Duration;

use automerge::AutoCommit;
use shared_model::{SiteId, Timestamp};

use crate::frame::FrameDecoder;
use crate::session::{HubSession, SessionConfig};

/// The largest body the targets' decoders accept.
const BODY_MAX: usize = 1 << 20;

/// The frame decoder, fed the bytes in two pieces split at the first byte's value.
pub fn frame_decoder(data: &[u8]) {
    let mut d = FrameDecoder::new(BODY_MAX);
    let cut = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    d.push(&data[..cut]);
    while let Ok(Some(_)) = d.next_message() {}
    d.push(&data[cut..]);
    for _ in 0..10_000 {
        match d.next_message() {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
}

/// The hub's end of a session from its first byte: the hello and whatever follows, in
/// chunks, with time moving; then every event and frame it produces is drained.
pub fn handshake(data: &[u8]) {
    let site = SiteId::new("SITE_001").unwrap_or_else(|_| unreachable!("a valid site id"));
    let mut s = HubSession::new(
        SessionConfig::default(),
        site,
        Timestamp::from_micros(1_795_000_000_000_000),
        Duration::ZERO,
    );
    for (i, chunk) in data.chunks(61).enumerate() {
        let now = Duration::from_millis(i as u64 * 7);
        s.handle_stream_bytes(now, chunk);
        while s.poll_event().is_some() {}
        while s.poll_transmit().is_some() {}
        if s.is_closed() {
            break;
        }
    }
    s.handle_timeout(Duration::from_secs(3600));
    while s.poll_transmit().is_some() {}
}

/// The hub's merge of a site's change into its copy of a work order: decode the change,
/// apply it to a document that already holds an order, read the order and its conflicts.
pub fn change_ingest(data: &[u8]) {
    let Ok(change) = crate::records::decode_untrusted(data) else {
        return;
    };
    let mut doc = AutoCommit::new();
    let view = crate::records::WorkOrderView {
        order: shared_model::work_order::WorkOrder::released(
            shared_model::WorkOrderId::new("SITE_001-WO-1")
                .unwrap_or_else(|_| unreachable!("a valid id")),
            SiteId::new("SITE_001").unwrap_or_else(|_| unreachable!("a valid site id")),
            shared_model::MaterialId::new("M").unwrap_or_else(|_| unreachable!("a valid id")),
            10,
        ),
        work_unit: None,
    };
    if crate::records::write_all(&mut doc, &view).is_err() {
        return;
    }
    doc.commit();
    if crate::records::apply_untrusted(&mut doc, vec![change]).is_err() {
        return;
    }
    let _ = crate::records::read_view(&doc);
    let _ = crate::records::state_conflicts(&doc);
    let _ = doc.save();
}
