#!/usr/bin/env python3
"""Relay memory per idle TLS WebSocket connection: RSS growth per phone.

    bench/tls_idle.py [--relay target/release/pyrycode-relay] [--phones 10000]
                      [--plain] [--proxy] [--hold 1]

Starts the relay with a fresh ECDSA P-256 certificate on a TLS listener
(`--plain`: a plain one, to compare with `relay-bench idle`; `--proxy`: a
PROXY v2 header before TLS), then opens phones/16 binaries and the phones
over TLS 1.3, each a full handshake and a WebSocket upgrade, holds them,
and reads the relay's VmRSS before and after, as `relay-bench idle` does:
bytes per phone = (RSS with every connection - RSS before) / phones. The
client is this script (Python's ssl); only the relay's memory is measured.
"""

import argparse
import os
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time

PHONES_PER_BINARY = 16


def rss(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise SystemExit("no VmRSS")


def proxy_header(source_port):
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    addresses = bytes([203, 0, 113, 7, 127, 0, 0, 1]) + struct.pack("!HH", source_port, 443)
    return signature + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


def upgrade(sock, path, headers):
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: relay.test",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ] + [f"{name}: {value}" for name, value in headers]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit(f"{path}: closed before the 101")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit(f"{path}: {head.splitlines()[0]!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relay", default="target/release/pyrycode-relay")
    parser.add_argument("--phones", type=int, default=10000)
    parser.add_argument("--hold", type=float, default=1.0)
    parser.add_argument("--plain", action="store_true")
    parser.add_argument("--proxy", action="store_true")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="tls-idle-")
    cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=relay.test",
         "-addext", "subjectAltName=DNS:relay.test"],
        check=True, capture_output=True)
    binaries = -(-args.phones // PHONES_PER_BINARY)
    total = args.phones + binaries
    limits = ["--max-connections", str(total + 100), "--max-connections-per-ip", str(total + 100),
              "--rate-limit-burst", "1000000", "--metrics-listen", "", "--log-level", "warn"]
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    address = f"127.0.0.1:{port}"
    if args.plain:
        listen = ["--insecure-listen", address] + (["--proxy-protocol"] if args.proxy else [])
    else:
        listen = ["--tls-cert", cert, "--tls-key", key, "--https-listen", address]
        listen += ["--https-proxy-protocol"] if args.proxy else []
    relay = subprocess.Popen([args.relay] + listen + limits)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        raise SystemExit("the relay did not start")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(["http/1.1"])

    def connect(n):
        sock = socket.create_connection(("127.0.0.1", port))
        if args.proxy:
            sock.sendall(proxy_header(n % 65536))
        if not args.plain:
            sock = context.wrap_socket(sock, server_hostname="relay.test")
        return sock

    time.sleep(0.5)
    before = rss(relay.pid)
    held = []
    started = time.monotonic()
    for b in range(binaries):
        server_id = f"idle-{b}"
        sock = connect(len(held))
        upgrade(sock, "/v1/server", [("X-Pyrycode-Server", server_id),
                                     ("X-Pyrycode-Version", "1"), ("User-Agent", "bench")])
        held.append(sock)
        for _ in range(min(PHONES_PER_BINARY, args.phones - b * PHONES_PER_BINARY)):
            sock = connect(len(held))
            upgrade(sock, "/v1/client", [("X-Pyrycode-Server", server_id),
                                         ("X-Pyrycode-Token", "t"), ("User-Agent", "bench")])
            held.append(sock)
    elapsed = time.monotonic() - started
    time.sleep(args.hold)
    after = rss(relay.pid)
    kind = ("plain" if args.plain else "tls") + ("+proxy" if args.proxy else "")
    print(f"{kind}: {args.phones} phones, {binaries} binaries in {elapsed:.1f} s; "
          f"RSS {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB; "
          f"{(after - before) / args.phones:.0f} B per phone, "
          f"{(after - before) / total:.0f} B per connection")
    for sock in held:
        sock.close()
    relay.terminate()
    relay.wait()


if __name__ == "__main__":
    sys.exit(main())
