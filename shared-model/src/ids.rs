//! Validated identifiers.
//!
//! Every identifier that crosses a boundary (HTTP, the wire, a database column) is a newtype
//! that can only be built through validation, so code past the boundary never re-checks it.
//! Deserialisation goes through the same validation: a frame or a JSON body cannot smuggle in
//! an identifier that `new` would refuse.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} bytes long, the maximum is {max}")]
    TooLong {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{kind} contains the character {ch:?}, allowed are {allowed}")]
    BadChar {
        kind: &'static str,
        ch: char,
        allowed: &'static str,
    },
    #[error("{kind} must start with {expected}")]
    BadStart {
        kind: &'static str,
        expected: &'static str,
    },
    #[error("{kind} is not a UUID: {reason}")]
    NotUuid { kind: &'static str, reason: String },
    #[error("{kind} must be a version 7 UUID, got version {version}")]
    WrongUuidVersion { kind: &'static str, version: usize },
}

/// Maximum length of a site id: the deployment guide's `site_id VARCHAR(20)`.
pub const SITE_ID_BYTES_MAX: usize = 20;
/// Maximum length of the other textual identifiers (work orders, equipment, lots...).
pub const CODE_BYTES_MAX: usize = 64;

/// A factory site, such as `SITE_001`: an upper-case ASCII letter, then upper-case letters,
/// digits or `_`, at most [`SITE_ID_BYTES_MAX`] bytes. It is a Postgres partition key and part
/// of a TLS certificate's subject, so it is deliberately narrow.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SiteId(String);

impl SiteId {
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        const KIND: &str = "site id";
        if s.is_empty() {
            return Err(IdError::Empty { kind: KIND });
        }
        if s.len() > SITE_ID_BYTES_MAX {
            return Err(IdError::TooLong {
                kind: KIND,
                len: s.len(),
                max: SITE_ID_BYTES_MAX,
            });
        }
        if let Some(ch) = s
            .chars()
            .find(|c| !(c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_'))
        {
            return Err(IdError::BadChar {
                kind: KIND,
                ch,
                allowed: "A-Z, 0-9 and _",
            });
        }
        if !s.starts_with(|c: char| c.is_ascii_uppercase()) {
            return Err(IdError::BadStart {
                kind: KIND,
                expected: "an upper-case letter",
            });
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Declares a textual code identifier: 1..=[`CODE_BYTES_MAX`] bytes of ASCII letters, digits
/// and `- _ . : /`. These are the characters ERP and PLC tag names use in practice, and none of
/// them needs escaping in a URL path segment except `/`, which is why `/` is kept out of ids
/// used in paths (work orders), see [`WorkOrderId`].
macro_rules! code_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $extra:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate_code(&s, $kind, $extra)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl_string_id!($name);
    };
}

macro_rules! impl_string_id {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

impl_string_id!(SiteId);

fn validate_code(s: &str, kind: &'static str, extra: &'static str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > CODE_BYTES_MAX {
        return Err(IdError::TooLong {
            kind,
            len: s.len(),
            max: CODE_BYTES_MAX,
        });
    }
    if let Some(ch) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || extra.contains(*c)))
    {
        return Err(IdError::BadChar {
            kind,
            ch,
            allowed: "ASCII letters, digits and the punctuation listed in the docs",
        });
    }
    Ok(())
}

code_id!(
    /// A work order's global id, site-prefixed by convention (`SITE_001-WO-000123`). No `/`,
    /// because it appears as a path segment in `/api/v1/work-orders/{id}`.
    WorkOrderId, "work order id", "-_.:"
);
code_id!(
    /// A piece of equipment at any ISA-95 level (site, area, work center, work unit).
    EquipmentId, "equipment id", "-_.:/"
);
code_id!(
    /// A material lot; global, since lots move between plants.
    LotId, "lot id", "-_.:/"
);
code_id!(
    /// A material definition code (part number).
    MaterialId, "material id", "-_.:/"
);
code_id!(
    /// A reason code (scrap or downtime) from the two-level reason tree.
    ReasonCodeId, "reason code", "-_.:/"
);
code_id!(
    /// An operator's badge id, as a scanner types it.
    BadgeId, "badge id", "-_.:"
);
code_id!(
    /// A quality characteristic of an inspection plan (`diameter_mm`).
    CharacteristicId, "characteristic", "-_.:/"
);

/// Identifies an append-only event: a UUIDv7, so ids sort by creation time and index well.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(Uuid);

impl EventId {
    pub fn new(uuid: Uuid) -> Result<Self, IdError> {
        match uuid.get_version_num() {
            7 => Ok(Self(uuid)),
            version => Err(IdError::WrongUuidVersion {
                kind: "event id",
                version,
            }),
        }
    }

    /// Builds a UUIDv7 from parts the caller supplies. The model never reads the clock or an
    /// RNG itself: the edge agent passes its clock's milliseconds and random bytes.
    pub fn from_parts(unix_millis: u64, random: [u8; 10]) -> Self {
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&unix_millis.to_be_bytes()[2..]);
        bytes[6..].copy_from_slice(&random);
        // Version (7) and RFC 4122 variant bits.
        bytes[6] = (bytes[6] & 0x0f) | 0x70;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Self(Uuid::from_bytes(bytes))
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.0)
    }
}

impl FromStr for EventId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let uuid = Uuid::parse_str(s).map_err(|e| IdError::NotUuid {
            kind: "event id",
            reason: e.to_string(),
        })?;
        Self::new(uuid)
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let uuid = Uuid::deserialize(d)?;
        Self::new(uuid).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_ids() {
        let cases: &[(&str, bool)] = &[
            ("SITE_001", true),
            ("A", true),
            ("PLANT_12345678901234", true), // exactly 20
            ("PLANT_123456789012345", false),
            ("", false),
            ("site_001", false),
            ("_SITE", false),
            ("1SITE", false),
            ("SITE-001", false),
            ("SITE 001", false),
            ("SITÉ", false),
        ];
        for (input, ok) in cases {
            assert_eq!(SiteId::new(*input).is_ok(), *ok, "{input:?}");
        }
    }

    #[test]
    fn code_ids() {
        assert!(WorkOrderId::new("SITE_001-WO-000123").is_ok());
        assert!(matches!(
            WorkOrderId::new("a/b"),
            Err(IdError::BadChar { ch: '/', .. })
        ));
        assert!(EquipmentId::new("AREA1/WC2/UNIT3").is_ok());
        assert!(matches!(LotId::new(""), Err(IdError::Empty { .. })));
        assert!(matches!(
            MaterialId::new("x".repeat(65)),
            Err(IdError::TooLong { len: 65, .. })
        ));
        assert!(BadgeId::new("0042\n").is_err());
    }

    #[test]
    fn event_ids_are_v7_and_sort_by_time() {
        let a = EventId::from_parts(1_700_000_000_000, [0xff; 10]);
        let b = EventId::from_parts(1_700_000_000_001, [0x00; 10]);
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert!(a < b);
        let parsed: EventId = a.to_string().parse().unwrap();
        assert_eq!(parsed, a);
        // A v4 UUID is refused.
        assert!(matches!(
            "9f1c6b3e-8d2a-4f6b-9c1d-2e3f4a5b6c7d".parse::<EventId>(),
            Err(IdError::WrongUuidVersion { version: 4, .. })
        ));
    }

    #[test]
    fn deserialisation_validates() {
        let bad: Result<SiteId, _> = serde_json::from_str("\"bad site\"");
        assert!(bad.is_err());
        let good: SiteId = serde_json::from_str("\"SITE_002\"").unwrap();
        assert_eq!(good.as_str(), "SITE_002");
    }
}
