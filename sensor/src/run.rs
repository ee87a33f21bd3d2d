//! `sensor run`: the agent's lifecycle.
//!
//! Order matters for "nothing left attached on error": validate, open the findings output,
//! bind the metrics address, take the host's instance lock, and only then load and attach.
//! Then drop the privileges only loading needed. Detach happens when `Attached` is
//! dropped, on every exit path (and by the kernel when the process dies: bpf_link fds).

use std::sync::{atomic::Ordering, Arc};

use anyhow::Context;
use std::time::Instant;
use tokio::{
    net::TcpListener,
    signal::unix::{signal, SignalKind},
};
use tracing::{info, warn};

use crate::{
    bpf::{Attached, LoadOptions},
    cgroup::{self, AttachAt},
    config::{role_bits, RunConfig, TlsVerification},
    error::Failure,
    events::EventStream,
    identity::Origin,
    instance, kernel_log,
    output::{
        findings::FindingsOutputs,
        http::{self, HttpState},
        metrics::{KernelSources, Metrics},
    },
    pipeline::Pipeline,
    preflight, privileges,
    tls_libraries::{self, Catalog},
};

pub fn run(config: RunConfig) -> Result<(), Failure> {
    // One thread: the agent's work per session is tiny, and a single-threaded runtime keeps
    // its CPU and memory footprint small on every host.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_async(config))
}

