"""Real TLS handshakes through the system's OpenSSL (Python's ssl module), for
`cargo xtask bench`: what the sensor's uprobes on OpenSSL add to each TLS connection.

  tls_handshakes.py server ADDR PORT CERT KEY     serve until killed: SSLRequest -> S -> TLS
  tls_handshakes.py client ADDR PORT CA SECONDS THREADS
      handshake as fast as possible, verifying the server (cafile=CA, host name checked),
      then send one byte and close; prints {"sessions": N, "errors": M, "seconds": S}

Both ends use OpenSSL, as a local client of a local server would: the cost measured is
the sensor's on both.
"""
import json
import socket
import ssl
import sys
import threading
import time

SSL_REQUEST = bytes([0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F])


def serve(addr, port, cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    listener = socket.create_server((addr, int(port)), backlog=1024)
    print("ready", flush=True)

    def one(conn):
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if conn.recv(8, socket.MSG_WAITALL) != SSL_REQUEST:
                return
            conn.sendall(b"S")
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=one, args=(conn,), daemon=True).start()


def load(addr, port, ca, seconds, threads):
    ctx = ssl.create_default_context(cafile=ca)
    deadline = time.monotonic() + float(seconds)
    counts = {"sessions": 0, "errors": 0}
    lock = threading.Lock()

    def worker():
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((addr, int(port))) as raw:
                    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    raw.sendall(SSL_REQUEST)
                    if raw.recv(1) != b"S":
                        raise OSError("no S")
                    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                        tls.sendall(b"x")
                key = "sessions"
            except (OSError, ssl.SSLError):
                key = "errors"
            with lock:
                counts[key] += 1

    started = time.monotonic()
    workers = [threading.Thread(target=worker) for _ in range(int(threads))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    counts["seconds"] = time.monotonic() - started
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(*sys.argv[2:6])
    else:
        load(*sys.argv[2:7])
