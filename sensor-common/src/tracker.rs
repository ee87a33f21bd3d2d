//! The session-start state machine: what the client asked for, what the server answered,
//! what the client did next, and (on plaintext sessions) how authentication went.
//!
//! Pure transitions over small `#[repr(C)]` state, shared by the kernel (which feeds it from
//! packets and counts verdicts the moment they are decided) and by `sensor analyze` (which
//! feeds it from a capture). Every verdict is decided here; where the bytes of each client
//! message are (reassembly, the request skipped, the evidence kept) is decided by
//! [`crate::assembly`], shared the same way. The caller only moves bytes.

use crate::pgwire::{FirstMessage, TlsRecord};
use crate::verdict::{UnknownReason, Verdict, Verification, NO_REASON};

crate::named_enum! {
    /// Where the session is.
    pub enum Phase ("tracker phase") {
        /// Waiting for (the rest of) the client's first message.
        ClientFirst = 0 => "client_first",
        /// SSLRequest/GSSENCRequest sent: waiting for the server's one-byte answer.
        AwaitAnswer = 1 => "await_answer",
        /// The server said `S`: waiting for the client's TLS ClientHello.
        AwaitHello = 2 => "await_hello",
        /// The server said `N` (or `E`): waiting for the client's next message, or its close.
        AfterRefusal = 3 => "after_refusal",
        /// A plaintext StartupMessage went out: waiting for the server's first reply.
        AwaitAuth = 4 => "await_auth",
        /// The server asked for a password (or SASL/GSS token): waiting for the client's
        /// reply.
        AwaitPassword = 5 => "await_password",
        /// Nothing left to learn.
        Done = 6 => "done",
        /// The client's ClientHello went out: waiting for its next TLS record (a fatal
        /// alert rejects the server's certificate; anything else goes on) or its close.
        TlsHandshake = 7 => "tls_handshake",
    }
}

crate::named_enum! {
    /// An encryption the client asked for; the value is its `Tracker::requests` bit.
    pub enum Encryption ("encryption request") {
        /// SSLRequest.
        Ssl = 1 => "ssl",
        /// GSSENCRequest.
        Gssenc = 2 => "gssenc",
    }
}

impl Encryption {
    /// What a `requests` bit set holds, in the order libpq asks (GSS before TLS).
    pub fn requested(requests: u8) -> impl Iterator<Item = Encryption> {
        [Encryption::Gssenc, Encryption::Ssl].into_iter().filter(move |e| requests & *e as u8 != 0)
    }
}

/// `Tracker::requests` bits: what the client asked for, in any order.
pub const REQUESTED_SSL: u8 = Encryption::Ssl as u8;
pub const REQUESTED_GSS: u8 = Encryption::Gssenc as u8;

crate::named_enum! {
    /// The server's authentication request, as far as the sensor needs it.
    pub enum AuthMethod ("auth method") {
        /// Not seen (yet).
        Unknown = 0 => "unknown",
        /// AuthenticationOk straight away: `trust` (or peer-like) authentication.
        Trust = 1 => "trust",
        /// AuthenticationCleartextPassword (3): the password itself crosses the wire.
        Cleartext = 2 => "cleartext",
        /// AuthenticationMD5Password (5): a replayable, crackable hash crosses the wire.
        Md5 = 3 => "md5",
        /// AuthenticationSASL (10): SCRAM; no reusable secret on the wire.
        Sasl = 4 => "sasl",
        /// GSS (7) or SSPI (9).
        Gss = 5 => "gss",
        /// KerberosV5 (2) or a code this sensor does not know.
        Other = 6 => "other",
        /// ErrorResponse instead of an authentication request.
        Error = 7 => "error",
    }
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
}

