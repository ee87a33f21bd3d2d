//! Protocol messages built for tests (feature `test-util`), shared by every crate's tests.

use std::vec::Vec;

/// A StartupMessage of protocol 3.`minor` with the given parameters.
pub fn startup_message_v(params: &[(&str, &str)], minor: u16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0, 3]);
    body.extend_from_slice(&minor.to_be_bytes());
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    msg
}

/// A protocol 3.0 StartupMessage.
pub fn startup_message(params: &[(&str, &str)]) -> Vec<u8> {
    startup_message_v(params, 0)
}
