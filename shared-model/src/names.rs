//! The one mapping between a wire or domain enum and its stable text name (JSON, SQL columns,
//! metrics labels, URL segments).
//!
//! Every enum whose name is stored or sent as text gets `ALL`, `as_str`, `parse` and
//! [`FromStr`](std::str::FromStr) from [`named_enum!`], so the edge and the hub never list the
//! names again by hand. `as_str` is an exhaustive `match`: a new variant that is not given a
//! name is a compile error, and because `ALL` is built from the same list it cannot forget a
//! variant either.

/// A text that names none of an enum's variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?}, expected one of {expected}")]
pub struct UnknownName {
    /// What was being named (`"event type"`, `"machine state"`).
    pub what: &'static str,
    pub name: String,
    /// The accepted names, comma separated, in declaration order.
    pub expected: String,
}

/// Gives an enum `ALL`, `as_str`, `parse` and `FromStr` from one list of `Variant => "name"`
/// pairs. With `display`, `Display` writes `as_str` too (leave it out where `Display` says
/// something friendlier, as [`WorkOrderState`](crate::work_order::WorkOrderState) does).
///
/// ```
/// #[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// enum Light { Red, Green }
/// shared_model::named_enum!(Light, "light", display { Red => "red", Green => "green" });
/// assert_eq!("green".parse::<Light>().unwrap(), Light::Green);
/// assert_eq!(Light::ALL.map(Light::as_str), ["red", "green"]);
/// assert_eq!(Light::Red.to_string(), "red");
/// assert!("blue".parse::<Light>().is_err());
/// ```
#[macro_export]
macro_rules! named_enum {
    ($ty:ident, $what:literal, display { $($variant:ident => $name:literal),+ $(,)? }) => {
        $crate::named_enum!($ty, $what, { $($variant => $name),+ });

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
    ($ty:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every variant, in declaration order.
            pub const ALL: [$ty; [$($name),+].len()] = [$($ty::$variant),+];

            /// The stable text name (JSON, SQL, metrics labels).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }

            /// The variant named `s`, if any (exact, case-sensitive).
            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.into_iter().find(|v| v.as_str() == s)
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = $crate::names::UnknownName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s).ok_or_else(|| $crate::names::UnknownName {
                    what: $what,
                    name: s.to_owned(),
                    expected: Self::ALL.map(Self::as_str).join(", "),
                })
            }
        }
    };
}

#[cfg(test)]
pub(crate) mod tests {
    //! Every named enum of the model round-trips through its name, its names are unique, and
    //! where the serde name is meant to be the same text (everything but the URL names of
    //! master-data kinds) the two agree, so JSON and SQL never disagree about a name.

    use crate::event::{ClockAction, EventKind, MachineState};
    use crate::master::{EquipmentLevel, LossCategory, MasterKind, Role, Tracking};
    use crate::work_order::{WorkOrderAction, WorkOrderState};
    use std::collections::HashSet;
    use std::fmt::Debug;
    use std::str::FromStr;

    /// `all`'s names are unique and parse back; with `serde_same`, serde writes the same text.
    pub(crate) fn round_trips<T>(all: &[T], as_str: fn(T) -> &'static str, serde_same: bool)
    where
        T: Copy + PartialEq + Debug + FromStr + serde::Serialize,
        T::Err: Debug,
    {
        let mut seen = HashSet::new();
        for &v in all {
            let name = as_str(v);
            assert!(seen.insert(name), "{name} named twice");
            assert_eq!(name.parse::<T>().unwrap(), v);
            if serde_same {
                assert_eq!(serde_json::to_string(&v).unwrap(), format!("\"{name}\""));
            }
        }
        assert!("no such name".parse::<T>().is_err());
        assert!("".parse::<T>().is_err());
    }

    #[test]
    fn every_named_enum_round_trips() {
        round_trips(&EventKind::ALL, EventKind::as_str, true);
        round_trips(&MachineState::ALL, MachineState::as_str, true);
        round_trips(&ClockAction::ALL, ClockAction::as_str, true);
        round_trips(&WorkOrderState::ALL, WorkOrderState::as_str, true);
        round_trips(&WorkOrderAction::ALL, WorkOrderAction::as_str, true);
        round_trips(&MasterKind::ALL, MasterKind::as_str, false);
        round_trips(&Tracking::ALL, Tracking::as_str, true);
        round_trips(&LossCategory::ALL, LossCategory::as_str, true);
        round_trips(&EquipmentLevel::ALL, EquipmentLevel::as_str, true);
        round_trips(&Role::ALL, Role::as_str, true);
    }

    #[test]
    fn unknown_names_say_what_is_accepted() {
        let e = "stopped".parse::<MachineState>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown machine state \"stopped\", expected one of running, idle, down, setup, planned_stop, unknown"
        );
        // Case matters: names are exact, as in SQL and JSON.
        assert!("Running".parse::<MachineState>().is_err());
    }
}
