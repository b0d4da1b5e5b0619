//! Modbus TCP: the edge polls holding registers, input registers and coils every `poll_ms`,
//! reading adjacent addresses of a table in as few requests as the protocol allows.
//!
//! A poll is committed as one delivery whose readings carry the poll's time. Nothing is
//! acknowledged to a PLC: a poll that is not committed (the edge stops, the store fails) is
//! simply read again, and because each counter's last reading commits with its events, the
//! value read again moves nothing that was already counted.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_modbus::client::{Client as _, Context, Reader as _, Writer as _};
use tokio_modbus::prelude::SlaveContext as _;
use tokio_modbus::{ExceptionCode, Slave};

use super::config::{
    DataType, KindSpec, Mapping, Order, REGISTERS_PER_WRITE_MAX, RegisterTable, Source, TagSpec,
    WriteTarget,
};
use super::mapping::TagValue;
use super::store::READINGS_PER_COMMIT_MAX;
use super::{Ctx, Link, OrderStart, Reading};

/// Registers one read request returns at most (function codes 3 and 4).
pub const REGISTERS_PER_REQUEST_MAX: u16 = 125;
/// Coils one read request returns at most (function code 1).
pub const COILS_PER_REQUEST_MAX: u16 = 2_000;
/// How long a connect or a request may take before the link counts as lost.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Decoding, pure.

/// The value of a register tag from its registers (1 or 2, as they came off the wire).
///
/// `byte_order` is the order of the two bytes inside each register (big: the standard's high
/// byte first), `word_order` the order of the two registers of a 32-bit value (big: the first
/// register holds the high half). Integers stay integers when the scale keeps them whole (a
/// counter must not become 41.99999); other scaled values are floats. `None` when there are
/// too few registers.
pub fn decode_registers(
    data_type: DataType,
    word_order: Order,
    byte_order: Order,
    scale: f64,
    regs: &[u16],
) -> Option<TagValue> {
    let word = || -> Option<u16> { Some(swap(*regs.first()?, byte_order)) };
    let dword = || -> Option<u32> {
        let [hi, lo] = wire_words([*regs.first()?, *regs.get(1)?], word_order, byte_order);
        Some((u32::from(hi) << 16) | u32::from(lo))
    };
    let int = match data_type {
        DataType::U16 => i64::from(word()?),
        DataType::I16 => i64::from(word()? as i16),
        DataType::U32 => i64::from(dword()?),
        DataType::I32 => i64::from(dword()? as i32),
        DataType::Bool => return Some(TagValue::Bool(word()? != 0)),
        DataType::F32 => {
            let f = f32::from_bits(dword()?);
            // Through the shortest decimal form: 10.1f32 is 10.1, not 10.100000381469727.
            let f = if f.is_finite() {
                f.to_string().parse::<f64>().unwrap_or(f64::from(f))
            } else {
                f64::from(f)
            };
            return Some(if scale == 1.0 {
                TagValue::Float(f)
            } else {
                TagValue::Float(f * scale)
            });
        }
    };
    Some(scaled(int, scale))
}

/// A register's two bytes in `byte_order` (big: as the standard sends them).
fn swap(w: u16, byte_order: Order) -> u16 {
    match byte_order {
        Order::Big => w,
        Order::Little => w.swap_bytes(),
    }
}

/// A 32-bit value's high and low halves as its two registers travel, or back: swapping the
/// bytes of each register and swapping the registers are each their own inverse, so reading
/// and writing share this one place.
fn wire_words([a, b]: [u16; 2], word_order: Order, byte_order: Order) -> [u16; 2] {
    match word_order {
        Order::Big => [swap(a, byte_order), swap(b, byte_order)],
        Order::Little => [swap(b, byte_order), swap(a, byte_order)],
    }
}

