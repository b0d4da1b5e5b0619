//! Enrollment, the one step before sync: the token a field engineer types, and the JSON of the
//! hub's HTTPS enrollment endpoint. No I/O here; the hub serves it, `edge-agent install` calls it.
//!
//! A token is `mesenroll1.<secret>.<ca-fingerprint>`: 32 hex digits of secret (the hub keeps
//! only their SHA-256) and the SHA-256 of the hub CA's certificate (64 hex digits), which the
//! installer pins: it trusts the hub's HTTPS certificate only if it chains to a CA with that
//! fingerprint, so a wrong address or a man in the middle is caught before the token is sent.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The token's prefix, with the format's version.
pub const TOKEN_PREFIX: &str = "mesenroll1";
/// Hex digits of the secret.
pub const SECRET_HEX: usize = 32;
/// Longest certificate signing request accepted.
pub const CSR_BYTES_MAX: usize = 16 * 1024;
/// The path of the enrollment endpoint (GET: preflight, POST: enroll).
pub const PATH: &str = "/api/v1/enroll";

#[derive(Clone, PartialEq, Eq)]
pub struct EnrollToken {
    pub secret: String,
    pub ca_fingerprint: [u8; 32],
}

impl fmt::Debug for EnrollToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret stays out of logs.
        f.debug_struct("EnrollToken")
            .field("ca_fingerprint", &hex(&self.ca_fingerprint))
            .finish_non_exhaustive()
    }
}

impl fmt::Display for EnrollToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}.{}.{}",
            self.secret,
            hex(&self.ca_fingerprint)
        )
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "this is not an enrollment token: expected {TOKEN_PREFIX}.<32 hex digits>.<64 hex digits> as printed by `central-hub enroll-token SITE`"
)]
pub struct TokenFormatError;

impl EnrollToken {
    pub fn parse(s: &str) -> Result<Self, TokenFormatError> {
        let mut parts = s.trim().split('.');
        let (Some(prefix), Some(secret), Some(fp), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenFormatError);
        };
        if prefix != TOKEN_PREFIX
            || secret.len() != SECRET_HEX
            || !secret.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(TokenFormatError);
        }
        let ca_fingerprint = unhex32(&fp.to_ascii_lowercase()).ok_or(TokenFormatError)?;
        Ok(Self {
            secret: secret.to_ascii_lowercase(),
            ca_fingerprint,
        })
    }
}

/// `GET /api/v1/enroll`: what an installer checks before it spends the token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollInfo {
    /// The hub's wall clock, microseconds since the epoch: for the clock-skew check.
    pub hub_time_micros: i64,
    /// The UDP port of the hub's QUIC sync endpoint.
    pub quic_port: u16,
}

/// `POST /api/v1/enroll`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The token's secret part.
    pub secret: String,
    /// PKCS#10, PEM. The hub sets the subject (the site) and the usages itself.
    pub csr_pem: String,
    /// `edge-agent x.y.z` and the host name, for the hub's records.
    pub agent: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub site_id: String,
    pub certificate_pem: String,
    pub ca_pem: String,
    pub quic_port: u16,
    pub hub_time_micros: i64,
}

/// Error codes of the endpoint (in `{"error": {"code", "message"}}`).
pub mod codes {
    pub const INVALID_TOKEN: &str = "invalid_token";
    pub const TOKEN_USED: &str = "token_used";
    pub const TOKEN_EXPIRED: &str = "token_expired";
    pub const SITE_REVOKED: &str = "site_revoked";
    pub const BAD_CSR: &str = "bad_csr";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_malformed_ones_are_refused() {
        let t = EnrollToken {
            secret: "0123456789abcdef0123456789abcdef".into(),
            ca_fingerprint: [0xab; 32],
        };
        let s = t.to_string();
        assert_eq!(EnrollToken::parse(&s), Ok(t.clone()));
        assert_eq!(EnrollToken::parse(&format!("  {s}\n")), Ok(t));
        for bad in [
            "",
            "mesenroll1",
            "mesenroll2.0123456789abcdef0123456789abcdef.abab",
            &s[..s.len() - 1],
            &format!("{s}.x"),
            &s.replace("0123", "g123"),
        ] {
            assert_eq!(EnrollToken::parse(bad), Err(TokenFormatError), "{bad:?}");
        }
        assert!(!format!("{:?}", EnrollToken::parse(&s).unwrap()).contains("0123456789"));
    }
}
