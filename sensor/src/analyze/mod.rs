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

use crate::{
    config::{FindingLines, FindingsTarget},
    error::Failure,
    finding::Finding,
    identity::Origin,
    output::findings::FindingsWriter,
    repeats::Repeater,
};

pub struct AnalyzeConfig {
    pub pcap: PathBuf,
    pub ports: Vec<u16>,
    pub findings: FindingsTarget,
    /// Aggregated per identity (as the live sensor does), or one line per session.
    pub lines: FindingLines,
}

/// What a capture holds: every judged session start, in capture order of their flows.
pub struct Judged {
    /// Sessions per verdict (encrypted ones included).
    pub counts: BTreeMap<Verdict, u64>,
    /// Sessions with evidence to report (not encrypted).
    pub findings: Vec<crate::finding::Finding>,
    pub packets_read: u64,
    pub flows_without_start: u64,
    /// Where the capture stopped making sense, if it did; everything before was judged.
    pub damage: Option<anyhow::Error>,
}

/// Judge every session start in a capture (pcap or pcapng, from any reader).
fn judge<R: std::io::BufRead>(
    mut packets: capture::Packets<R>,
    ports: &[u16],
    origin: &Origin,
) -> Judged {
    let mut table = streams::FlowTable::new(ports);
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
    let flows_without_start = table.flows_without_start();
    let mut counts: BTreeMap<Verdict, u64> = BTreeMap::new();
    let mut findings = Vec::new();
    for flow in table.finish() {
        let Some(replayed) = replay::replay(&flow, origin) else { continue };
        let verdict = replayed.verdict;
        *counts.entry(verdict).or_default() += 1;
        if !verdict.counted_only() {
            findings.push(replayed.finding);
        }
    }
    Judged { counts, findings, packets_read: packets.packets_read(), flows_without_start, damage }
}

/// Judge the capture in `bytes` (fuzzing, tests): `None` if it is not a capture at all. The
/// findings carry `Origin::example()`.
pub fn judge_bytes(bytes: &[u8], ports: &[u16]) -> Option<Judged> {
    let packets = capture::Packets::new(std::io::BufReader::new(bytes)).ok()?;
    Some(judge(packets, ports, &Origin::example()))
}

/// The lines for a capture's findings: per session, or aggregated over the capture's own
/// time exactly as the live sensor aggregates (`repeats`).
fn lines_of(mut findings: Vec<Finding>, window: Option<std::time::Duration>) -> Vec<Finding> {
    let Some(window) = window else { return findings };
    findings.sort_by_key(|f| f.ts);
    let mut repeater = Repeater::new(window);
    let mut lines = Vec::with_capacity(findings.len());
    for finding in findings {
        lines.extend(repeater.due(finding.ts));
        lines.extend(repeater.observe(finding));
    }
    lines.extend(repeater.flush());
    lines
}

/// Read the whole capture, then report. A damaged capture still gets every session read
/// before the damage reported, and then an error.
pub fn run(config: AnalyzeConfig) -> Result<(), Failure> {
    let packets = capture::open(&config.pcap).map_err(Failure::config)?;
    // The host reported is the one analyzing the capture: a capture says nothing of it.
    let origin = Origin::detect(None, None).map_err(Failure::config)?;
    let mut judged = judge(packets, &config.ports, &origin);
    let mut writer = FindingsWriter::open(&config.findings).map_err(Failure::config)?;
    for finding in &lines_of(std::mem::take(&mut judged.findings), config.lines.window()) {
        writer.write(finding).context("writing findings").map_err(Failure::runtime)?;
    }
    // A summary on stderr, one `verdict count` line each, for people and scripts.
    for verdict in Verdict::ALL {
        eprintln!("{verdict} {}", judged.counts.get(&verdict).copied().unwrap_or(0));
    }
    eprintln!("packets {} flows_without_start {}", judged.packets_read, judged.flows_without_start);
    match judged.damage {
        None => Ok(()),
        Some(err) => Err(Failure::runtime(err.context(format!(
            "the capture is damaged after {} packets; sessions before that were reported",
            judged.packets_read
        )))),
    }
}
