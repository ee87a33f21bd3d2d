//! What the client's OpenSSL says about verifying the server, and how a handshake announced
//! by it is tied to the ClientHello the packet hooks see. Pure, shared by the uprobes (which
//! record calls) and the egress hook (which judges the ClientHello), tested on the host.
//!
//! The facts (checked against the sources, see docs/design/tls-verification.md):
//! - a new `SSL_CTX` verifies nothing (`SSL_VERIFY_NONE`, no callback);
//!   `SSL_CTX_set_verify(ctx, mode, cb)` changes that for SSLs created after it;
//! - `SSL_new(ctx)` copies the context's mode into the SSL; `SSL_set_verify(ssl, mode, cb)`
//!   changes one SSL (libpq calls it, with `SSL_VERIFY_PEER`, only when it will verify);
//! - the first `SSL_connect`/`SSL_do_handshake` call on an SSL writes its ClientHello, in
//!   the calling thread, before the call returns (or, with a memory BIO as in asyncio,
//!   right after it, in the same thread).
//!
//! A thread id is the link: the handshake is announced per thread, and the ClientHello's
//! egress (run in the sending thread's context) takes the announcement of its own thread.
//! Anything that makes the link doubtful gives `Verification::Unknown`, never a guess.

use crate::verdict::Verification;

/// `SSL_VERIFY_PEER`: the one bit of the mode that makes a client check the server's chain.
pub const SSL_VERIFY_PEER: u32 = 1;

crate::named_enum! {
    /// The verification set on an OpenSSL object, as far as the uprobes saw it.
    pub enum LibraryMode ("library verification mode") {
        /// Never seen set (the object predates the sensor, or its creation was missed).
        NotSeen = 0 => "not_seen",
        /// `SSL_VERIFY_PEER`: the chain is checked.
        Peer = 1 => "peer",
        /// `SSL_VERIFY_NONE` and no callback: any certificate is accepted.
        NoneAtAll = 2 => "none",
        /// `SSL_VERIFY_NONE` with a callback of the application's own: the application may
        /// check the certificate after the handshake (Node does, in JavaScript), so the
        /// sensor cannot say.
        NoneWithCallback = 3 => "none_with_callback",
    }
}

impl LibraryMode {
    /// The mode an `SSL_CTX_set_verify`/`SSL_set_verify(mode, callback)` call sets.
    pub const fn from_call(mode: u32, callback: u64) -> LibraryMode {
        if mode & SSL_VERIFY_PEER != 0 {
            LibraryMode::Peer
        } else if callback != 0 {
            LibraryMode::NoneWithCallback
        } else {
            LibraryMode::NoneAtAll
        }
    }

    pub const fn verification(self) -> Verification {
        match self {
            LibraryMode::Peer => Verification::VerifiedChain,
            LibraryMode::NoneAtAll => Verification::Unverified,
            LibraryMode::NotSeen | LibraryMode::NoneWithCallback => Verification::Unknown,
        }
    }

    /// The mode stored in a map value byte (the announced bit cleared).
    #[inline(always)]
    pub const fn from_stored(value: u8) -> LibraryMode {
        match LibraryMode::from_u8(value & !ANNOUNCED) {
            Some(mode) => mode,
            None => LibraryMode::NotSeen,
        }
    }
}

/// Bit of an SSL's stored mode byte: its handshake was already announced (later
/// `SSL_do_handshake` calls on it continue that handshake and write no ClientHello).
pub const ANNOUNCED: u8 = 0x80;

/// An OpenSSL object (`SSL_CTX *` or `SSL *`) in one process: addresses are per process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    pub tgid: u32,
    pub _pad: u32,
    pub addr: u64,
}

impl ObjectKey {
    pub const fn new(pid_tgid: u64, addr: u64) -> ObjectKey {
        ObjectKey { tgid: (pid_tgid >> 32) as u32, _pad: 0, addr }
    }
}

