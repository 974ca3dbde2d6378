#!/usr/bin/env python3
"""End-to-end check of a deployed relay, with nothing but Python 3.

    deploy/smoke.py ws://127.0.0.1:8080          # plain, or through a proxy
    deploy/smoke.py wss://relay.example.com      # TLS, checked against the system CAs
    deploy/smoke.py wss://127.0.0.1:8443 --cafile cert.pem
    deploy/smoke.py wss://relay.example.com:8443 --connect 127.0.0.1 --cafile root.pem

It connects a binary (/v1/server) and a phone (/v1/client) under a fresh
server-id, sends one message each way and checks that the relay forwarded
the bytes exactly (SPEC §5), then closes both. Exit 0 and one line "ok ..."
on success; exit 1 with the reason otherwise. It sends no token, user name
or device name of any real user.
"""

import argparse
import base64
import json
import os
import socket
import ssl
import struct
import sys
import urllib.parse

TIMEOUT = 10


class WebSocket:
    """A minimal RFC 6455 client: masked text frames out, pings answered."""

    def __init__(self, url, path, headers, cafile, connect=None):
        parts = urllib.parse.urlsplit(url)
        secure = parts.scheme == "wss"
        port = parts.port or (443 if secure else 80)
        address = connect or parts.hostname
        sock = socket.create_connection((address, port), timeout=TIMEOUT)
        if secure:
            context = ssl.create_default_context(cafile=cafile)
            sock = context.wrap_socket(sock, server_hostname=parts.hostname)
        self.sock = sock
        self.buf = b""
        key = base64.b64encode(os.urandom(16)).decode()
        host = parts.netloc
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ] + [f"{name}: {value}" for name, value in headers]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = self._read_until(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        if status != b"101":
            raise SystemExit(f"{path}: expected 101, got {head.decode(errors='replace').splitlines()[0]}")

    def _read_until(self, marker):
        while marker not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SystemExit("connection closed by the relay")
            self.buf += chunk
        head, self.buf = self.buf.split(marker, 1)
        return head

    def _read_exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SystemExit("connection closed by the relay")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def send(self, opcode, payload):
        mask = os.urandom(4)
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def recv(self):
        """The next data or close frame: (opcode, payload). Pings are answered."""
        while True:
            first, second = self._read_exact(2)
            opcode, n = first & 0x0F, second & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read_exact(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read_exact(8))[0]
            payload = self._read_exact(n)
            if opcode == 0x9:
                self.send(0xA, payload)
            elif opcode != 0xA:
                return opcode, payload

    def close(self):
        self.send(0x8, struct.pack("!H", 1000))
        self.sock.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="ws://HOST:PORT or wss://HOST[:PORT]")
    parser.add_argument("--cafile", help="PEM CA to trust for wss:// (e.g. a self-signed cert)")
    parser.add_argument(
        "--connect",
        metavar="ADDRESS",
        help="connect to this address instead of the URL's host (which stays the SNI and Host)",
    )
    args = parser.parse_args()

    server_id = "smoke-" + os.urandom(6).hex()
    binary = WebSocket(args.url, "/v1/server", [
        ("X-Pyrycode-Server", server_id),
        ("X-Pyrycode-Version", "smoke"),
        ("User-Agent", "pyrycode-relay-smoke"),
    ], args.cafile, args.connect)
    phone = WebSocket(args.url, "/v1/client", [
        ("X-Pyrycode-Server", server_id),
        ("X-Pyrycode-Token", "smoke"),
        ("User-Agent", "pyrycode-relay-smoke"),
    ], args.cafile, args.connect)

    up = b'{"type":"smoke","n":[1.50, -0],"s":"\\u00e9"}'
    phone.send(0x1, up)
    opcode, wrapped = binary.recv()
    envelope = json.loads(wrapped)
    conn_id = envelope["conn_id"]
    expected = b'{"conn_id":' + json.dumps(conn_id).encode() + b',"frame":' + up + b"}"
    if opcode != 0x1 or wrapped != expected:
        raise SystemExit(f"binary got {wrapped!r}, expected {expected!r}")

    down = b'{ "type" : "smoke-reply" }'
    binary.send(0x1, b'{"conn_id":' + json.dumps(conn_id).encode() + b',"frame":' + down + b"}")
    opcode, payload = phone.recv()
    if opcode != 0x1 or payload != down:
        raise SystemExit(f"phone got {payload!r}, expected {down!r}")

    phone.close()
    binary.close()
    print(f"ok {args.url} server_id={server_id} conn_id={conn_id}: both directions byte-exact")


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError, KeyError) as err:
        raise SystemExit(f"smoke: {err}")
