//! `sensor analyze`'s input path on arbitrary bytes: pcap/pcapng parsing, TCP reassembly,
//! the replay through the shared classifier, and the finding encoder. It must never panic,
//! report exactly one finding per session that is not encrypted, and every finding must
//! encode to one JSON line that parses back with the same verdict.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(judged) = sensor::analyze::judge_bytes(data, &[26257, 5432]) else { return };
    // Which verdicts are only counted is the shared classifier's to say, not this target's.
    let reported: u64 =
        judged.counts.iter().filter(|(verdict, _)| !verdict.counted_only()).map(|(_, n)| n).sum();
    assert_eq!(judged.findings.len() as u64, reported);
    assert!(judged.findings.iter().all(|f| !f.verdict.counted_only()));
    for finding in &judged.findings {
        let line = serde_json::to_string(finding).expect("findings always encode");
        let back: serde_json::Value = serde_json::from_str(&line).expect("and parse back");
        assert_eq!(back["verdict"], finding.verdict.name());
        assert!(!line.contains('\n'), "one finding, one line");
    }
});
