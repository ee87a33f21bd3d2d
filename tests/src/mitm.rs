//! A man in the middle, as an attacker on the path would run it: it answers `N` to the
//! client's SSLRequest (claiming the server has no TLS) and relays everything else to the
//! real server, which the client then talks to in plaintext through it.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use anyhow::Context;

pub struct Mitm {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Mitm {
    /// Listen on `listen`, relay to `upstream`, until dropped. (All the end-to-end tests are
    /// one process: a listener left behind would keep its address from the next test.)
    pub fn start(listen: &str, upstream: SocketAddr) -> anyhow::Result<Mitm> {
        let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        // Polled, not blocking: waking a blocked accept would take a connection to the
        // watched port, which the sensor under test would see.
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let acceptor = thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        thread::spawn(move || {
                            let _ = relay(client, upstream);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(Mitm { addr, stop, acceptor: Some(acceptor) })
    }
}

impl Drop for Mitm {
    /// Stop listening (the address is free again when this returns); relays already running
    /// finish on their own.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

fn relay(mut client: TcpStream, upstream: SocketAddr) -> std::io::Result<()> {
    let mut first = [0u8; 8];
    client.read_exact(&mut first)?;
    let mut server = TcpStream::connect(upstream)?;
    if first == SSL_REQUEST {
        client.write_all(b"N")?; // "no TLS here": the downgrade
    } else {
        server.write_all(&first)?;
    }
    let mut client_reader = client.try_clone()?;
    let mut server_writer = server.try_clone()?;
    let upstream_leg = thread::spawn(move || {
        let _ = std::io::copy(&mut client_reader, &mut server_writer);
        let _ = server_writer.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut server, &mut client);
    let _ = client.shutdown(std::net::Shutdown::Write);
    let _ = upstream_leg.join();
    Ok(())
}

/// A stand-in for a GSSAPI-capable server: answers `G` to GSSENCRequest and then only reads.
/// (A real Kerberos realm is heavier than this one answer needs.)
pub fn gss_acceptor(listen: &str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        for mut client in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut first = [0u8; 8];
                if client.read_exact(&mut first).is_ok() && first[4..] == [0x04, 0xd2, 0x16, 0x30] {
                    let _ = client.write_all(b"G");
                }
                let _ = std::io::copy(&mut client, &mut std::io::sink());
            });
        }
    });
    Ok(addr)
}