/// The registers of a number written as `data_type` in the given orders: the reverse of
/// [`decode_registers`] (unscaled). A value the type cannot hold is an error.
pub fn encode_registers(
    data_type: DataType,
    word_order: Order,
    byte_order: Order,
    value: i64,
) -> Result<Vec<u16>, String> {
    let too_big = || format!("{value} does not fit a {data_type:?} register value");
    let dword = |v: u32| {
        let [hi, lo] = [(v >> 16) as u16, v as u16];
        wire_words([hi, lo], word_order, byte_order).to_vec()
    };
    Ok(match data_type {
        DataType::U16 => vec![swap(
            u16::try_from(value).map_err(|_| too_big())?,
            byte_order,
        )],
        DataType::I16 => vec![swap(
            i16::try_from(value).map_err(|_| too_big())? as u16,
            byte_order,
        )],
        DataType::U32 => dword(u32::try_from(value).map_err(|_| too_big())?),
        DataType::I32 => dword(i32::try_from(value).map_err(|_| too_big())? as u32),
        DataType::F32 => {
            // Exact up to 2^24; a planned quantity beyond that is no quantity a PLC plans.
            if value.unsigned_abs() > 1 << 24 {
                return Err(too_big());
            }
            dword((value as f32).to_bits())
        }
        DataType::Bool => return Err("a number cannot be written to a coil".to_owned()),
    })
}

/// A text as `len` registers: ASCII, two characters a register, the first in the high byte,
/// padded with zero bytes. A text longer than the registers hold, or not ASCII, is an error
/// (cutting an order id would send another order's id).
pub fn pack_ascii(text: &str, len: u16) -> Result<Vec<u16>, String> {
    let room = usize::from(len) * 2;
    if !text.is_ascii() {
        return Err(format!("\"{text}\" is not ASCII"));
    }
    if text.len() > room {
        return Err(format!(
            "\"{text}\" is {} characters, its {len} registers hold {room}",
            text.len()
        ));
    }
    let mut bytes = text.as_bytes().to_vec();
    bytes.resize(room, 0);
    Ok(bytes
        .chunks_exact(2)
        .map(|p| u16::from_be_bytes([p[0], p[1]]))
        .collect())
}

/// The write requests (function 16) that send `order` to `target`: each value's registers,
/// adjacent ones merged into one request up to the protocol's 123 registers.
pub fn write_requests(
    target: &WriteTarget,
    order: &OrderStart,
) -> Result<Vec<(u16, Vec<u16>)>, String> {
    let WriteTarget::Modbus {
        order_id,
        material,
        quantity,
        ..
    } = target
    else {
        return Err("not a modbus write".to_owned());
    };
    let mut values: Vec<(u16, Vec<u16>)> = Vec::with_capacity(3);
    if let Some(t) = order_id {
        let words =
            pack_ascii(order.order_id.as_str(), t.len).map_err(|e| format!("order id {e}"))?;
        values.push((t.address, words));
    }
    if let Some(t) = material {
        let words =
            pack_ascii(order.material.as_str(), t.len).map_err(|e| format!("material {e}"))?;
        values.push((t.address, words));
    }
    if let Some(q) = quantity {
        let words = encode_registers(
            q.data_type,
            q.word_order,
            q.byte_order,
            i64::from(order.planned_quantity),
        )
        .map_err(|e| format!("planned quantity {e}"))?;
        values.push((q.address, words));
    }
    values.sort_by_key(|(a, _)| *a);
    let mut out: Vec<(u16, Vec<u16>)> = Vec::with_capacity(values.len());
    for (address, words) in values {
        match out.last_mut() {
            Some((start, w))
                if u32::from(*start) + w.len() as u32 == u32::from(address)
                    && w.len() + words.len() <= usize::from(REGISTERS_PER_WRITE_MAX) =>
            {
                w.extend(words);
            }
            _ => out.push((address, words)),
        }
    }
    Ok(out)
}

/// An integer register value times `scale`: an integer while it stays whole and exact.
fn scaled(int: i64, scale: f64) -> TagValue {
    if scale == 1.0 {
        return TagValue::Int(int);
    }
    let f = int as f64 * scale;
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        TagValue::Int(f as i64)
    } else {
        TagValue::Float(f)
    }
}

