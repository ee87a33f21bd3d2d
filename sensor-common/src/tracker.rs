//! The session-start state machine: what the client asked for, what the server answered,
//! what the client did next, and (on plaintext sessions) how authentication went.
//!
//! Pure transitions over small `#[repr(C)]` state, shared by the kernel (which feeds it from
//! packets and counts verdicts the moment they are decided) and by `sensor analyze` (which
//! feeds it from a capture). Byte plumbing (reassembly, offsets) is the caller's job; every
//! decision is made here.

use crate::pgwire::FirstMessage;
use crate::verdict::{UnknownReason, Verdict};

/// Where the session is.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for (the rest of) the client's first message.
    ClientFirst = 0,
    /// SSLRequest/GSSENCRequest sent: waiting for the server's one-byte answer.
    AwaitAnswer = 1,
    /// The server said `S`: waiting for the client's TLS ClientHello.
    AwaitHello = 2,
    /// The server said `N` (or `E`): waiting for the client's next message, or its close.
    AfterRefusal = 3,
    /// A plaintext StartupMessage went out: waiting for the server's first reply.
    AwaitAuth = 4,
    /// The server asked for a password (or SASL/GSS token): waiting for the client's reply.
    AwaitPassword = 5,
    /// Nothing left to learn.
    Done = 6,
}

/// `Tracker::requests` bits: what the client asked for, in any order.
pub const REQUESTED_SSL: u8 = 1;
pub const REQUESTED_GSS: u8 = 2;

/// The server's authentication request, as far as the sensor needs it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// Not seen (yet).
    Unknown = 0,
    /// AuthenticationOk straight away: `trust` (or peer-like) authentication.
    Trust = 1,
    /// AuthenticationCleartextPassword (3): the password itself crosses the wire.
    Cleartext = 2,
    /// AuthenticationMD5Password (5): a replayable, crackable hash crosses the wire.
    Md5 = 3,
    /// AuthenticationSASL (10): SCRAM; no reusable secret on the wire.
    Sasl = 4,
    /// GSS (7) or SSPI (9).
    Gss = 5,
    /// KerberosV5 (2) or a code this sensor does not know.
    Other = 6,
    /// ErrorResponse instead of an authentication request.
    Error = 7,
}

impl AuthMethod {
    pub const fn from_code(code: u32) -> AuthMethod {
        match code {
            0 => AuthMethod::Trust,
            3 => AuthMethod::Cleartext,
            5 => AuthMethod::Md5,
            10 => AuthMethod::Sasl,
            7 | 9 => AuthMethod::Gss,
            _ => AuthMethod::Other,
        }
    }

    pub const fn from_u8(v: u8) -> AuthMethod {
        match v {
            1 => AuthMethod::Trust,
            2 => AuthMethod::Cleartext,
            3 => AuthMethod::Md5,
            4 => AuthMethod::Sasl,
            5 => AuthMethod::Gss,
            6 => AuthMethod::Other,
            7 => AuthMethod::Error,
            _ => AuthMethod::Unknown,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            AuthMethod::Unknown => "unknown",
            AuthMethod::Trust => "trust",
            AuthMethod::Cleartext => "cleartext",
            AuthMethod::Md5 => "md5",
            AuthMethod::Sasl => "sasl",
            AuthMethod::Gss => "gss",
            AuthMethod::Other => "other",
            AuthMethod::Error => "error",
        }
    }

    /// The client answers this request with a `p` message carrying a secret or a token.
    const fn expects_client_reply(self) -> bool {
        matches!(self, AuthMethod::Cleartext | AuthMethod::Md5 | AuthMethod::Sasl | AuthMethod::Gss)
    }
}

/// What the caller must do after a transition (bits).
pub mod effect {
    /// The verdict was just decided: count it now and report the session.
    pub const VERDICT: u8 = 1;
    /// The authentication outcome is known: report it.
    pub const AUTH: u8 = 2;
    /// Stop tracking: nothing more will be learned.
    pub const DONE: u8 = 4;
    /// The current client message is complete: the next client bytes start a new message.
    pub const NEXT_MESSAGE: u8 = 8;
}

