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

fn relay(mut client: TcpStream, upstream: SocketAddr) -> anyhow::Result<()> {
    let mut first = [0u8; 8];
    client.read_exact(&mut first)?;
    let mut server = TcpStream::connect(upstream)?;
    if first == SSL_REQUEST {
        client.write_all(b"N")?; // "no TLS here": the downgrade
    } else {
        server.write_all(&first)?;
    }
    relay_plain(client, server)
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

/// A man in the middle that terminates TLS, as an attacker on the path with a certificate
/// of its own would: it answers `S` to the client's SSLRequest, completes the handshake with
/// its own certificate (self-signed for `localhost`, from no CA the tests trust), opens TLS
/// to the real server (checking nothing), and relays the plaintext between the two: it reads
/// and could rewrite everything, the password included. A client that verifies the server
/// refuses its certificate.
pub struct TlsMitm {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<thread::JoinHandle<()>>,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A scratch directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl TlsMitm {
    pub fn start(listen: &str, upstream: SocketAddr) -> anyhow::Result<TlsMitm> {
        let dir = std::env::temp_dir().join(format!("pgwire-tls-mitm-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let dir = tempdir::Dir(dir);
        let server_config = Arc::new(attacker_server_config(&dir.0)?);
        let client_config = Arc::new(trusting_client_config()?);
        let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let acceptor = thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let (server_config, client_config) =
                            (server_config.clone(), client_config.clone());
                        thread::spawn(move || {
                            let _ = intercept(client, upstream, server_config, client_config);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(TlsMitm { addr, stop, acceptor: Some(acceptor), _dir: dir })
    }
}

impl Drop for TlsMitm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// The attacker's own certificate: self-signed, `localhost` and the loopback addresses.
fn attacker_server_config(dir: &std::path::Path) -> anyhow::Result<rustls::ServerConfig> {
    use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-addext"])
        .arg("subjectAltName=DNS:localhost,IP:127.0.0.1,IP:127.0.0.2,IP:::1")
        .args(["-keyout", "mitm.key", "-out", "mitm.crt"])
        .current_dir(dir)
        .output()
        .context("running openssl (installed by scripts/bootstrap.sh --test-deps)")?;
    anyhow::ensure!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    let certs = CertificateDer::pem_file_iter(dir.join("mitm.crt"))?.collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(dir.join("mitm.key"))?;
    Ok(rustls::ServerConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?)
}

/// The attacker's side towards the real server: any certificate will do.
fn trusting_client_config() -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
        .with_no_client_auth())
}

#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One victim connection: TLS with the client as the server, TLS with the server as a
/// client, plaintext relayed between them. A first message that is not an SSLRequest (a
/// client retrying without TLS) is relayed as it is.
fn intercept(
    mut client: TcpStream,
    upstream: SocketAddr,
    server_config: Arc<rustls::ServerConfig>,
    client_config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<()> {
    let mut first = [0u8; 8];
    client.read_exact(&mut first)?;
    let mut server = TcpStream::connect(upstream)?;
    if first != SSL_REQUEST {
        server.write_all(&first)?;
        return relay_plain(client, server);
    }
    client.write_all(b"S")?;
    server.write_all(&SSL_REQUEST)?;
    let mut answer = [0u8; 1];
    server.read_exact(&mut answer)?;
    anyhow::ensure!(answer == *b"S", "the real server refused TLS");
    let name = rustls_pki_types::ServerName::try_from("localhost")?.to_owned();
    let mut to_server =
        rustls::StreamOwned::new(rustls::ClientConnection::new(client_config, name)?, server);
    let mut to_client =
        rustls::StreamOwned::new(rustls::ServerConnection::new(server_config)?, client);
    // One thread, both directions: short read timeouts let it alternate.
    to_client.sock.set_read_timeout(Some(Duration::from_millis(5)))?;
    to_server.sock.set_read_timeout(Some(Duration::from_millis(5)))?;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let upstream_moved = pass_on(&mut to_client, &mut to_server, &mut buf)?;
        let downstream_moved = pass_on(&mut to_server, &mut to_client, &mut buf)?;
        match (upstream_moved, downstream_moved) {
            (Moved::Closed, _) | (_, Moved::Closed) => return Ok(()),
            (Moved::Nothing, Moved::Nothing) => thread::yield_now(),
            _ => {}
        }
    }
}

enum Moved {
    Bytes,
    Nothing,
    Closed,
}

/// Move what `from` has ready to `to` (a read timeout: nothing ready).
fn pass_on(from: &mut impl Read, to: &mut impl Write, buf: &mut [u8]) -> anyhow::Result<Moved> {
    match from.read(buf) {
        Ok(0) => Ok(Moved::Closed),
        Ok(n) => {
            to.write_all(&buf[..n])?;
            to.flush()?;
            Ok(Moved::Bytes)
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(Moved::Nothing)
        }
        Err(e) => Err(e.into()),
    }
}

/// Copy both ways until both sides are done.
fn relay_plain(mut client: TcpStream, mut server: TcpStream) -> anyhow::Result<()> {
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