// ---------------------------------------------------------------------------------------------
// Requests.

/// One read request: `count` addresses of `table` from `start`, and the tags inside them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub table: RegisterTable,
    pub start: u16,
    pub count: u16,
    pub tags: Vec<usize>,
}

impl Block {
    fn describe(&self) -> String {
        let table = match self.table {
            RegisterTable::Holding => "holding",
            RegisterTable::Input => "input",
            RegisterTable::Coil => "coil",
        };
        format!(
            "{table}:{}..{}",
            self.start,
            u32::from(self.start) + u32::from(self.count) - 1
        )
    }
}

/// The requests a poll makes: per table, tags whose addresses touch or overlap share a request
/// up to the protocol's limit (125 registers, 2,000 coils). Addresses no tag names are never
/// read, so a gap the PLC does not map cannot fail a request.
pub fn plan(tags: &[TagSpec]) -> Vec<Block> {
    let mut out = Vec::new();
    for table in [
        RegisterTable::Holding,
        RegisterTable::Input,
        RegisterTable::Coil,
    ] {
        let max = u32::from(match table {
            RegisterTable::Coil => COILS_PER_REQUEST_MAX,
            _ => REGISTERS_PER_REQUEST_MAX,
        });
        let mut spans: Vec<(u32, u32, usize)> = tags
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match &t.source {
                Source::Modbus {
                    table: tb,
                    address,
                    data_type,
                    ..
                } if *tb == table => {
                    let len = if table == RegisterTable::Coil {
                        1
                    } else {
                        u32::from(data_type.registers())
                    };
                    Some((u32::from(*address), len, i))
                }
                _ => None,
            })
            .collect();
        spans.sort_unstable();
        // (start, end exclusive, tags)
        let mut current: Option<(u32, u32, Vec<usize>)> = None;
        for (addr, len, i) in spans {
            let end = (addr + len).min(65_536);
            match &mut current {
                Some((start, cur_end, idx))
                    if addr <= *cur_end && end.max(*cur_end) - *start <= max =>
                {
                    *cur_end = end.max(*cur_end);
                    idx.push(i);
                }
                _ => {
                    if let Some(b) = current.take() {
                        out.push(block(table, b));
                    }
                    current = Some((addr, end, vec![i]));
                }
            }
        }
        if let Some(b) = current {
            out.push(block(table, b));
        }
    }
    out
}

fn block(table: RegisterTable, (start, end, tags): (u32, u32, Vec<usize>)) -> Block {
    Block {
        table,
        // Addresses are u16 and a block spans at most 2,000 of them.
        start: u16::try_from(start).unwrap_or(u16::MAX),
        count: u16::try_from(end - start).unwrap_or(u16::MAX),
        tags,
    }
}

