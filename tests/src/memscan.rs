//! Search a live process's writable memory for a byte string (root reads /proc/PID/mem).
//! Used to prove the sensor never holds a password, not even in a buffer it later freed.

use std::{
    fs,
    io::{Read, Seek, SeekFrom},
};

use anyhow::Context;

/// True when `needle` occurs in any writable mapping (heap, stack, anonymous, .data/.bss).
pub fn process_memory_contains(pid: u32, needle: &[u8]) -> anyhow::Result<bool> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).context("reading maps")?;
    let mut mem = fs::File::open(format!("/proc/{pid}/mem")).context("opening mem")?;
    let mut scanned = 0u64;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else { continue };
        if !perms.starts_with("rw") {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else { continue };
        let (start, end) = (u64::from_str_radix(start, 16)?, u64::from_str_radix(end, 16)?);
        let mut region = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut region).is_err() {
            continue; // guard pages and the like
        }
        scanned += region.len() as u64;
        if region.windows(needle.len()).any(|w| w == needle) {
            return Ok(true);
        }
    }
    anyhow::ensure!(scanned > 0, "no memory of pid {pid} could be read");
    Ok(false)
}
