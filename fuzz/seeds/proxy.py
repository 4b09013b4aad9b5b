#!/usr/bin/env python3
"""A UDP proxy that records CoAP traffic between libcoap clients and the gateway.

    proxy.py LISTEN_PORT GATEWAY_PORT LOG

Every client address gets its own upstream socket, so the gateway sees distinct peers. Each
datagram is appended to LOG as one line: `c2s|s2c CLIENT_INDEX HEX`. Stops on SIGTERM.
"""
import selectors
import signal
import socket
import sys

listen_port, gateway_port, log_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
gateway = ("127.0.0.1", gateway_port)
front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
front.bind(("127.0.0.1", listen_port))
sel = selectors.DefaultSelector()
sel.register(front, selectors.EVENT_READ, None)
upstreams = {}  # client address -> (socket, index)
log = open(log_path, "a", buffering=1)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

while True:
    for key, _ in sel.select():
        if key.data is None:
            data, client = front.recvfrom(65535)
            if client not in upstreams:
                up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                up.bind(("127.0.0.1", 0))
                upstreams[client] = (up, len(upstreams))
                sel.register(up, selectors.EVENT_READ, client)
            up, index = upstreams[client]
            log.write(f"c2s {index} {data.hex()}\n")
            up.sendto(data, gateway)
        else:
            client = key.data
            up, index = upstreams[client]
            data, _ = up.recvfrom(65535)
            log.write(f"s2c {index} {data.hex()}\n")
            front.sendto(data, client)