/// Per-connection decision state. 8 bytes, `Copy`, kernel-friendly.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracker {
    pub phase: u8,
    /// `REQUESTED_*` bits.
    pub requests: u8,
    /// The request the pending server answer belongs to (`REQUESTED_SSL` or `_GSS`).
    pub last_request: u8,
    /// `Verdict` once decided (`VERDICT_NONE` before).
    pub verdict: u8,
    pub reason: u8,
    /// `AuthMethod`.
    pub auth: u8,
    pub password_sent: u8,
    /// Server answers seen so far (each one byte: `S`, `N`, `G`, `E`...), at most two kept.
    pub answers: u8,
}

pub const VERDICT_NONE: u8 = 0xff;

impl Default for Tracker {
    fn default() -> Self {
        Tracker::NEW
    }
}

impl Tracker {
    pub const NEW: Tracker = Tracker {
        phase: Phase::ClientFirst as u8,
        requests: 0,
        last_request: 0,
        verdict: VERDICT_NONE,
        reason: UnknownReason::None as u8,
        auth: AuthMethod::Unknown as u8,
        password_sent: 0,
        answers: 0,
    };

    pub const fn phase(&self) -> Phase {
        match self.phase {
            0 => Phase::ClientFirst,
            1 => Phase::AwaitAnswer,
            2 => Phase::AwaitHello,
            3 => Phase::AfterRefusal,
            4 => Phase::AwaitAuth,
            5 => Phase::AwaitPassword,
            _ => Phase::Done,
        }
    }

    pub const fn verdict(&self) -> Option<Verdict> {
        Verdict::from_u8(self.verdict)
    }

    /// The client is sending a message (its first, or the next after a server answer):
    /// true while the caller should collect client bytes for [`Tracker::client_message`].
    pub const fn wants_client_message(&self) -> bool {
        matches!(self.phase(), Phase::ClientFirst | Phase::AwaitHello | Phase::AfterRefusal)
    }

    #[inline(always)]
    fn decide(&mut self, verdict: Verdict, reason: UnknownReason) -> u8 {
        self.verdict = verdict as u8;
        self.reason = reason as u8;
        effect::VERDICT
    }

    #[inline(always)]
    fn finish(&mut self, verdict: Verdict, reason: UnknownReason) -> u8 {
        self.phase = Phase::Done as u8;
        self.decide(verdict, reason) | effect::DONE | effect::NEXT_MESSAGE
    }

    /// The client message at the current position was classified as `first`.
    #[inline(always)]
    pub fn client_message(&mut self, first: FirstMessage) -> u8 {
        if matches!(first, FirstMessage::NeedMore) {
            return 0;
        }
        match self.phase() {
            Phase::ClientFirst | Phase::AfterRefusal => {
                let after_refusal = self.phase() == Phase::AfterRefusal;
                match first {
                    FirstMessage::SslRequest => self.request(REQUESTED_SSL),
                    FirstMessage::GssEncRequest => self.request(REQUESTED_GSS),
                    FirstMessage::Startup { .. } => {
                        self.phase = Phase::AwaitAuth as u8;
                        let verdict =
                            if after_refusal { Verdict::Downgraded } else { Verdict::Plaintext };
                        self.decide(verdict, UnknownReason::None) | effect::NEXT_MESSAGE
                    }
                    FirstMessage::CancelRequest { .. } if !after_refusal => {
                        self.finish(Verdict::Cancel, UnknownReason::None)
                    }
                    FirstMessage::TlsClientHello if !after_refusal => {
                        self.finish(Verdict::TlsDirect, UnknownReason::None)
                    }
                    FirstMessage::Http2Preface if !after_refusal => {
                        self.finish(Verdict::RpcPlaintext, UnknownReason::None)
                    }
                    _ => self.finish(Verdict::Unknown, UnknownReason::NotPgwire),
                }
            }
            Phase::AwaitHello => match first {
                FirstMessage::TlsClientHello => self.finish(Verdict::Tls, UnknownReason::None),
                _ => self.finish(Verdict::Unknown, UnknownReason::NoTlsAfterAccept),
            },
            _ => 0,
        }
    }

    #[inline(always)]
    fn request(&mut self, which: u8) -> u8 {
        self.requests |= which;
        self.last_request = which;
        self.phase = Phase::AwaitAnswer as u8;
        effect::NEXT_MESSAGE
    }