/// The latest handshake announced on one thread, and the one before it if its ClientHello
/// was not taken: two handshakes of different modes under way on one thread make the link
/// ambiguous.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// `CLOCK_MONOTONIC` ns of the announcement.
    pub started_ns: u64,
    /// The announcement this one replaced without its ClientHello being taken (0: none).
    pub previous_ns: u64,
    /// `LibraryMode` of the SSL.
    pub mode: u8,
    pub previous_mode: u8,
    pub _pad: [u8; 6],
}

impl Handshake {
    /// A handshake of an SSL in `mode` announced at `now` on a thread whose last
    /// announcement (`old`) was not taken by a ClientHello.
    #[inline(always)]
    pub const fn announce(old: Option<&Handshake>, mode: LibraryMode, now: u64) -> Handshake {
        let (previous_ns, previous_mode) = match old {
            Some(old) => (old.started_ns, old.mode),
            None => (0, 0),
        };
        Handshake { started_ns: now, previous_ns, mode: mode as u8, previous_mode, _pad: [0; 6] }
    }

    /// What this announcement says about a ClientHello sent by the same thread, on a
    /// connection opened at `connect_ns`, and whether it was ambiguous: the announcement
    /// must come after the connect (else it belongs to an earlier connection), and no other
    /// announcement of another mode may still be pending since that connect.
    #[inline(always)]
    pub const fn judge(&self, connect_ns: u64) -> (Verification, bool) {
        if self.started_ns < connect_ns {
            return (Verification::Unknown, false);
        }
        if self.previous_ns >= connect_ns && self.previous_mode != self.mode {
            return (Verification::Unknown, true);
        }
        (LibraryMode::from_stored(self.mode).verification(), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONNECT: u64 = 1_000;

    #[test]
    fn the_mode_set_decides_and_a_callback_without_peer_is_unknown() {
        assert_eq!(LibraryMode::from_call(1, 0).verification(), Verification::VerifiedChain);
        // libpq's verify callback with SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT.
        assert_eq!(
            LibraryMode::from_call(3, 0x7f00_1234).verification(),
            Verification::VerifiedChain
        );
        assert_eq!(LibraryMode::from_call(0, 0).verification(), Verification::Unverified);
        // Node: SSL_VERIFY_NONE and its own callback; it rejects in JavaScript.
        assert_eq!(LibraryMode::from_call(0, 0x5555_0000).verification(), Verification::Unknown);
        assert_eq!(
            LibraryMode::from_stored(ANNOUNCED | LibraryMode::Peer as u8),
            LibraryMode::Peer
        );
        assert_eq!(LibraryMode::from_stored(0x7f), LibraryMode::NotSeen);
    }

    #[test]
    fn a_handshake_announced_after_the_connect_decides() {
        let h = Handshake::announce(None, LibraryMode::NoneAtAll, CONNECT + 5);
        assert_eq!(h.judge(CONNECT), (Verification::Unverified, false));
        // Announced before this connection existed: another connection's handshake.
        assert_eq!(h.judge(CONNECT + 6), (Verification::Unknown, false));
    }

    #[test]
    fn two_pending_handshakes_of_different_modes_are_ambiguous_of_the_same_mode_are_not() {
        let first = Handshake::announce(None, LibraryMode::Peer, CONNECT + 1);
        let same = Handshake::announce(Some(&first), LibraryMode::Peer, CONNECT + 2);
        assert_eq!(same.judge(CONNECT), (Verification::VerifiedChain, false));
        let other = Handshake::announce(Some(&first), LibraryMode::NoneAtAll, CONNECT + 2);
        assert_eq!(other.judge(CONNECT), (Verification::Unknown, true));
        // A pending announcement older than this connection (an HTTPS call earlier on the
        // same thread, whose ClientHello went to an unwatched port) does not matter.
        let stale = Handshake::announce(None, LibraryMode::Peer, CONNECT - 10);
        let now = Handshake::announce(Some(&stale), LibraryMode::NoneAtAll, CONNECT + 3);
        assert_eq!(now.judge(CONNECT), (Verification::Unverified, false));
    }
}
