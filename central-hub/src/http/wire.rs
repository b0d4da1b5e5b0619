//! How typed answers become bytes.
//!
//! The API's JSON was first written with `json!`, whose maps (serde_json without
//! `preserve_order`) put keys in alphabetical order. The typed response structs keep those
//! bytes by declaring their fields alphabetically; [`assert_wire_order`] is the test that
//! catches a struct that does not.

use serde::Serialize;

/// `value` as JSON bytes (a value that cannot be serialized, which our types cannot produce,
/// becomes an empty body rather than a panic).
pub fn json_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Fails when `value` serializes with its keys in another order than the sorted one the
/// `json!` answers had (at every depth).
#[cfg(test)]
pub fn assert_wire_order<T: Serialize>(value: &T) {
    let direct = serde_json::to_string(value).unwrap_or_default();
    let sorted = serde_json::to_value(value)
        .map(|v| v.to_string())
        .unwrap_or_default();
    assert_eq!(
        direct,
        sorted,
        "declare the fields of {} in alphabetical order",
        std::any::type_name::<T>()
    );
}

/// An instant as the API writes it (RFC 3339), `None` as `null`.
pub fn rfc3339(t: Option<time::OffsetDateTime>) -> Option<String> {
    t.and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
}