/// Per-connection decision state. 12 bytes, `Copy`, kernel-friendly.
///
/// Its fields are private: the kernel and `sensor analyze` drive it only through the
/// transitions below and read it through the typed getters, so every decision is made here.
/// Word-aligned so a copy is three word moves, not a byte loop the verifier walks through.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracker {
    /// `Phase`.
    phase: u8,
    /// `REQUESTED_*` bits.
    requests: u8,
    /// The request the pending server answer belongs to (`REQUESTED_SSL` or `_GSS`).
    last_request: u8,
    /// `Verdict` once decided (`VERDICT_NONE` before).
    verdict: u8,
    /// `UnknownReason` (`NO_REASON` unless the verdict is `unknown`).
    reason: u8,
    /// `AuthMethod`.
    auth: u8,
    password_sent: u8,
    /// Server answers seen so far (each one byte: `S`, `N`, `G`, `E`...), at most two kept.
    answers: u8,
    /// In `TlsHandshake`: the verdict the handshake leads to unless the client rejects the
    /// server (`Tls` after an SSLRequest, `TlsDirect` without one).
    tls_path: u8,
    /// `Verification` of the client's TLS library, as told by the caller at the ClientHello.
    verification: u8,
    /// The description of the client's fatal alert (meaningful with `tls_rejected` only:
    /// every byte is a possible description, so none is kept to mean "no alert").
    alert: u8,
    _spare: u8,
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
        reason: NO_REASON,
        auth: AuthMethod::Unknown as u8,
        password_sent: 0,
        answers: 0,
        tls_path: VERDICT_NONE,
        verification: Verification::Unknown as u8,
        alert: 0,
        _spare: 0,
    };

    pub const fn phase(&self) -> Phase {
        match Phase::from_u8(self.phase) {
            Some(phase) => phase,
            None => Phase::Done,
        }
    }

    pub const fn verdict(&self) -> Option<Verdict> {
        Verdict::from_u8(self.verdict)
    }

    /// Why the verdict is `unknown` (`None` for every other verdict).
    pub const fn reason(&self) -> Option<UnknownReason> {
        UnknownReason::from_u8(self.reason)
    }

    /// The wire value of [`Tracker::reason`] for a kernel event (0: none). A plain copy: the
    /// kernel must not branch on it (every branch multiplies the verifier's states).
    pub const fn reason_code(&self) -> u8 {
        self.reason
    }

    /// The wire value of [`Tracker::auth`] for a kernel event.
    pub const fn auth_code(&self) -> u8 {
        self.auth
    }

    /// `REQUESTED_*` bits: what the client asked for.
    pub const fn requests(&self) -> u8 {
        self.requests
    }

    /// The server's answers, packed (see [`answers_of`]).
    pub const fn answers(&self) -> u8 {
        self.answers
    }

    /// The server's authentication request (`Unknown` until seen).
    pub const fn auth(&self) -> AuthMethod {
        match AuthMethod::from_u8(self.auth) {
            Some(method) => method,
            None => AuthMethod::Unknown,
        }
    }

    /// What the client's TLS library was seen doing about the server's certificate.
    pub const fn verification(&self) -> Verification {
        match Verification::from_u8(self.verification) {
            Some(v) => v,
            None => Verification::Unknown,
        }
    }

    /// The wire value of [`Tracker::verification`] for a kernel event (a plain copy).
    pub const fn verification_code(&self) -> u8 {
        self.verification
    }

    /// The description of the fatal TLS alert the client sent (`tls_rejected` only).
    pub const fn tls_alert(&self) -> Option<u8> {
        if matches!(self.verdict(), Some(Verdict::TlsRejected)) {
            Some(self.alert)
        } else {
            None
        }
    }

    /// The wire value of [`Tracker::tls_alert`] for a kernel event (meaningful with
    /// `tls_rejected` only).
    pub const fn tls_alert_code(&self) -> u8 {
        self.alert
    }

    /// The caller learned, as the client's ClientHello goes out, whether the client's TLS
    /// library verifies the server. Only the ClientHello's moment counts: later calls (a
    /// retransmit, the server's end) change nothing once the handshake is under way.
    #[inline(always)]
    pub fn client_verification(&mut self, verification: Verification) {
        if self.phase() != Phase::TlsHandshake {
            self.verification = verification as u8;
        }
    }

    /// The client answered the authentication request with a password message.
    pub const fn password_sent(&self) -> bool {
        self.password_sent != 0
    }

    /// The verdict is decided and the authentication outcome is still to come: the
    /// session's report should say that an auth report follows.
    pub const fn auth_follows(&self) -> bool {
        matches!(self.phase(), Phase::AwaitAuth | Phase::AwaitPassword)
    }

    /// The client's ClientHello is out and its next TLS record is awaited: the caller peeks
    /// at the first [`crate::pgwire::TLS_PEEK_LEN`] bytes of the record that starts
    /// right after the ClientHello (stream offset: the message's start plus its length) and
    /// hands them to [`Tracker::client_tls_record`].
    pub const fn wants_tls_record(&self) -> bool {
        matches!(self.phase(), Phase::TlsHandshake)
    }

    /// The client is sending a message (its first, or the next after a server answer):
    /// true while the caller should collect client bytes for [`Tracker::client_message`].
    pub const fn wants_client_message(&self) -> bool {
        matches!(self.phase(), Phase::ClientFirst | Phase::AwaitHello | Phase::AfterRefusal)
    }

    #[inline(always)]
    fn decide(&mut self, verdict: Verdict, reason: u8) -> u8 {
        self.verdict = verdict as u8;
        self.reason = reason;
        effect::VERDICT
    }

    #[inline(always)]
    fn finish(&mut self, verdict: Verdict) -> u8 {
        self.phase = Phase::Done as u8;
        self.decide(verdict, NO_REASON) | effect::DONE
    }

    #[inline(always)]
    fn finish_unknown(&mut self, reason: UnknownReason) -> u8 {
        self.phase = Phase::Done as u8;
        self.decide(Verdict::Unknown, reason as u8) | effect::DONE
    }

    /// The caller cannot follow the session any further (its start was not seen, its
    /// capture was lost): `unknown` for `reason` unless a verdict was already decided, and
    /// done either way.
    #[inline(always)]
    pub fn abandon(&mut self, reason: UnknownReason) -> u8 {
        // A handshake under way is TLS whatever happens next: only a rejection is lost.
        if self.phase() == Phase::TlsHandshake {
            return self.finish_tls();
        }
        // Done either way: no authentication outcome will follow a session given up on.
        self.phase = Phase::Done as u8;
        if self.verdict().is_some() {
            return effect::DONE;
        }
        self.decide(Verdict::Unknown, reason as u8) | effect::DONE
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
                        self.decide(verdict, NO_REASON)
                    }
                    FirstMessage::CancelRequest { .. } if !after_refusal => {
                        self.finish(Verdict::Cancel)
                    }
                    FirstMessage::TlsClientHello { .. } if !after_refusal => {
                        self.await_tls_outcome(Verdict::TlsDirect)
                    }
                    FirstMessage::Http2Preface if !after_refusal => {
                        self.finish(Verdict::RpcPlaintext)
                    }
                    _ => self.finish_unknown(UnknownReason::NotPgwire),
                }
            }
            Phase::AwaitHello => match first {
                FirstMessage::TlsClientHello { .. } => self.await_tls_outcome(Verdict::Tls),
                _ => self.finish_unknown(UnknownReason::NoTlsAfterAccept),
            },
            _ => 0,
        }
    }

    /// The ClientHello is out: the verdict waits for the client's next record, which says
    /// whether it accepted the server's certificate.
    #[inline(always)]
    fn await_tls_outcome(&mut self, path: Verdict) -> u8 {
        self.tls_path = path as u8;
        self.phase = Phase::TlsHandshake as u8;
        0
    }

    /// The client did not reject the server during the handshake (or cannot be followed
    /// further): TLS, unverified if its library was seen not to verify.
    #[inline(always)]
    fn finish_tls(&mut self) -> u8 {
        if self.verification == Verification::Unverified as u8 {
            return self.finish(Verdict::TlsUnverified);
        }
        match Verdict::from_u8(self.tls_path) {
            Some(path) => self.finish(path),
            None => self.finish(Verdict::Tls),
        }
    }

    /// The client's TLS record after its ClientHello.
    #[inline(always)]
    pub fn client_tls_record(&mut self, record: TlsRecord) -> u8 {
        if self.phase() != Phase::TlsHandshake {
            return 0;
        }
        match record {
            TlsRecord::FatalAlert { description } => {
                self.alert = description;
                self.finish(Verdict::TlsRejected)
            }
            TlsRecord::Other => self.finish_tls(),
        }
    }

    #[inline(always)]
    fn request(&mut self, which: u8) -> u8 {
        self.requests |= which;
        self.last_request = which;
        self.phase = Phase::AwaitAnswer as u8;
        0
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
            b'G' if self.last_request == REQUESTED_GSS => self.finish(Verdict::Gssenc),
            b'N' | b'E' => {
                self.phase = Phase::AfterRefusal as u8;
                0
            }
            _ => self.finish_unknown(UnknownReason::BadServerAnswer),
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
            Phase::ClientFirst if partial => self.finish_unknown(UnknownReason::IncompleteMessage),
            // Nothing was sent (a port check, a health probe): no session to judge.
            Phase::ClientFirst => {
                self.phase = Phase::Done as u8;
                effect::DONE
            }
            Phase::AwaitAnswer => self.finish_unknown(UnknownReason::ClosedBeforeAnswer),
            Phase::AwaitHello => self.finish_unknown(UnknownReason::NoTlsAfterAccept),
            // Closed during the handshake without a clear fatal alert: a rejection the
            // wire does not show (an encrypted alert, a check after the handshake) cannot be
            // told from a server that gave up, so it stays TLS.
            Phase::TlsHandshake => self.finish_tls(),
            // Asked for encryption, was told no, and gave up: the server (or a MitM) refused.
            Phase::AfterRefusal => self.finish(Verdict::Refused),
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
