//! Per-connection reassembly of the start of both directions, bounded.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::SystemTime,
};

use super::capture::Segment;

/// Bytes of each direction kept per connection: far more than a session start needs.
const STREAM_CAP: u32 = 64 * 1024;
/// Connections tracked at once; past it new connections are not followed.
const MAX_FLOWS: usize = 100_000;

type Endpoint = (IpAddr, u16);

/// One direction's bytes from its byte 0, as segments keyed by stream offset.
#[derive(Default)]
pub struct Stream {
    /// Sequence number of byte 0, once the SYN is seen.
    base: Option<u32>,
    segments: BTreeMap<u32, Vec<u8>>,
}

impl Stream {
    fn add(&mut self, seg: &Segment) {
        if seg.syn {
            self.base = Some(seg.seq.wrapping_add(1));
        }
        let Some(base) = self.base else { return };
        if seg.payload.is_empty() {
            return;
        }
        // Data in a SYN (TCP Fast Open) starts at byte 0.
        let offset = if seg.syn { 0 } else { seg.seq.wrapping_sub(base) };
        if offset >= STREAM_CAP {
            return;
        }
        let keep = seg.payload.len().min((STREAM_CAP - offset) as usize);
        let slot = self.segments.entry(offset).or_default();
        if slot.len() < keep {
            *slot = seg.payload[..keep].to_vec();
        }
    }

    /// The contiguous bytes from byte 0 (retransmissions and overlaps merged).
    pub fn contiguous(&self) -> Vec<u8> {
        let mut out: Vec<u8> = Vec::new();
        for (&offset, bytes) in &self.segments {
            let offset = offset as usize;
            if offset > out.len() {
                break; // a hole: nothing after it is known to follow
            }
            let skip = out.len() - offset;
            if skip < bytes.len() {
                out.extend_from_slice(&bytes[skip..]);
            }
        }
        out
    }
}

pub struct Flow {
    pub client: Endpoint,
    pub server: Endpoint,
    pub client_stream: Stream,
    pub server_stream: Stream,
    /// Time of the client's first data.
    pub first_data: Option<SystemTime>,
    pub fast_open: bool,
    pub closed: bool,
}

pub struct FlowTable {
    ports: Vec<u16>,
    flows: HashMap<(Endpoint, Endpoint), Flow>,
    done: Vec<Flow>,
    without_start: u64,
    seen_without_start: std::collections::HashSet<(Endpoint, Endpoint)>,
}

impl FlowTable {
    pub fn new(ports: &[u16]) -> Self {
        FlowTable {
            ports: ports.to_vec(),
            flows: HashMap::new(),
            done: Vec::new(),
            without_start: 0,
            seen_without_start: Default::default(),
        }
    }

    pub fn add(&mut self, seg: Segment) {
        let (key, from_client) = if self.ports.contains(&seg.dst.1) {
            ((seg.src, seg.dst), true)
        } else if self.ports.contains(&seg.src.1) {
            ((seg.dst, seg.src), false)
        } else {
            return;
        };
        if from_client && seg.syn && !seg.ack {
            // A new connection (or the port reused): finish any previous one.
            if let Some(old) = self.flows.remove(&key) {
                self.done.push(old);
            }
            if self.flows.len() >= MAX_FLOWS {
                return;
            }
            self.flows.insert(
                key,
                Flow {
                    client: key.0,
                    server: key.1,
                    client_stream: Stream::default(),
                    server_stream: Stream::default(),
                    first_data: None,
                    fast_open: false,
                    closed: false,
                },
            );
        }
        let Some(flow) = self.flows.get_mut(&key) else {
            if self.seen_without_start.insert(key) {
                self.without_start += 1;
            }
            return;
        };
        if from_client {
            if !seg.payload.is_empty() {
                flow.first_data.get_or_insert(seg.ts);
                flow.fast_open |= seg.syn;
            }
            flow.client_stream.add(&seg);
        } else {
            flow.server_stream.add(&seg);
        }
        flow.closed |= seg.fin || seg.rst;
    }

    /// Every followed connection, in the order they started.
    pub fn finish(mut self) -> Vec<Flow> {
        let mut all = std::mem::take(&mut self.done);
        all.extend(self.flows.into_values());
        all.sort_by_key(|f| f.first_data);
        all
    }

    pub fn flows_without_start(&self) -> u64 {
        self.without_start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn seg(seq: u32, syn: bool, payload: &[u8]) -> Segment {
        Segment {
            ts: SystemTime::UNIX_EPOCH,
            src: (Ipv4Addr::LOCALHOST.into(), 40000),
            dst: (Ipv4Addr::LOCALHOST.into(), 26257),
            seq,
            syn,
            ack: !syn,
            fin: false,
            rst: false,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn reassembles_out_of_order_and_retransmitted_segments() {
        let mut s = Stream::default();
        s.add(&seg(1000, true, b""));
        s.add(&seg(1004, false, b"def"));
        s.add(&seg(1001, false, b"abc"));
        s.add(&seg(1001, false, b"abc")); // retransmission
        s.add(&seg(1002, false, b"bcdefg")); // overlapping retransmission with more
        assert_eq!(s.contiguous(), b"abcdefg");
    }

    #[test]
    fn stops_at_a_hole_and_ignores_data_before_the_syn() {
        let mut s = Stream::default();
        s.add(&seg(5, false, b"zzz")); // no SYN yet: byte 0 unknown
        s.add(&seg(1000, true, b""));
        s.add(&seg(1001, false, b"ab"));
        s.add(&seg(1010, false, b"xy"));
        assert_eq!(s.contiguous(), b"ab");
    }

    #[test]
    fn fast_open_data_rides_in_the_syn() {
        let mut s = Stream::default();
        s.add(&seg(1000, true, b"hello"));
        s.add(&seg(1001, false, b"hello")); // sent again after the handshake
        assert_eq!(s.contiguous(), b"hello");
    }
}
