//! People at the terminal: who a badge belongs to (personnel master data of this site) and
//! supervisors' PINs. A PIN is set on the edge itself (`edge-agent supervisor-pin set`), never
//! travels to the hub, and is stored only as a salted PBKDF2 hash.

use std::num::NonZeroU32;

use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};
use rusqlite::{Connection, OptionalExtension, params};
use shared_model::master::{MasterRecord, Personnel, Role, personnel_key};
use shared_model::{BadgeId, SiteId};

use super::StoreError;

/// PBKDF2 rounds: about 50 ms on a low-end industrial PC, which a person at a terminal does
/// not notice and which makes guessing a stolen database's short PINs slow.
pub const PIN_ITERATIONS: u32 = 100_000;
/// Shortest and longest PIN: digits only, typed on the terminal's numeric pad.
pub const PIN_DIGITS_MIN: usize = 4;
pub const PIN_DIGITS_MAX: usize = 12;

/// The person behind a badge at this site, if the master data knows them.
pub fn person(
    conn: &Connection,
    site: &SiteId,
    badge: &BadgeId,
) -> Result<Option<Personnel>, StoreError> {
    let json: Option<String> = conn
        .prepare_cached(
            "SELECT json FROM master WHERE kind = 'personnel' AND key = ?1 AND json IS NOT NULL",
        )?
        .query_row([personnel_key(site, badge)], |r| r.get(0))
        .optional()?;
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
        None => false,
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
