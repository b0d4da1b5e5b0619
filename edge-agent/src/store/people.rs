//! People at the terminal: who a badge belongs to (personnel master data of this site),
//! supervisors' PINs, and wrong PINs per badge. A PIN is set on the edge itself (`edge-agent
//! supervisor-pin set`), never travels to the hub, and is stored only as a salted PBKDF2 hash.
//!
//! Wrong PINs are kept in `pin_failures`, so a restart does not forget them, and only for
//! badges of this site's personnel, so the table is bounded by the master data and a flood of
//! made-up badges adds nothing to it. [`PIN_FAILURES_MAX`] wrong PINs in a row lock a badge;
//! each further lock is longer ([`PIN_LOCKS_MICROS`]: 5 min, 15 min, 1 h, then 4 h each), until
//! a right PIN, or a day without a wrong one, starts over. Every badge of the personnel is
//! treated alike, supervisor or not, with or without a PIN: same answers, same locks, and a
//! PBKDF2 run against a dummy hash when there is no PIN, so neither the answer nor its time
//! tells a supervisor's badge from an operator's.

use std::num::NonZeroU32;

use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};
use rusqlite::{Connection, OptionalExtension, params};
use shared_model::master::{MasterKind, MasterRecord, Personnel, Role, personnel_key};
use shared_model::{BadgeId, SiteId};

use super::StoreError;

/// PBKDF2 rounds: about 50 ms on a low-end industrial PC, which a person at a terminal does
/// not notice and which makes guessing a stolen database's short PINs slow.
pub const PIN_ITERATIONS: u32 = 100_000;
/// Wrong PINs in a row that lock a badge.
pub const PIN_FAILURES_MAX: u32 = 5;
/// How long the first, second, third and every further lock of a badge lasts.
pub const PIN_LOCKS_MICROS: [i64; 4] = [
    5 * 60 * 1_000_000,
    15 * 60 * 1_000_000,
    60 * 60 * 1_000_000,
    4 * 60 * 60 * 1_000_000,
];
/// A badge's wrong PINs and locks are forgotten after this long without a wrong PIN.
pub const PIN_FAILURES_FORGET_MICROS: i64 = 24 * 60 * 60 * 1_000_000;

/// Shortest and longest PIN: digits only, typed on the terminal's numeric pad.
pub const PIN_DIGITS_MIN: usize = 4;
pub const PIN_DIGITS_MAX: usize = 12;

/// The person behind a badge at this site, if the master data knows them.
pub fn person(
    conn: &Connection,
    site: &SiteId,
    badge: &BadgeId,
) -> Result<Option<Personnel>, StoreError> {
    let json = super::master::json(conn, MasterKind::Personnel, &personnel_key(site, badge))?;
    match json {
        None => Ok(None),
        Some(j) => match serde_json::from_str::<MasterRecord>(&j) {
            Ok(MasterRecord::Personnel(p)) => Ok(Some(p)),
            Ok(_) | Err(_) => Err(StoreError::Corrupt(format!("personnel record {badge}"))),
        },
    }
}

/// Checks a PIN's shape; the message is shown to the person setting it.
pub fn check_pin(pin: &str) -> Result<(), String> {
    if !(PIN_DIGITS_MIN..=PIN_DIGITS_MAX).contains(&pin.len())
        || !pin.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!(
            "a PIN is {PIN_DIGITS_MIN} to {PIN_DIGITS_MAX} digits"
        ));
    }
    Ok(())
}

fn iterations(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// Sets (or replaces) a supervisor's PIN. The badge must belong to a supervisor of this site.
pub fn set_pin(
    conn: &Connection,
    site: &SiteId,
    badge: &BadgeId,
    pin: &str,
    now_micros: i64,
) -> Result<(), StoreError> {
    check_pin(pin).map_err(|message| StoreError::Invalid {
        field: "pin".into(),
        message,
    })?;
    match person(conn, site, badge)? {
        Some(p) if p.role == Role::Supervisor => {}
        Some(_) => {
            return Err(StoreError::Invalid {
                field: "badge".into(),
                message: format!("{badge} is not a supervisor in the personnel master data"),
            });
        }
        None => {
            return Err(StoreError::UnknownReference {
                index: 0,
                field: "badge",
                value: badge.to_string(),
            });
        }
    }
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| StoreError::Corrupt("no randomness available".into()))?;
    let mut hash = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations(PIN_ITERATIONS),
        &salt,
        pin.as_bytes(),
        &mut hash,
    );
    conn.execute(
        "INSERT INTO pins (badge, salt, hash, iterations, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (badge) DO UPDATE SET salt = excluded.salt, hash = excluded.hash,
           iterations = excluded.iterations, updated_at = excluded.updated_at",
        params![
            badge.as_str(),
            &salt[..],
            &hash[..],
            PIN_ITERATIONS,
            now_micros
        ],
    )?;
    Ok(())
}

