//! Framing: `u32 body length (big-endian) · u16 message type (big-endian) · postcard body`.
//!
//! Decoding is two-phase, as in mini-redis: [`check`] looks only at the header and answers
//! "incomplete, need N more bytes" or "invalid" or "a whole frame of N bytes is here"; only
//! then does [`parse`] decode the body. A peer that announces an oversized frame is refused
//! from the header alone, before we buffer any of it. Nothing here panics on any input.

use crate::message::{Message, MessageType};

/// Size of the frame header: a `u32` length and a `u16` type.
pub const HEADER_BYTES: usize = 6;
/// Default maximum body size, 4 MiB: a batch of a few thousand events, with room to spare.
pub const FRAME_BODY_BYTES_MAX_DEFAULT: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub body_len: usize,
    pub message_type: MessageType,
}

/// Why bytes could not be decoded. `Incomplete` is not an error of the peer: more bytes are
/// needed. Every other variant is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("incomplete frame, {needed} more bytes needed")]
    Incomplete { needed: usize },
    #[error("frame body of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("unknown message type 0x{0:04x}")]
    UnknownType(u16),
    #[error("malformed {message_type} body: {reason}")]
    Malformed {
        message_type: &'static str,
        reason: String,
    },
}

impl DecodeError {
    pub fn is_incomplete(&self) -> bool {
        matches!(self, DecodeError::Incomplete { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{message_type} body of {len} bytes exceeds the frame maximum of {max}")]
    TooLarge {
        message_type: &'static str,
        len: usize,
        max: usize,
    },
    #[error("cannot encode {message_type}: {reason}")]
    Serialize {
        message_type: &'static str,
        reason: String,
    },
}

/// Phase one: is a whole, acceptable frame at the start of `buf`?
pub fn check(buf: &[u8], body_bytes_max: usize) -> Result<FrameHeader, DecodeError> {
    let Some(header) = buf.get(..HEADER_BYTES) else {
        return Err(DecodeError::Incomplete {
            needed: HEADER_BYTES - buf.len(),
        });
    };
    let body_len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let raw_type = u16::from_be_bytes([header[4], header[5]]);
    if body_len > body_bytes_max {
        return Err(DecodeError::FrameTooLarge {
            len: body_len,
            max: body_bytes_max,
        });
    }
    let message_type = MessageType::from_u16(raw_type).ok_or(DecodeError::UnknownType(raw_type))?;
    let total = HEADER_BYTES + body_len;
    if buf.len() < total {
        return Err(DecodeError::Incomplete {
            needed: total - buf.len(),
        });
    }
    Ok(FrameHeader {
        body_len,
        message_type,
    })
}

/// Phase two: decode a frame that [`check`] accepted. `frame` must start with its header.
pub fn parse(frame: &[u8], header: FrameHeader) -> Result<Message, DecodeError> {
    let body = frame
        .get(HEADER_BYTES..HEADER_BYTES + header.body_len)
        .ok_or(DecodeError::Incomplete {
            needed: (HEADER_BYTES + header.body_len).saturating_sub(frame.len()),
        })?;
    Message::decode_body(header.message_type, body).map_err(|e| DecodeError::Malformed {
        message_type: header.message_type.name(),
        reason: e.to_string(),
    })
}

/// Decodes exactly one frame occupying all of `frame`.
pub fn decode(frame: &[u8], body_bytes_max: usize) -> Result<Message, DecodeError> {
    let header = check(frame, body_bytes_max)?;
    if frame.len() != HEADER_BYTES + header.body_len {
        return Err(DecodeError::Malformed {
            message_type: header.message_type.name(),
            reason: format!(
                "{} bytes after the frame",
                frame.len() - HEADER_BYTES - header.body_len
            ),
        });
    }
    parse(frame, header)
}

/// Encodes a message as one frame.
pub fn encode(message: &Message, body_bytes_max: usize) -> Result<Vec<u8>, EncodeError> {
    let ty = message.message_type();
    let out = vec![0u8; HEADER_BYTES];
    let out = message
        .encode_body(out)
        .map_err(|e| EncodeError::Serialize {
            message_type: ty.name(),
            reason: e.to_string(),
        })?;
    finish_frame(out, ty, body_bytes_max)
}

/// Fills in the header of a buffer that holds `HEADER_BYTES` of space followed by a body.
pub(crate) fn finish_frame(
    mut out: Vec<u8>,
    ty: MessageType,
    body_bytes_max: usize,
) -> Result<Vec<u8>, EncodeError> {
    let body_len = out.len() - HEADER_BYTES;
    if body_len > body_bytes_max || u32::try_from(body_len).is_err() {
        return Err(EncodeError::TooLarge {
            message_type: ty.name(),
            len: body_len,
            max: body_bytes_max,
        });
    }
    out[..4].copy_from_slice(&(body_len as u32).to_be_bytes());
    out[4..6].copy_from_slice(&(ty as u16).to_be_bytes());
    Ok(out)
}

/// Accumulates stream bytes and yields whole messages. It buffers at most one frame plus the
/// chunk being pushed, since an oversized header is refused before its body arrives.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf`; compacted lazily to avoid a memmove per frame.
    start: usize,
    body_bytes_max: usize,
    failed: bool,
}

impl FrameDecoder {
    pub fn new(body_bytes_max: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            body_bytes_max,
            failed: false,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next whole message, `Ok(None)` when more bytes are needed. After an error the
    /// stream is unusable (framing is lost) and every later call returns the same error kind.
    pub fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        if self.failed {
            return Err(DecodeError::Malformed {
                message_type: "stream",
                reason: "an earlier frame was invalid".into(),
            });
        }
        let pending = &self.buf[self.start..];
        let header = match check(pending, self.body_bytes_max) {
            Ok(h) => h,
            Err(DecodeError::Incomplete { .. }) => return Ok(None),
            Err(e) => {
                self.failed = true;
                return Err(e);
            }
        };
        let result = parse(pending, header);
        self.start += HEADER_BYTES + header.body_len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        match result {
            Ok(m) => Ok(Some(m)),
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Ping, Pong};

    #[test]
    fn check_distinguishes_incomplete_from_invalid() {
        let frame = encode(&Message::Ping(Ping { nonce: 300 }), 1024).unwrap();
        // Every strict prefix is incomplete, never invalid.
        for cut in 0..frame.len() {
            let e = check(&frame[..cut], 1024).unwrap_err();
            assert!(e.is_incomplete(), "prefix {cut}: {e}");
        }
        assert!(check(&frame, 1024).is_ok());
        // Oversized announcement: refused from the header.
        let mut big = vec![0, 0, 0x10, 0, 0, 0xF1];
        big.extend_from_slice(&[0; 4]);
        assert_eq!(
            check(&big, 1024),
            Err(DecodeError::FrameTooLarge {
                len: 0x1000,
                max: 1024
            })
        );
        // Unknown type.
        assert_eq!(
            check(&[0, 0, 0, 0, 0xAB, 0xCD], 1024),
            Err(DecodeError::UnknownType(0xABCD))
        );
    }

    #[test]
    fn trailing_bytes_in_a_body_are_malformed() {
        let mut frame = encode(&Message::Pong(Pong { nonce: 1 }), 1024).unwrap();
        frame.push(0);
        frame[3] += 1;
        assert!(matches!(
            decode(&frame, 1024),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn decoder_handles_byte_at_a_time_and_many_frames_per_chunk() {
        let frames: Vec<Vec<u8>> = (0..5)
            .map(|n| encode(&Message::Ping(Ping { nonce: n }), 1024).unwrap())
            .collect();
        let all: Vec<u8> = frames.concat();
        let mut d = FrameDecoder::new(1024);
        let mut got = Vec::new();
        for b in &all {
            d.push(std::slice::from_ref(b));
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
        }
        let mut d2 = FrameDecoder::new(1024);
        d2.push(&all);
        let mut got2 = Vec::new();
        while let Some(m) = d2.next_message().unwrap() {
            got2.push(m);
        }
        assert_eq!(got.len(), 5);
        assert_eq!(got, got2);
        assert_eq!(d.buffered(), 0);
    }
}
