"""Exits 0 when a MongoDB server on 127.0.0.1:PORT answers `hello` (OP_MSG over a raw socket,
standard library only, so it needs no driver). Used by scripts/lib/deps.sh."""

import socket
import struct
import sys


def bson_doc(items):
    body = b""
    for key, value in items:
        k = key.encode() + b"\x00"
        if isinstance(value, int):
            body += b"\x10" + k + struct.pack("<i", value)
        else:
            s = value.encode() + b"\x00"
            body += b"\x02" + k + struct.pack("<i", len(s)) + s
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data


doc = bson_doc([("hello", 1), ("$db", "admin")])
msg = struct.pack("<I", 0) + b"\x00" + doc  # flagBits, section kind 0
header = struct.pack("<iiii", 16 + len(msg), 1, 0, 2013)  # OP_MSG
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3) as s:
    s.sendall(header + msg)
    length, _, _, opcode = struct.unpack("<iiii", recv_exact(s, 16))
    reply = recv_exact(s, length - 16)
if opcode != 2013:
    sys.exit("unexpected opcode %d" % opcode)
# reply: flagBits(4) kind(1) document; look for ok: 1 (double or int32).
body = reply[5:]
if b"\x01ok\x00" + struct.pack("<d", 1.0) not in body and b"\x10ok\x00" + struct.pack("<i", 1) not in body:
    sys.exit("hello did not answer ok: 1")
