//! A minimal pgwire server for benchmarks: answers SSLRequest with `N` or `S` (by port),
//! reads the client's next message, answers AuthenticationOk and closes; a sink port reads
//! everything (bulk throughput); an echo port sends back each block it reads (round trips on
//! persistent connections). Threads, std only: the cost measured must be the sensor's.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    thread,
};

use super::loadgen::ECHO_BLOCK;

#[derive(Clone, Copy)]
pub enum Answer {
    /// "no TLS": the client goes on in plaintext (a downgrade).
    No,
    /// "TLS follows": the client sends a ClientHello; the server just reads and closes.
    Yes,
}

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
const AUTH_OK: [u8; 9] = [b'R', 0, 0, 0, 8, 0, 0, 0, 0];

pub fn spawn_pgwire(addr: &str, answer: Answer) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)?;
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let _ = serve(stream, answer);
            });
        }
    });
    Ok(())
}

fn read_message(s: &mut TcpStream, first8: &[u8; 8]) -> std::io::Result<()> {
    let len = u32::from_be_bytes([first8[0], first8[1], first8[2], first8[3]]) as usize;
    let mut rest = vec![0u8; len.saturating_sub(8).min(10_000)];
    s.read_exact(&mut rest)
}

fn serve(mut s: TcpStream, answer: Answer) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut first = [0u8; 8];
    s.read_exact(&mut first)?;
    if first == SSL_REQUEST {
        match answer {
            Answer::Yes => {
                s.write_all(b"S")?;
                let mut hello = [0u8; 512];
                let _ = s.read(&mut hello)?;
                return Ok(());
            }
            Answer::No => {
                s.write_all(b"N")?;
                s.read_exact(&mut first)?;
            }
        }
    }
    read_message(&mut s, &first)?;
    s.write_all(&AUTH_OK)?;
    Ok(())
}

/// A server that asks for the password in clear (AuthenticationCleartextPassword), reads
/// the client's PasswordMessage and accepts it: the auth exchange the sensor follows.
pub fn spawn_password(addr: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)?;
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let _ = ask_password(stream);
            });
        }
    });
    Ok(())
}

fn ask_password(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut first = [0u8; 8];
    s.read_exact(&mut first)?;
    read_message(&mut s, &first)?;
    s.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3])?;
    let mut head = [0u8; 5];
    s.read_exact(&mut head)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut password = vec![0u8; len.saturating_sub(4).min(1000)];
    s.read_exact(&mut password)?;
    s.write_all(&AUTH_OK)?;
    Ok(())
}

pub fn spawn_sink(addr: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)?;
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut s = stream;
                let _ = std::io::copy(&mut s, &mut std::io::sink());
            });
        }
    });
    Ok(())
}

/// An echo server for the round-trip workloads: each block of [`ECHO_BLOCK`] bytes read is
/// sent back. With `startup`, a plaintext StartupMessage is read and answered with
/// AuthenticationOk first, so that on a watched port the session's verdict is decided
/// before the round trips.
pub fn spawn_echo(addr: &str, startup: bool) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)?;
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let _ = echo(stream, startup);
            });
        }
    });
    Ok(())
}

/// Ends with the client's close (an UnexpectedEof error).
fn echo(mut s: TcpStream, startup: bool) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    if startup {
        let mut first = [0u8; 8];
        s.read_exact(&mut first)?;
        read_message(&mut s, &first)?;
        s.write_all(&AUTH_OK)?;
    }
    let mut block = [0u8; ECHO_BLOCK];
    loop {
        s.read_exact(&mut block)?;
        s.write_all(&block)?;
    }
}
