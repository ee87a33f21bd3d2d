//! The pgwire session-start classifier: pure functions over byte arrays, `no_std`, no
//! allocation, no loops over unbounded input, so the same code runs in the kernel (where the
//! verifier must accept it) and in userspace.
//!
//! Protocol facts: PostgreSQL "Frontend/Backend Protocol", "Message Formats". All integers are
//! big-endian; the client's first message has no type byte (Int32 length, Int32 code).

use crate::limits::{CAPTURE_LEN, PREFIX_LEN};

pub const SSL_REQUEST_CODE: u32 = 80877103;
pub const GSSENC_REQUEST_CODE: u32 = 80877104;
pub const CANCEL_REQUEST_CODE: u32 = 80877102;
/// PostgreSQL's MAX_STARTUP_PACKET_LENGTH: the server rejects longer startup packets.
pub const MAX_STARTUP_LEN: u32 = 10000;
/// CancelRequest is 16 bytes in protocol 3.0; 3.2 allows keys up to 256 bytes.
pub const MAX_CANCEL_LEN: u32 = 16 + 256;
/// SSLRequest and GSSENCRequest are 8 bytes: Int32 length, Int32 code.
pub const REQUEST_LEN: u32 = 8;
/// Bytes of the server's first message after a plaintext StartupMessage that are read:
/// Byte1 type, Int32 length, and for `R` (Authentication) the Int32 request code.
pub const AUTH_PEEK_LEN: usize = 9;
pub const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the client's first message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstMessage {
    /// Fewer bytes than needed to decide; more may follow.
    NeedMore,
    SslRequest,
    GssEncRequest,
    /// `len` is the message length from its header.
    CancelRequest {
        len: u32,
    },
    /// StartupMessage; `len` from its header, protocol `3.minor`.
    Startup {
        len: u32,
        minor: u16,
    },
    /// TLS record header of a handshake carrying a ClientHello; `len` is the whole record
    /// (header included), so the client's next TLS record starts right after it.
    TlsClientHello {
        len: u32,
    },
    Http2Preface,
    Unknown,
}

impl FirstMessage {
    /// SSLRequest or GSSENCRequest: the server answers with one byte, then the client's
    /// next message starts right after the request's 8 bytes.
    pub const fn is_encryption_request(self) -> bool {
        matches!(self, FirstMessage::SslRequest | FirstMessage::GssEncRequest)
    }

    /// How many bytes of the stream belong to this first message, when the header says so.
    /// Capturing stops there so nothing the client sends later (a password) is copied.
    pub const fn message_len(self) -> Option<u32> {
        match self {
            FirstMessage::SslRequest | FirstMessage::GssEncRequest => Some(REQUEST_LEN),
            FirstMessage::CancelRequest { len } | FirstMessage::Startup { len, .. } => Some(len),
            FirstMessage::Http2Preface => Some(HTTP2_PREFACE.len() as u32),
            FirstMessage::TlsClientHello { len } => Some(len),
            _ => None,
        }
    }
}

#[inline(always)]
const fn be32(b: &[u8; PREFIX_LEN], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A TLS record header: type, version (2 bytes), length (2 bytes).
pub const TLS_RECORD_HEADER_LEN: u32 = 5;
/// Bytes of a client TLS record the sensor reads: the header and, for a clear alert, its
/// level and description. Nothing else of the encrypted stream is ever looked at.
pub const TLS_PEEK_LEN: usize = 7;

/// The client's TLS record after its ClientHello, as far as verification is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsRecord {
    /// A fatal alert in clear (`15 03 0x 00 02 02 <desc>`): the handshake is aborted, and
    /// `description` says why (48 unknown_ca, 42 bad_certificate, 45 certificate_expired...).
    FatalAlert { description: u8 },
    /// Anything else: the client goes on with the handshake.
    Other,
}

/// The name of a TLS alert description (RFC 8446 section 6, RFC 5246 section 7.2), as the
/// RFCs spell them; `None` for a code they do not define.
pub const fn tls_alert_name(description: u8) -> Option<&'static str> {
    Some(match description {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        22 => "record_overflow",
        40 => "handshake_failure",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        109 => "missing_extension",
        110 => "unsupported_extension",
        112 => "unrecognized_name",
        113 => "bad_certificate_status_response",
        115 => "unknown_psk_identity",
        116 => "certificate_required",
        120 => "no_application_protocol",
        _ => return None,
    })
}

/// Classify the first [`TLS_PEEK_LEN`] bytes of the client's record after its ClientHello
/// (`avail` of them present).
#[inline(always)]
pub const fn classify_tls_record(peek: &[u8; TLS_PEEK_LEN], avail: usize) -> TlsRecord {
    // Alert (21), version 3.x, length exactly 2 (a clear alert; an encrypted one is longer),
    // level fatal (2).
    if avail >= TLS_PEEK_LEN
        && peek[0] == 0x15
        && peek[1] == 0x03
        && peek[3] == 0
        && peek[4] == 2
        && peek[5] == 2
    {
        TlsRecord::FatalAlert { description: peek[6] }
    } else {
        TlsRecord::Other
    }
}

