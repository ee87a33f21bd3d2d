//! pcap and pcapng files to TCP segments (IPv4/IPv6 over Ethernet, raw IP, Linux cooked
//! v1/v2, BSD loopback).

use std::{
    fs::File,
    io::{BufRead, BufReader, Read},
    net::IpAddr,
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::{anyhow, bail, Context};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_file::{
    pcap::PcapReader,
    pcapng::{Block, PcapNgReader},
    DataLink,
};

/// One TCP segment, as captured.
#[derive(Debug, Clone)]
pub struct Segment {
    pub ts: SystemTime,
    pub src: (IpAddr, u16),
    pub dst: (IpAddr, u16),
    pub seq: u32,
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub payload: Vec<u8>,
}

enum Format<R: Read> {
    Pcap(PcapReader<R>),
    PcapNg { reader: PcapNgReader<R>, links: Vec<DataLink> },
}

pub struct Packets<R: Read> {
    format: Format<R>,
    read: u64,
}

const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

pub fn open(path: &Path) -> anyhow::Result<Packets<BufReader<File>>> {
    let file =
        File::open(path).with_context(|| format!("--pcap {}: cannot open", path.display()))?;
    Packets::new(BufReader::new(file)).with_context(|| format!("--pcap {}", path.display()))
}

impl<R: BufRead> Packets<R> {
    /// Sniff the format from the first bytes (peeked, not consumed).
    pub fn new(mut reader: R) -> anyhow::Result<Self> {
        let magic: [u8; 4] = reader
            .fill_buf()?
            .get(..4)
            .and_then(|m| m.try_into().ok())
            .context("too short to be a capture")?;
        let not_a_capture = |e| anyhow!("not a pcap or pcapng file ({e})");
        let format = if magic == PCAPNG_MAGIC {
            let reader = PcapNgReader::new(reader).map_err(not_a_capture)?;
            Format::PcapNg { reader, links: vec![] }
        } else {
            Format::Pcap(PcapReader::new(reader).map_err(not_a_capture)?)
        };
        Ok(Packets { format, read: 0 })
    }
}

impl<R: Read> Packets<R> {
    pub fn packets_read(&self) -> u64 {
        self.read
    }

    /// The next TCP segment; packets that are not TCP over IP are skipped.
    pub fn next_segment(&mut self) -> anyhow::Result<Option<Segment>> {
        loop {
            let (ts, link, data) = match &mut self.format {
                Format::Pcap(reader) => {
                    let link = reader.header().datalink;
                    match reader.next_packet() {
                        None => return Ok(None),
                        Some(Err(e)) => bail!("reading packet {}: {e}", self.read + 1),
                        Some(Ok(p)) => (p.timestamp, link, p.data.into_owned()),
                    }
                }
                Format::PcapNg { reader, links } => match reader.next_block() {
                    None => return Ok(None),
                    Some(Err(e)) => bail!("reading block after packet {}: {e}", self.read),
                    Some(Ok(Block::InterfaceDescription(idb))) => {
                        links.push(idb.linktype);
                        continue;
                    }
                    Some(Ok(Block::EnhancedPacket(epb))) => {
                        let link =
                            links.get(epb.interface_id as usize).copied().ok_or_else(|| {
                                anyhow!("packet on undeclared interface {}", epb.interface_id)
                            })?;
                        (epb.timestamp, link, epb.data.into_owned())
                    }
                    Some(Ok(_)) => continue,
                },
            };
            self.read += 1;
            if let Some(segment) = decode(ts, link, &data) {
                return Ok(Some(segment));
            }
        }
    }
}

fn decode(ts: Duration, link: DataLink, data: &[u8]) -> Option<Segment> {
    let sliced = match link {
        DataLink::ETHERNET => SlicedPacket::from_ethernet(data).ok()?,
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => SlicedPacket::from_ip(data).ok()?,
        DataLink::LINUX_SLL => SlicedPacket::from_linux_sll(data).ok()?,
        // SLL2 has a fixed 20-byte header, BSD loopback a 4-byte family: IP follows.
        DataLink::LINUX_SLL2 => SlicedPacket::from_ip(data.get(20..)?).ok()?,
        DataLink::NULL | DataLink::LOOP => SlicedPacket::from_ip(data.get(4..)?).ok()?,
        _ => return None,
    };
    let (src_ip, dst_ip): (IpAddr, IpAddr) = match sliced.net? {
        NetSlice::Ipv4(ip) => {
            (ip.header().source_addr().into(), ip.header().destination_addr().into())
        }
        NetSlice::Ipv6(ip) => {
            (ip.header().source_addr().into(), ip.header().destination_addr().into())
        }
        _ => return None,
    };
    let TransportSlice::Tcp(tcp) = sliced.transport? else { return None };
    Some(Segment {
        ts: SystemTime::UNIX_EPOCH + ts,
        src: (src_ip, tcp.source_port()),
        dst: (dst_ip, tcp.destination_port()),
        seq: tcp.sequence_number(),
        syn: tcp.syn(),
        ack: tcp.ack(),
        fin: tcp.fin(),
        rst: tcp.rst(),
        payload: tcp.payload().to_vec(),
    })
}