async fn run_async(config: RunConfig) -> Result<(), Failure> {
    // First of all: a signal during start-up (a `systemctl reload` right after start, a
    // SIGTERM while the verifier runs) must be handled, not kill the process by default
    // action. They are acted on once the event loop runs.
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let attach_at = plan_cgroup(&config)?;
    preflight::require_all(&config)?;

    let origin = Origin::detect(config.machine_id_file.as_deref(), config.node_name.clone())
        .map_err(Failure::config)?;
    let findings = FindingsOutputs::open(&config.findings).map_err(Failure::config)?;
    let listener = TcpListener::bind(config.metrics_addr).await.map_err(|err| {
        Failure::runtime(anyhow::anyhow!(
            "cannot listen on --metrics-addr {}: {err}. Another process (another sensor?) may \
             hold it; pick a free address with --metrics-addr",
            config.metrics_addr
        ))
    })?;

    let _instance = if config.allow_second_instance {
        None
    } else {
        instance::acquire().map_err(Failure::runtime)?
    };

    for setting in &config.ignored_settings {
        warn!(
            setting,
            "this setting is no longer used and is ignored: the kernel keeps each connection's \
             state in its socket's own storage, so there is no table to size; remove it"
        );
    }
    let options = LoadOptions {
        ring_buffer_bytes: config.ring_buffer_bytes,
        roles: role_bits(&config.roles),
        kernel_log: config.kernel_log,
        tls_probes: config.tls_verification.enabled(),
    };
    // Mounted (a cgroup v1 host) only now, after every check and the instance lock: a
    // run refused for another reason mounts nothing.
    let (cgroup_dir, own_mount) = match attach_at {
        AttachAt::Given(dir) | AttachAt::Root(dir) => (dir, None),
        AttachAt::OwnMount => {
            let own = cgroup::OwnMount::mount_or_adopt().map_err(Failure::runtime)?;
            // Dropped (unmounted) on refusal.
            own.require_host_root().map_err(Failure::runtime)?;
            info!(
                path = %own.path().display(),
                "no cgroup2 mounted (a cgroup v1 host): attaching at the root of one of the \
                 sensor's own, unmounted once attached"
            );
            (own.path().to_path_buf(), Some(own))
        }
    };
    let attached = Attached::load_and_attach(&config.ports, &cgroup_dir, options);
    // Attached (or not), the sensor's own mount goes: the links and the attachment check
    // hold the cgroup itself, not the mount.
    drop(own_mount);
    let mut attached = attached?;
    // The OpenSSL copies there already, before the first session is judged: the
    // distribution's (so a client started later is probed from its first connection) and
    // every running process's.
    let mut catalog = Catalog::default();
    let mut tls_probed = (0, 0);
    if config.tls_verification.enabled() {
        let mut libraries = catalog.scan_system_libraries();
        libraries.extend(catalog.scan_all_processes());
        tls_probed = attached.probe_tls_libraries(&libraries);
    }
    if let Some(logger) = attached.kernel_log.take() {
        tokio::spawn(kernel_log::forward(logger));
    }
    let counters = Arc::new(attached.take_counters()?);
    let still_reads =
        || counters.read().is_ok() && attached.check.as_ref().is_none_or(|check| check.healthy());
    // Opening a uprobe later needs CAP_SYS_ADMIN (the kernel's uprobe PMU checks it, not
    // CAP_PERFMON) and CAP_PERFMON: kept only to follow libraries that appear after start.
    // Pointless (and not kept) when the kernel already refused them at start.
    let follow = config.tls_verification == TlsVerification::Follow
        && attached.tls.as_ref().is_some_and(|tls| !tls.denied());
    let keep_for_uprobes: &[caps::Capability] = if follow {
        &[caps::Capability::CAP_SYS_ADMIN, caps::Capability::CAP_PERFMON]
    } else {
        &[]
    };
    match privileges::drop_after_attach(still_reads, keep_for_uprobes) {
        Ok(d) => info!(dropped = ?d.dropped, kept = ?d.kept, "privileges dropped after attach"),
        Err(err) => warn!(%err, "could not drop every privilege after attach; some are kept"),
    }
    let mut events =
        EventStream::new(attached.take_events()?).context("cannot poll the ring buffer")?;
    let attachment = attached.check.take().map(Arc::new);
    let sources =
        KernelSources { counters, ports: config.ports.clone(), attachment: attachment.clone() };
    let state = Arc::new(HttpState {
        metrics: Metrics::new(sources, origin.instance()).context("cannot set up metrics")?,
        attached: true.into(),
        attachment,
    });
    let record_tls_probes = |(files, failures): (usize, u64)| {
        state.metrics.tls_libraries_probed.set(files as i64);
        state.metrics.tls_probe_failures.inc_by(failures);
    };
    record_tls_probes(tls_probed);
    let server = tokio::spawn(http::serve(listener, state.clone(), config.web.clone()));
    let mut pipeline = Pipeline::new(&config, origin, findings, state.clone())
        .context("cannot set up alerting")?;
    info!(
        programs = attached.programs,
        cgroup = %cgroup_dir.display(),
        ports = ?config.ports,
        roles = ?config.roles,
        metrics = %config.metrics_addr,
        tls_verification = ?config.tls_verification,
        tls_link = ?attached.kernel_paths.tls_link,
        storage_by_packet_socket = attached.kernel_paths.storage_by_packet_socket,
        "attached; watching sessions"
    );

    let (found_libraries, mut new_libraries) = tokio::sync::mpsc::unbounded_channel();
    let _scanner = if follow {
        Some(
            tls_libraries::spawn_scanner(catalog, found_libraries)
                .context("cannot start the library scanner")?,
        )
    } else {
        None
    };

    let mut next_tick = Instant::now() + pipeline.tick_period();
    let outcome = loop {
        tokio::select! {
            ready = events.wait() => {
                if let Err(err) = ready {
                    break Err(Failure::runtime(anyhow::Error::new(err).context("reading events failed")));
                }
                let now = Instant::now();
                events.drain(|ev| pipeline.handle(ev, now));
                pipeline.flush();
                // A finding now waiting for its auth outcome is checked on the short tick.
                next_tick = next_tick.min(now + pipeline.tick_period());
            }
            _ = tokio::time::sleep_until(next_tick.into()) => {
                let now = Instant::now();
                pipeline.tick(now);
                next_tick = now + pipeline.tick_period();
            }
            Some(libraries) = new_libraries.recv() => {
                record_tls_probes(attached.probe_tls_libraries(&libraries));
            }
            _ = sighup.recv() => pipeline.reopen_findings(),
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break Ok(()) }
            _ = sigint.recv() => { info!("SIGINT: stopping"); break Ok(()) }
        }
    };

    // Whatever the kernel already sent is reported before detaching, all of it.
    let now = Instant::now();
    events.drain_remaining(config.ring_buffer_bytes, |ev| pipeline.handle(ev, now));
    pipeline.finish();
    if events.malformed > 0 {
        warn!(records = events.malformed, "ignored malformed ring buffer records");
    }
    state.attached.store(false, Ordering::Relaxed);
    drop(events);
    drop(attached);
    server.abort();
    info!("detached");
    outcome
}

/// Where to attach, decided before anything is loaded; a bad `--cgroup` is a
/// configuration error.
fn plan_cgroup(config: &RunConfig) -> Result<AttachAt, Failure> {
    let given = config.cgroup.as_deref();
    cgroup::attach_point(given).map_err(|err| {
        if given.is_some() {
            Failure::config(err)
        } else {
            err.into()
        }
    })
}
