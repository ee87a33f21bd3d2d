//! Hand-written pgwire clients for what real drivers never do: byte-by-byte startups,
//! oversized or truncated packets, garbage, TCP Fast Open. Each returns enough to find its
//! own finding (the local port) and checks nothing itself.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::{AsRawFd, FromRawFd},
    thread,
    time::Duration,
};

use anyhow::{bail, Context};

pub use sensor_common::test_util::startup_message;

pub const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Connect with Nagle off, so every write is its own segment.
pub fn connect_nodelay(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// Write `bytes` in pieces of `piece` bytes with a pause between (one segment each).
pub fn send_in_pieces(s: &mut TcpStream, bytes: &[u8], piece: usize) -> anyhow::Result<()> {
    for chunk in bytes.chunks(piece) {
        s.write_all(chunk)?;
        thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Read the server's first reply byte (e.g. `R`, `E`, `N`), if any comes.
pub fn first_reply(s: &mut TcpStream) -> Option<u8> {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(1) => Some(b[0]),
        _ => None,
    }
}

/// Send `data` in the SYN with TCP Fast Open (`sendto(MSG_FASTOPEN)`), IPv4 only.
/// Needs net.ipv4.tcp_fastopen with the client bits set (see `FastOpenSysctl`).
pub fn fast_open_send(addr: SocketAddr, data: &[u8]) -> anyhow::Result<TcpStream> {
    let SocketAddr::V4(v4) = addr else { bail!("fast_open_send takes an IPv4 address") };
    // SAFETY: plain socket syscalls on a fresh fd that is handed to TcpStream at the end.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        anyhow::ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
            sin_zero: [0; 8],
        };
        let sent = libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_FASTOPEN,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        let stream = TcpStream::from_raw_fd(fd);
        anyhow::ensure!(sent >= 0, "sendto(MSG_FASTOPEN): {}", std::io::Error::last_os_error());
        anyhow::ensure!(sent as usize == data.len(), "short fast open send");
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let _ = stream.as_raw_fd();
        Ok(stream)
    }
}

/// Sets net.ipv4.tcp_fastopen for the test and restores it on drop.
pub struct FastOpenSysctl {
    previous: String,
}

const TFO_SYSCTL: &str = "/proc/sys/net/ipv4/tcp_fastopen";

impl FastOpenSysctl {
    /// 0x1 client on, 0x4 send data in the SYN even without a cookie from the server.
    pub fn client_without_cookie() -> anyhow::Result<Self> {
        let previous = std::fs::read_to_string(TFO_SYSCTL)?.trim().to_string();
        std::fs::write(TFO_SYSCTL, "5")?;
        Ok(FastOpenSysctl { previous })
    }
}

impl Drop for FastOpenSysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(TFO_SYSCTL, &self.previous);
    }
}