/// Classify the first bytes of a client-to-server stream.
///
/// `prefix` holds the first `min(avail, PREFIX_LEN)` bytes of the stream (the rest of the
/// array is ignored); `avail` is how many bytes of the stream are known in total.
/// The decision never depends on bytes past `avail`, so callers may pass a zero-padded array.
#[inline(always)]
pub fn classify_first(prefix: &[u8; PREFIX_LEN], avail: usize) -> FirstMessage {
    if avail == 0 {
        return FirstMessage::NeedMore;
    }
    let b0 = prefix[0];

    // TLS record: ContentType 22 (handshake), version 3.x, Int16 length, HandshakeType 1.
    if b0 == 0x16 {
        if avail < 6 {
            return if avail < 2 || prefix[1] == 0x03 {
                FirstMessage::NeedMore
            } else {
                FirstMessage::Unknown
            };
        }
        let record_len = u16::from_be_bytes([prefix[3], prefix[4]]);
        return if prefix[1] == 0x03 && prefix[2] <= 0x04 && record_len >= 4 && prefix[5] == 0x01 {
            FirstMessage::TlsClientHello { len: TLS_RECORD_HEADER_LEN + record_len as u32 }
        } else {
            FirstMessage::Unknown
        };
    }

    // HTTP/2 connection preface (CockroachDB inter-node gRPC on the SQL port).
    if b0 == b'P' {
        let n = if avail < PREFIX_LEN { avail } else { PREFIX_LEN };
        let mut i = 0;
        while i < n {
            if prefix[i] != HTTP2_PREFACE[i] {
                return FirstMessage::Unknown;
            }
            i += 1;
        }
        return if n == PREFIX_LEN { FirstMessage::Http2Preface } else { FirstMessage::NeedMore };
    }

    // pgwire untyped message: Int32 length (a startup packet is short, so byte 0 is 0).
    if b0 != 0 {
        return FirstMessage::Unknown;
    }
    if avail < 8 {
        return FirstMessage::NeedMore;
    }
    let len = be32(prefix, 0);
    let code = be32(prefix, 4);
    match code {
        SSL_REQUEST_CODE if len == 8 => FirstMessage::SslRequest,
        GSSENC_REQUEST_CODE if len == 8 => FirstMessage::GssEncRequest,
        CANCEL_REQUEST_CODE if (16..=MAX_CANCEL_LEN).contains(&len) => {
            FirstMessage::CancelRequest { len }
        }
        // Protocol 3.x: major in the high 16 bits. The smallest valid startup packet carries
        // at least `user\0x\0\0` after the 8-byte header.
        _ if code >> 16 == 3 && len > 8 && len <= MAX_STARTUP_LEN => {
            FirstMessage::Startup { len, minor: (code & 0xffff) as u16 }
        }
        _ => FirstMessage::Unknown,
    }
}

/// How many bytes of a client message are kept as evidence: the whole message up to
/// `CAPTURE_LEN` once its length is known (`msg_len`, 0 while unknown), else only the
/// classifier's prefix. Never more than the message itself, so nothing the client sends
/// after it (a password) is ever copied.
#[inline(always)]
pub const fn capture_limit(msg_len: u32) -> u32 {
    if msg_len == 0 {
        PREFIX_LEN as u32
    } else if msg_len > CAPTURE_LEN as u32 {
        CAPTURE_LEN as u32
    } else {
        msg_len
    }
}

/// A CancelRequest's bytes after its 8-byte header are the backend's secret cancel key:
/// evidence stops here.
pub const CANCEL_EVIDENCE_LEN: u32 = 8;

/// The request code of an Authentication (`R`) message from its first
/// [`AUTH_PEEK_LEN`] bytes (meaningless for other message types).
#[inline(always)]
pub const fn auth_code(peek: &[u8; AUTH_PEEK_LEN]) -> u32 {
    u32::from_be_bytes([peek[5], peek[6], peek[7], peek[8]])
}

/// Copy the first bytes of `bytes` into a zero-padded prefix array for [`classify_first`].
pub fn prefix_of(bytes: &[u8]) -> [u8; PREFIX_LEN] {
    let mut prefix = [0u8; PREFIX_LEN];
    let n = bytes.len().min(PREFIX_LEN);
    prefix[..n].copy_from_slice(&bytes[..n]);
    prefix
}

/// Classify a byte slice that starts at byte 0 of the client's stream.
pub fn classify_bytes(bytes: &[u8]) -> FirstMessage {
    classify_first(&prefix_of(bytes), bytes.len())
}

/// Iterator over the `key\0value\0` pairs of a StartupMessage body.
///
/// Takes the whole message (header included) as captured; stops at the terminating `\0`, at
/// the end of the captured bytes, or at the first malformed pair. Never panics.
pub struct StartupParams<'a> {
    rest: &'a [u8],
}

impl<'a> StartupParams<'a> {
    pub fn new(message: &'a [u8]) -> Self {
        // Bound the walk by the length the header claims, when it is smaller than the capture.
        let claimed = if message.len() >= 4 {
            u32::from_be_bytes([message[0], message[1], message[2], message[3]]) as usize
        } else {
            0
        };
        let end = message.len().min(claimed);
        let rest = if end > 8 { &message[8..end] } else { &[] };
        StartupParams { rest }
    }

    fn take_cstr(&mut self) -> Option<&'a [u8]> {
        let nul = self.rest.iter().position(|&b| b == 0)?;
        let (s, tail) = self.rest.split_at(nul);
        self.rest = &tail[1..];
        Some(s)
    }
}

impl<'a> Iterator for StartupParams<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let key = self.take_cstr()?;
        if key.is_empty() {
            // The list terminator.
            self.rest = &[];
            return None;
        }
        match self.take_cstr() {
            Some(value) => Some((key, value)),
            None => {
                self.rest = &[];
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