/// Whether `pin` is the badge's PIN (constant-time comparison). No PIN set: false.
pub fn verify_pin(conn: &Connection, badge: &BadgeId, pin: &str) -> Result<bool, StoreError> {
    let row: Option<(Vec<u8>, Vec<u8>, u32)> = conn
        .prepare_cached("SELECT salt, hash, iterations FROM pins WHERE badge = ?1")?
        .query_row([badge.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    Ok(match row {
        None => {
            // The same work as a real check, so that the time of the answer does not tell
            // whether the badge has a PIN (is a supervisor's).
            let _ = std::hint::black_box(pbkdf2::verify(
                pbkdf2::PBKDF2_HMAC_SHA256,
                iterations(PIN_ITERATIONS),
                DUMMY_SALT,
                std::hint::black_box(pin.as_bytes()),
                DUMMY_HASH,
            ));
            false
        }
        Some((salt, hash, n)) => pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations(n),
            &salt,
            pin.as_bytes(),
            &hash,
        )
        .is_ok(),
    })
}

/// What [`verify_pin`] checks a PIN against when the badge has none. No PIN derives to it
/// (it is not a PBKDF2 output of this salt), and it need not be secret.
const DUMMY_SALT: &[u8] = b"mes-edge-no-pin!";
const DUMMY_HASH: &[u8] = &[0x5a; 32];

/// How long (microseconds) the badge stays locked at `now`, if it is.
pub fn pin_locked_for(
    conn: &Connection,
    badge: &BadgeId,
    now_micros: i64,
) -> Result<Option<i64>, StoreError> {
    let until: Option<Option<i64>> = conn
        .prepare_cached("SELECT locked_until FROM pin_failures WHERE badge = ?1")?
        .query_row([badge.as_str()], |r| r.get(0))
        .optional()?;
    Ok(until
        .flatten()
        .map(|u| u - now_micros)
        .filter(|left| *left > 0))
}

/// What a wrong PIN did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinFailure {
    /// Not locked yet: this many wrong PINs are left before the lock.
    TriesLeft(u32),
    /// The badge is now locked for this many microseconds.
    Locked(i64),
}

/// Counts a wrong PIN for `badge` (which must not be locked now: see [`pin_locked_for`]).
pub fn record_pin_failure(
    conn: &Connection,
    badge: &BadgeId,
    now_micros: i64,
) -> Result<PinFailure, StoreError> {
    let row: Option<(u32, u32, i64, Option<i64>)> = conn
        .prepare_cached(
            "SELECT failures, locks, last_failure_at, locked_until FROM pin_failures WHERE badge = ?1",
        )?
        .query_row([badge.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let (failures, locks) = match row {
        None => (0, 0),
        Some((_, _, last, _)) if now_micros - last >= PIN_FAILURES_FORGET_MICROS => (0, 0),
        // A lock that ran out starts the count again; its length is remembered.
        Some((_, locks, _, Some(_))) => (0, locks),
        Some((failures, locks, _, None)) => (failures, locks),
    };
    let failures = failures.saturating_add(1);
    let (stored, locks, until, outcome) = if failures >= PIN_FAILURES_MAX {
        let step = (locks as usize).min(PIN_LOCKS_MICROS.len() - 1);
        let length = PIN_LOCKS_MICROS[step];
        (
            0,
            locks.saturating_add(1),
            Some(now_micros.saturating_add(length)),
            PinFailure::Locked(length),
        )
    } else {
        (
            failures,
            locks,
            None,
            PinFailure::TriesLeft(PIN_FAILURES_MAX - failures),
        )
    };
    conn.prepare_cached(
        "INSERT INTO pin_failures (badge, failures, locks, last_failure_at, locked_until)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (badge) DO UPDATE SET failures = excluded.failures, locks = excluded.locks,
           last_failure_at = excluded.last_failure_at, locked_until = excluded.locked_until",
    )?
    .execute(params![badge.as_str(), stored, locks, now_micros, until])?;
    Ok(outcome)
}

/// Whether the badge has wrong PINs on record.
pub fn has_pin_failures(conn: &Connection, badge: &BadgeId) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM pin_failures WHERE badge = ?1")?
        .query_row([badge.as_str()], |_| Ok(()))
        .optional()?
        .is_some())
}

/// A right PIN: the badge starts over.
pub fn clear_pin_failures(conn: &Connection, badge: &BadgeId) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM pin_failures WHERE badge = ?1")?
        .execute([badge.as_str()])?;
    Ok(())
}