    /// The server's one-byte answer to the pending SSLRequest/GSSENCRequest.
    #[inline(always)]
    pub fn server_answer(&mut self, byte: u8) -> u8 {
        if self.phase() != Phase::AwaitAnswer {
            return 0;
        }
        self.answers = (self.answers << 4) | answer_code(byte);
        match byte {
            b'S' if self.last_request == REQUESTED_SSL => {
                self.phase = Phase::AwaitHello as u8;
                0
            }
            b'G' if self.last_request == REQUESTED_GSS => {
                self.finish(Verdict::Gssenc, UnknownReason::None)
            }
            b'N' | b'E' => {
                self.phase = Phase::AfterRefusal as u8;
                0
            }
            _ => self.finish(Verdict::Unknown, UnknownReason::BadServerAnswer),
        }
    }

    /// The server's first message after a plaintext StartupMessage: its type byte and, for
    /// `R` (Authentication), the request code (`None` when it was not captured).
    #[inline(always)]
    pub fn server_auth(&mut self, msg_type: u8, code: Option<u32>) -> u8 {
        if self.phase() != Phase::AwaitAuth {
            return 0;
        }
        let method = match (msg_type, code) {
            (b'R', Some(code)) => AuthMethod::from_code(code),
            (b'E', _) => AuthMethod::Error,
            _ => AuthMethod::Unknown,
        };
        self.auth = method as u8;
        if method.expects_client_reply() {
            self.phase = Phase::AwaitPassword as u8;
            0
        } else {
            self.phase = Phase::Done as u8;
            effect::AUTH | effect::DONE
        }
    }

    /// The first byte of the client's message after the server's authentication request.
    /// Only the type byte is ever looked at: never the password or hash itself.
    #[inline(always)]
    pub fn client_auth_reply(&mut self, msg_type: u8) -> u8 {
        if self.phase() != Phase::AwaitPassword {
            return 0;
        }
        self.password_sent = (msg_type == b'p') as u8;
        self.phase = Phase::Done as u8;
        effect::AUTH | effect::DONE
    }

    /// Either side closed (FIN or RST). `partial` says some bytes of a client message were
    /// seen that never added up to a decision.
    #[inline(always)]
    pub fn closed(&mut self, partial: bool) -> u8 {
        match self.phase() {
            Phase::ClientFirst if partial => {
                self.finish(Verdict::Unknown, UnknownReason::IncompleteMessage)
            }
            // Nothing was sent (a port check, a health probe): no session to judge.
            Phase::ClientFirst => {
                self.phase = Phase::Done as u8;
                effect::DONE
            }
            Phase::AwaitAnswer => self.finish(Verdict::Unknown, UnknownReason::ClosedBeforeAnswer),
            Phase::AwaitHello => self.finish(Verdict::Unknown, UnknownReason::NoTlsAfterAccept),
            // Asked for encryption, was told no, and gave up: the server (or a MitM) refused.
            Phase::AfterRefusal => self.finish(Verdict::Refused, UnknownReason::None),
            Phase::AwaitAuth | Phase::AwaitPassword => {
                self.phase = Phase::Done as u8;
                effect::AUTH | effect::DONE
            }
            Phase::Done => 0,
        }
    }
}

/// Server answers packed four bits each (newest lowest): 1 `S`, 2 `N`, 3 `G`, 4 `E`, 5 other.
const fn answer_code(byte: u8) -> u8 {
    match byte {
        b'S' => 1,
        b'N' => 2,
        b'G' => 3,
        b'E' => 4,
        _ => 5,
    }
}

/// Unpack `Tracker::answers` into answer bytes, oldest first (at most two).
pub fn answers_of(packed: u8) -> ([u8; 2], usize) {
    let decode = |c: u8| match c {
        1 => b'S',
        2 => b'N',
        3 => b'G',
        4 => b'E',
        _ => b'?',
    };
    let (old, new) = (packed >> 4, packed & 0x0f);
    match (old, new) {
        (0, 0) => ([0, 0], 0),
        (0, n) => ([decode(n), 0], 1),
        (o, n) => ([decode(o), decode(n)], 2),
    }
}

#[cfg(test)]
mod tests;
