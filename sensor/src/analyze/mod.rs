//! `sensor analyze --pcap FILE`: the same verdicts from a packet capture, for forensics.
//!
//! capture.rs reads pcap/pcapng into TCP segments, streams.rs reassembles the start of
//! each connection to a watched port (from its SYN: a connection whose start is not in the
//! capture is never judged), replay.rs drives the shared `Tracker` over the two streams
//! exactly as the kernel does packet by packet, and the findings come out in the same
//! format as the live sensor's.

mod capture;
mod replay;
mod streams;

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::Context;
use sensor_common::verdict::Verdict;

use crate::{config::FindingsTarget, error::Failure, output::findings::FindingsWriter};

pub struct AnalyzeConfig {
    pub pcap: PathBuf,
    pub ports: Vec<u16>,
    pub findings: FindingsTarget,
}

/// Read the whole capture, then report. A damaged capture still gets every session read
/// before the damage reported, and then an error.
pub fn run(config: AnalyzeConfig) -> Result<(), Failure> {
    let mut packets = capture::open(&config.pcap).map_err(Failure::config)?;
    let mut table = streams::FlowTable::new(&config.ports);
    let mut damage = None;
    loop {
        match packets.next_segment() {
            Ok(Some(segment)) => table.add(segment),
            Ok(None) => break,
            Err(err) => {
                damage = Some(err);
                break;
            }
        }
    }
    let mut writer = FindingsWriter::open(&config.findings).map_err(Failure::config)?;
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let without_start = table.flows_without_start();
    for flow in table.finish() {
        let Some(session) = replay::replay(&flow) else { continue };
        *counts.entry(session.verdict.name()).or_default() += 1;
        if session.verdict.is_encrypted() {
            continue;
        }
        writer.write(&session.finding).context("writing findings").map_err(Failure::runtime)?;
    }
    // A summary on stderr, one `verdict count` line each, for people and scripts.
    for verdict in Verdict::ALL {
        eprintln!("{} {}", verdict.name(), counts.get(verdict.name()).copied().unwrap_or(0));
    }
    eprintln!("packets {} flows_without_start {}", packets.packets_read(), without_start);
    match damage {
        None => Ok(()),
        Some(err) => Err(Failure::runtime(err.context(format!(
            "the capture is damaged after {} packets; sessions before that were reported",
            packets.packets_read()
        )))),
    }
}
