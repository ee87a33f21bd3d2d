//! Shared by the kernel programs (`sensor-ebpf`) and the userspace agent (`sensor`).
//!
//! - [`pgwire`]: the one classifier of a session's first bytes, pure functions over byte
//!   arrays. The kernel calls it to count verdicts exactly; userspace calls it again on the
//!   captured bytes (and on pcap streams), so both sides agree by construction.
//! - [`tracker`]: the session-start state machine every verdict comes from.
//! - [`claim`]: which of two programs finishing one session at once carries out what.
//! - [`tls`]: what the client's OpenSSL says about verifying the server, and how its
//!   handshake is tied to the ClientHello on the wire.
//! - [`assembly`]: where a client message's bytes land in the capture (pure arithmetic).
//! - [`verdict`]: verdict, severity and role enums with their stable names.
//! - [`names`]: the one mechanism that gives each shared enum its names and parsers.
//! - [`event`]: the `#[repr(C)]` records that cross the kernel/user boundary.
//! - [`limits`]: map names, sizes and counter indices both sides must agree on.
#![no_std]

#[cfg(any(test, feature = "test-util"))]
extern crate std;

#[cfg(feature = "user")]
extern crate alloc;

pub mod assembly;
pub mod claim;
pub mod event;
pub mod limits;
pub mod names;
pub mod pgwire;
pub mod tls;
pub mod tracker;
pub mod verdict;

#[cfg(feature = "user")]
mod user;

#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
