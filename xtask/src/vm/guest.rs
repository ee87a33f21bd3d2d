//! `xtask vm-guest`: the smoke test inside a test VM (see vm/mod.rs), as root in an
//! initramfs with /proc, /sys, cgroup2 and loopback set up by /init. It runs `sensor check`,
//! starts the sensor, sends one plaintext StartupMessage and one SSLRequest answered `S`
//! followed by a ClientHello, and prints one `VMTEST` line the host parses:
//! `VMTEST kernel=<release> check=<ok|fail> attach=<ok|fail> plaintext_finding=<ok|fail>
//! tls_count=<ok|fail> caps_after_attach=<CapPrm>` (which capabilities the sensor kept
//! once attached: CAP_BPF stays where the kernel refuses map reads without it).

use sensor_common::verdict::Verdict;
use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use anyhow::Context;

use crate::bench::{
    loadgen::{self, Session},
    sensor_proc::SensorProc,
    server,
};

const SENSOR: &str = "/sensor";
const PLAIN_SERVER: &str = "127.0.0.1:26257";
const TLS_SERVER: &str = "127.0.0.2:26257";

fn word(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "fail"
    }
}

pub fn run() -> anyhow::Result<()> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim().to_string();
    let check = Command::new(SENSOR).arg("check").output()?;
    println!("{}", String::from_utf8_lossy(&check.stdout));
    let check_ok = check.status.success();

    server::spawn_pgwire(PLAIN_SERVER, server::Answer::No)?;
    server::spawn_pgwire(TLS_SERVER, server::Answer::Yes)?;
    let (mut attach_ok, mut plain_ok, mut tls_ok) = (false, false, false);
    let mut caps_kept = String::from("-");
    // TCG emulates the CPU: the verifier runs many times slower than on the host.
    match SensorProc::start_piped_within(Path::new(SENSOR), &[], Duration::from_secs(240)) {
        Err(err) => println!("sensor did not attach: {err:#}"),
        Ok(mut sensor) => {
            attach_ok = true;
            println!("attached after {:.1} s", sensor.attached_after.as_secs_f64());
            caps_kept = std::fs::read_to_string(format!("/proc/{}/status", sensor.pid()))
                .ok()
                .and_then(|s| {
                    s.lines().find_map(|l| Some(l.strip_prefix("CapPrm:")?.trim().to_string()))
                })
                .unwrap_or_default();
            let lines = sensor.finding_lines().context("no findings pipe")?;
            let once = |addr: &str, kind| {
                let addr: SocketAddr = addr.parse().expect("literal address");
                loadgen::sessions(addr, kind, 1, Duration::from_secs(10), 1)
            };
            let plain = once(PLAIN_SERVER, Session::Plaintext);
            let tls = once(TLS_SERVER, Session::Tls);
            let finding = lines
                .recv_timeout(Duration::from_secs(5))
                .map(|(_, line)| line)
                .unwrap_or_default();
            println!("finding: {finding}");
            plain_ok = plain.errors == 0 && finding.contains("\"verdict\":\"plaintext\"");
            std::thread::sleep(Duration::from_millis(300));
            match sensor.sample() {
                Ok(sample) => {
                    tls_ok = tls.errors == 0 && sample.counted(Verdict::Tls) == 1;
                    plain_ok &= sample.counted(Verdict::Plaintext) == 1;
                }
                Err(err) => println!("metrics: {err:#}"),
            }
            if let Err(err) = sensor.stop() {
                println!("stop: {err:#}");
                attach_ok = false;
            }
        }
    }
    println!(
        "VMTEST kernel={kernel} check={} attach={} plaintext_finding={} tls_count={} \
         caps_after_attach={caps_kept}",
        word(check_ok),
        word(attach_ok),
        word(plain_ok),
        word(tls_ok)
    );
    Ok(())
}