/// What one request returned.
enum Data {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

/// The readings of a block's tags from what its request returned (tags whose addresses the
/// answer does not cover, which a correct server never sends, give none).
fn readings_of(
    tags: &[TagSpec],
    b: &Block,
    data: &Data,
    at: shared_model::Timestamp,
) -> Vec<Reading> {
    let mut out = Vec::with_capacity(b.tags.len());
    for &i in &b.tags {
        let Source::Modbus {
            address,
            data_type,
            word_order,
            byte_order,
            scale,
            ..
        } = &tags[i].source
        else {
            continue;
        };
        let offset = usize::from(address - b.start);
        let value = match data {
            Data::Bits(bits) => bits.get(offset).map(|b| TagValue::Bool(*b)),
            Data::Words(words) => words
                .get(offset..)
                .and_then(|w| decode_registers(*data_type, *word_order, *byte_order, *scale, w)),
        };
        if let Some(value) = value {
            out.push(Reading {
                tag: i,
                value,
                source_time: Some(at),
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The driver.

/// Why a connection ended.
enum Ended {
    Stopped,
    Lost(String),
}

pub async fn run(mut ctx: Ctx) -> anyhow::Result<()> {
    let spec = ctx.spec().clone();
    let KindSpec::Modbus(m) = &spec.kind else {
        anyhow::bail!("not a modbus connector");
    };
    let Some((host, port)) = super::config::host_port(&m.address, 502) else {
        anyhow::bail!("`address` \"{}\" is not host:port", m.address);
    };
    let blocks = plan(&spec.tags);
    let period = Duration::from_millis(m.poll_ms.max(1));
    let mut attempt = 0u32;
    // Each tag's last value committed (its key), to deliver only what changed.
    let mut last: Vec<Option<String>> = vec![None; spec.tags.len()];
    let orders = ctx.orders.clone();
    let mut orders = orders.lock().await;
    loop {
        let connect = async {
            let stream = TcpStream::connect((host.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            Ok::<_, std::io::Error>(tokio_modbus::client::tcp::attach_slave(
                stream,
                Slave(m.unit_id),
            ))
        };
        let connected = tokio::select! {
            _ = ctx.stop.changed() => break,
            c = tokio::time::timeout(REQUEST_TIMEOUT, connect) => c,
        };
        let error = match connected {
            Ok(Ok(mut client)) => {
                ctx.health.link(Link::Up, ctx.now());
                let ended = poll(
                    &mut ctx,
                    &mut client,
                    &blocks,
                    period,
                    &mut attempt,
                    &mut last,
                    &mut orders,
                )
                .await;
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, client.disconnect()).await;
                match ended {
                    Ended::Stopped => break,
                    Ended::Lost(e) => e,
                }
            }
            Ok(Err(e)) => format!("connecting to {}: {e}", m.address),
            Err(_) => format!(
                "connecting to {}: no answer within {} s",
                m.address,
                REQUEST_TIMEOUT.as_secs()
            ),
        };
        ctx.link_lost(&error).await;
        // The state tags were just marked unknown: their first value after the link returns
        // is recorded even if it did not change. Samples are not: an unchanged measurement
        // read again is not a new one.
        for (l, t) in last.iter_mut().zip(&spec.tags) {
            if !matches!(t.mapping, Mapping::Sample { .. }) {
                *l = None;
            }
        }
        if ctx
            .wait_to_reconnect(&mut attempt, &mut orders, "the link to the PLC is down")
            .await
        {
            break;
        }
    }
    Ok(())
}

/// Writes `order` to each write target of its unit. The outer error is a lost link (no
/// answer, a closed connection); the inner one a refused write (an exception answer), after
/// which the link is still fine.
async fn write_order(
    ctx: &Ctx,
    client: &mut Context,
    order: &OrderStart,
) -> Result<Result<(), String>, String> {
    let spec = ctx.spec().clone();
    let KindSpec::Modbus(m) = &spec.kind else {
        return Ok(Err("not a modbus connector".to_owned()));
    };
    for w in spec
        .writes
        .iter()
        .filter(|w| w.equipment == order.equipment)
    {
        let requests = match write_requests(&w.target, order) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let WriteTarget::Modbus { unit_id, .. } = &w.target else {
            continue;
        };
        client.set_slave(Slave(*unit_id));
        let mut result = Ok(Ok(()));
        for (address, words) in &requests {
            let what = format!(
                "writing holding:{address}..{}",
                u32::from(*address) + words.len() as u32 - 1
            );
            result = match tokio::time::timeout(
                REQUEST_TIMEOUT,
                client.write_multiple_registers(*address, words),
            )
            .await
            {
                Err(_) => Err(format!(
                    "{what}: no answer within {} s",
                    REQUEST_TIMEOUT.as_secs()
                )),
                Ok(Err(e)) => Err(format!("{what}: {e}")),
                Ok(Ok(Err(code))) => Ok(Err(format!("{what}: the server answered {code}"))),
                Ok(Ok(Ok(()))) => Ok(Ok(())),
            };
            if !matches!(result, Ok(Ok(()))) {
                break;
            }
        }
        // The polls read the connector's own unit.
        client.set_slave(Slave(m.unit_id));
        if !matches!(result, Ok(Ok(()))) {
            return result;
        }
    }
    Ok(Ok(()))
}

async fn read(client: &mut Context, b: &Block) -> tokio_modbus::Result<Data> {
    Ok(match b.table {
        RegisterTable::Holding => client
            .read_holding_registers(b.start, b.count)
            .await?
            .map(Data::Words),
        RegisterTable::Input => client
            .read_input_registers(b.start, b.count)
            .await?
            .map(Data::Words),
        RegisterTable::Coil => client.read_coils(b.start, b.count).await?.map(Data::Bits),
    })
}

/// Polls on one connection until it fails or the driver is asked to stop.
///
/// Only values that changed since they were last committed are delivered (an unchanged
/// counter or state means nothing, and an unchanged sample is not a new measurement).
async fn poll(
    ctx: &mut Ctx,
    client: &mut Context,
    blocks: &[Block],
    period: Duration,
    attempt: &mut u32,
    last: &mut [Option<String>],
    orders: &mut tokio::sync::mpsc::Receiver<OrderStart>,
) -> Ended {
    let spec = ctx.spec().clone();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ctx.stop.changed() => return Ended::Stopped,
            Some(order) = orders.recv() => {
                match write_order(ctx, client, &order).await {
                    Ok(result) => ctx.wrote(&order, result).await,
                    Err(lost) => {
                        ctx.wrote(&order, Err(lost.clone())).await;
                        return Ended::Lost(lost);
                    }
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        let at = ctx.now();
        let mut readings = Vec::new();
        for b in blocks {
            if ctx.stopping() {
                // The poll is not committed; the next run reads the same values again.
                return Ended::Stopped;
            }
            match tokio::time::timeout(REQUEST_TIMEOUT, read(client, b)).await {
                Err(_) => {
                    return Ended::Lost(format!(
                        "reading {}: no answer within {} s",
                        b.describe(),
                        REQUEST_TIMEOUT.as_secs()
                    ));
                }
                Ok(Err(e)) => return Ended::Lost(format!("reading {}: {e}", b.describe())),
                Ok(Ok(Err(code))) => exception(ctx, b, code),
                Ok(Ok(Ok(data))) => readings.extend(readings_of(&spec.tags, b, &data, at)),
            }
        }
        // A connection that answers a poll is a good one: the next loss backs off from the
        // start again.
        *attempt = 0;
        ctx.health.received(at);
        let changed: Vec<Reading> = readings
            .into_iter()
            .filter(|r| last[r.tag].as_deref() != Some(r.value.key().as_str()))
            .collect();
        if changed.is_empty() {
            continue;
        }
        // One commit per poll; a poll of more values than a transaction takes, in several.
        for chunk in changed.chunks(READINGS_PER_COMMIT_MAX) {
            match ctx.commit(chunk.to_vec()).await {
                Ok(_) => {
                    for r in chunk {
                        last[r.tag] = Some(r.value.key());
                    }
                }
                Err(e) => {
                    // Nothing is lost: the PLC still holds the values, and since `last` did not
                    // move, the next poll delivers them again.
                    ctx.health.error(&format!("storing: {e}"), ctx.now());
                    tracing::error!(connector = %spec.name, error = %e, "cannot store machine data");
                    break;
                }
            }
        }
    }
}

/// The server refused a request (an address it does not map, say): the link is fine, the
/// block's tags give nothing this poll, and the error says which addresses.
fn exception(ctx: &Ctx, b: &Block, code: ExceptionCode) {
    ctx.health.dropped(b.tags.len() as u64);
    let error = format!("reading {}: the server answered {code}", b.describe());
    // Once in the log per new error, not once per poll.
    if ctx.health.snapshot().last_error.as_deref() != Some(error.as_str()) {
        tracing::warn!(connector = %ctx.spec().name, error, "modbus exception");
    }
    ctx.health.error(&error, ctx.now());
}

#[cfg(test)]
mod tests;
