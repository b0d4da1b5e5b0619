//! Field-by-field reading of JSON objects, so every error names the exact field
//! (`events[3].good`) instead of a line and column.

use serde_json::{Map, Value};
use shared_model::Timestamp;

use super::error::ApiError;

/// A JSON object being read, with the path prefix of its fields and the fields consumed so
/// far (anything left over is an unknown field: a typo the sender should hear about).
#[derive(Debug)]
pub(crate) struct Obj<'a> {
    map: &'a Map<String, Value>,
    prefix: String,
    seen: Vec<&'static str>,
}

impl<'a> Obj<'a> {
    pub(crate) fn new(value: &'a Value, path: &str) -> Result<Self, ApiError> {
        match value.as_object() {
            Some(map) => Ok(Self {
                map,
                prefix: if path.is_empty() {
                    String::new()
                } else {
                    format!("{path}.")
                },
                seen: Vec::new(),
            }),
            None if path.is_empty() => Err(ApiError::malformed("the body must be a JSON object")),
            None => Err(ApiError::invalid(path, "must be an object")),
        }
    }

    pub(crate) fn path(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn get(&mut self, name: &'static str) -> Option<&'a Value> {
        self.seen.push(name);
        self.map.get(name).filter(|v| !v.is_null())
    }

    pub(crate) fn raw(&mut self, name: &'static str) -> Option<&'a Value> {
        self.get(name)
    }

    pub(crate) fn req<T: FromJson>(&mut self, name: &'static str) -> Result<T, ApiError> {
        self.opt(name)?
            .ok_or_else(|| ApiError::invalid(self.path(name), "is required"))
    }

    pub(crate) fn opt<T: FromJson>(&mut self, name: &'static str) -> Result<Option<T>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => T::from_json(v)
                .map(Some)
                .map_err(|m| ApiError::invalid(self.path(name), m)),
        }
    }

    /// Fails on the first field that was never asked for.
    pub(crate) fn finish(self) -> Result<(), ApiError> {
        match self.map.keys().find(|k| !self.seen.contains(&k.as_str())) {
            Some(k) => Err(ApiError::invalid(self.path(k), "is not a known field")),
            None => Ok(()),
        }
    }
}

pub(crate) trait FromJson: Sized {
    fn from_json(v: &Value) -> Result<Self, String>;
}

impl FromJson for u32 {
    fn from_json(v: &Value) -> Result<Self, String> {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("must be a whole number from 0 to {}, got {v}", u32::MAX))
    }
}

impl FromJson for u8 {
    fn from_json(v: &Value) -> Result<Self, String> {
        v.as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .ok_or_else(|| format!("must be a whole number from 0 to 255, got {v}"))
    }
}

impl FromJson for f64 {
    fn from_json(v: &Value) -> Result<Self, String> {
        v.as_f64()
            .ok_or_else(|| format!("must be a number, got {v}"))
    }
}

impl FromJson for bool {
    fn from_json(v: &Value) -> Result<Self, String> {
        v.as_bool()
            .ok_or_else(|| format!("must be true or false, got {v}"))
    }
}

impl FromJson for String {
    fn from_json(v: &Value) -> Result<Self, String> {
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("must be a string, got {v}"))
    }
}

impl FromJson for Timestamp {
    fn from_json(v: &Value) -> Result<Self, String> {
        let s = v
            .as_str()
            .ok_or_else(|| format!("must be an RFC 3339 timestamp string, got {v}"))?;
        Timestamp::parse_rfc3339(s).map_err(|e| e.to_string())
    }
}

/// Identifiers and enums parse from strings through `FromStr`.
macro_rules! from_json_via_str {
    ($($t:ty),*) => {$(
        impl FromJson for $t {
            fn from_json(v: &Value) -> Result<Self, String> {
                let s = v.as_str().ok_or_else(|| format!("must be a string, got {v}"))?;
                s.parse().map_err(|e: shared_model::IdError| e.to_string())
            }
        }
    )*};
}

from_json_via_str!(
    shared_model::SiteId,
    shared_model::WorkOrderId,
    shared_model::EquipmentId,
    shared_model::LotId,
    shared_model::MaterialId,
    shared_model::ReasonCodeId,
    shared_model::BadgeId,
    shared_model::CharacteristicId,
    shared_model::EventId
);

/// Named enums parse from one of their names (see [`choice`]).
macro_rules! from_json_by_name {
    ($($t:ty),*) => {$(
        impl FromJson for $t {
            fn from_json(v: &Value) -> Result<Self, String> {
                choice(&String::from_json(v)?, &<$t>::ALL, <$t>::as_str)
            }
        }
    )*};
}

from_json_by_name!(
    shared_model::event::MachineState,
    shared_model::event::ClockAction
);

/// One of a named enum's variants by its name (`MachineState::ALL`, `MachineState::as_str`);
/// the error lists every accepted name for the sender.
pub(crate) fn choice<T: Copy>(
    v: &str,
    all: &[T],
    name: fn(T) -> &'static str,
) -> Result<T, String> {
    all.iter().copied().find(|t| name(*t) == v).ok_or_else(|| {
        format!(
            "must be one of {}, got {v:?}",
            all.iter().map(|t| name(*t)).collect::<Vec<_>>().join(", ")
        )
    })
}
