//! The Sparkplug B payload (`org.eclipse.tahu.protobuf.Payload`, proto2), written by hand from
//! the published `sparkplug_b.proto` with the same field numbers, so no protoc is needed.
//!
//! The driver reads metrics' scalar values; the parts it does not use (data sets, templates,
//! property sets, extensions) are kept as opaque messages whose fields are skipped, which is
//! how protobuf reads fields it does not know.

use prost::Message;
use shared_model::Timestamp;

use crate::connectors::mapping::TagValue;

/// Sparkplug data types (`DataType` in the proto).
pub mod datatype {
    pub const INT8: u32 = 1;
    pub const INT16: u32 = 2;
    pub const INT32: u32 = 3;
    pub const INT64: u32 = 4;
    pub const UINT8: u32 = 5;
    pub const UINT16: u32 = 6;
    pub const UINT32: u32 = 7;
    pub const UINT64: u32 = 8;
    pub const FLOAT: u32 = 9;
    pub const DOUBLE: u32 = 10;
    pub const BOOLEAN: u32 = 11;
    pub const STRING: u32 = 12;
    pub const DATETIME: u32 = 13;
    pub const TEXT: u32 = 14;
    pub const UUID: u32 = 15;
}

#[derive(Clone, PartialEq, Message)]
pub struct Payload {
    /// Milliseconds since the Unix epoch, when the message was made.
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// 0..=255, per edge node, across all its messages but the NDEATH.
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Metric {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    #[prost(message, optional, tag = "8")]
    pub metadata: Option<MetaData>,
    #[prost(message, optional, tag = "9")]
    pub properties: Option<Opaque>,
    #[prost(oneof = "Value", tags = "10, 11, 12, 13, 14, 15, 16, 17, 18, 19")]
    pub value: Option<Value>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    #[prost(uint32, tag = "10")]
    IntValue(u32),
    #[prost(uint64, tag = "11")]
    LongValue(u64),
    #[prost(float, tag = "12")]
    FloatValue(f32),
    #[prost(double, tag = "13")]
    DoubleValue(f64),
    #[prost(bool, tag = "14")]
    BooleanValue(bool),
    #[prost(string, tag = "15")]
    StringValue(String),
    #[prost(bytes, tag = "16")]
    BytesValue(Vec<u8>),
    #[prost(message, tag = "17")]
    DatasetValue(Opaque),
    #[prost(message, tag = "18")]
    TemplateValue(Opaque),
    #[prost(message, tag = "19")]
    ExtensionValue(Opaque),
}

#[derive(Clone, PartialEq, Message)]
pub struct MetaData {
    #[prost(bool, optional, tag = "1")]
    pub is_multi_part: Option<bool>,
    #[prost(string, optional, tag = "2")]
    pub content_type: Option<String>,
    #[prost(uint64, optional, tag = "3")]
    pub size: Option<u64>,
    #[prost(uint64, optional, tag = "4")]
    pub seq: Option<u64>,
    #[prost(string, optional, tag = "5")]
    pub file_name: Option<String>,
    #[prost(string, optional, tag = "6")]
    pub file_type: Option<String>,
    #[prost(string, optional, tag = "7")]
    pub md5: Option<String>,
    #[prost(string, optional, tag = "8")]
    pub description: Option<String>,
}

/// A message the driver does not read (DataSet, Template, PropertySet, extensions): its
/// fields are skipped.
#[derive(Clone, PartialEq, Message)]
pub struct Opaque {}

/// The name of the metric that carries the birth/death sequence number.
pub const BD_SEQ: &str = "bdSeq";
/// The node control metric a host sets to ask an edge node for its births again.
pub const REBIRTH: &str = "Node Control/Rebirth";

pub fn decode(bytes: &[u8]) -> Result<Payload, prost::DecodeError> {
    Payload::decode(bytes)
}

/// Milliseconds since the epoch as a time, when they fit.
pub fn time(ms: Option<u64>) -> Option<Timestamp> {
    ms.and_then(|ms| i64::try_from(ms).ok())
        .filter(|ms| *ms < i64::MAX / 1_000)
        .map(Timestamp::from_millis)
}

impl Metric {
    /// The metric's value as a tag value, read by its data type (the metric's own, or the one
    /// its birth gave, `known`). A null, or a value no tag can mean (bytes, data sets,
    /// templates), is none.
    pub fn tag_value(&self, known: Option<u32>) -> Option<TagValue> {
        if self.is_null == Some(true) {
            return None;
        }
        let datatype = self.datatype.or(known).unwrap_or(0);
        Some(match self.value.as_ref()? {
            // Signed types travel as their two's complement in the unsigned field; some
            // implementations widen to 32 bits first, so the low bits of the type's width are
            // what counts.
            Value::IntValue(v) => TagValue::Int(match datatype {
                datatype::INT8 => i64::from(*v as u8 as i8),
                datatype::INT16 => i64::from(*v as u16 as i16),
                datatype::INT32 => i64::from(*v as i32),
                _ => i64::from(*v),
            }),
            Value::LongValue(v) => match datatype {
                datatype::INT64 => TagValue::Int(*v as i64),
                datatype::INT8 => TagValue::Int(i64::from(*v as u8 as i8)),
                datatype::INT16 => TagValue::Int(i64::from(*v as u16 as i16)),
                datatype::INT32 => TagValue::Int(i64::from(*v as u32 as i32)),
                _ => match i64::try_from(*v) {
                    Ok(i) => TagValue::Int(i),
                    Err(_) => TagValue::Float(*v as f64),
                },
            },
            Value::FloatValue(f) => TagValue::Float(f64::from(*f)),
            Value::DoubleValue(f) => TagValue::Float(*f),
            Value::BooleanValue(b) => TagValue::Bool(*b),
            Value::StringValue(s) => TagValue::Text(s.clone()),
            Value::BytesValue(_)
            | Value::DatasetValue(_)
            | Value::TemplateValue(_)
            | Value::ExtensionValue(_) => return None,
        })
    }

    /// The value as an unsigned number (the `bdSeq` metric).
    pub fn as_u64(&self) -> Option<u64> {
        match self.value.as_ref()? {
            Value::IntValue(v) => Some(u64::from(*v)),
            Value::LongValue(v) => Some(*v),
            _ => None,
        }
    }
}

/// The NCMD payload that asks an edge node to publish its births again.
pub fn rebirth(now: Timestamp) -> Vec<u8> {
    let ms = u64::try_from(now.as_millis()).unwrap_or(0);
    command(
        vec![Metric {
            name: Some(REBIRTH.to_owned()),
            timestamp: Some(ms),
            datatype: Some(datatype::BOOLEAN),
            value: Some(Value::BooleanValue(true)),
            ..Metric::default()
        }],
        now,
    )
}

/// An NCMD or DCMD payload with `metrics` (commands carry no `seq`).
pub fn command(metrics: Vec<Metric>, now: Timestamp) -> Vec<u8> {
    Payload {
        timestamp: Some(u64::try_from(now.as_millis()).unwrap_or(0)),
        metrics,
        ..Payload::default()
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_and_unsigned_values_read_by_their_type() {
        let m = |datatype: u32, value: Value| Metric {
            datatype: Some(datatype),
            value: Some(value),
            ..Metric::default()
        };
        assert_eq!(
            m(datatype::INT8, Value::IntValue(0xFF)).tag_value(None),
            Some(TagValue::Int(-1))
        );
        assert_eq!(
            m(datatype::INT16, Value::IntValue(u32::MAX)).tag_value(None),
            Some(TagValue::Int(-1))
        );
        assert_eq!(
            m(datatype::UINT32, Value::IntValue(u32::MAX)).tag_value(None),
            Some(TagValue::Int(4_294_967_295))
        );
        assert_eq!(
            m(datatype::UINT32, Value::LongValue(70_000)).tag_value(None),
            Some(TagValue::Int(70_000))
        );
        assert_eq!(
            m(datatype::INT64, Value::LongValue(u64::MAX)).tag_value(None),
            Some(TagValue::Int(-1))
        );
        assert_eq!(
            m(datatype::UINT64, Value::LongValue(u64::MAX)).tag_value(None),
            Some(TagValue::Float(u64::MAX as f64))
        );
        // A data message without its type uses the birth's.
        let bare = Metric {
            alias: Some(3),
            value: Some(Value::IntValue(0xFFFF)),
            ..Metric::default()
        };
        assert_eq!(
            bare.tag_value(Some(datatype::INT16)),
            Some(TagValue::Int(-1))
        );
        assert_eq!(bare.tag_value(None), Some(TagValue::Int(65_535)));
        let null = Metric {
            is_null: Some(true),
            ..bare.clone()
        };
        assert_eq!(null.tag_value(None), None);
        assert_eq!(
            m(datatype::STRING, Value::BytesValue(vec![1])).tag_value(None),
            None
        );
    }

    #[test]
    fn the_rebirth_command_round_trips() {
        let p = decode(&rebirth(Timestamp::from_millis(1_700_000_000_000))).unwrap();
        assert_eq!(p.timestamp, Some(1_700_000_000_000));
        assert_eq!(p.metrics[0].name.as_deref(), Some(REBIRTH));
        assert_eq!(p.metrics[0].value, Some(Value::BooleanValue(true)));
        assert!(decode(b"\xff\xff\xff").is_err());
    }
}
