#!/usr/bin/env python3
"""Turns the logs of proxy.py into seed corpora.

    make_corpus.py LOG_DIR CORPUS_DIR

- coap_message/: every distinct datagram seen, either direction, one file each.
- endpoint/: one file per scenario in the framing of `sluice::fuzzing::endpoint`: the client's
  datagrams in order, each followed by the app's answer the gateway gave (its code, payload
  length and Observe), so the endpoint sees the conversation libcoap had with the gateway.
"""
import hashlib
import os
import sys

log_dir, corpus = sys.argv[1], sys.argv[2]


def options(data):
    """(number, value) of each option of a CoAP datagram, and the payload; best effort."""
    tkl = data[0] & 0x0F
    i, number, out = 4 + tkl, 0, []
    while i < len(data) and data[i] != 0xFF:
        delta, length = data[i] >> 4, data[i] & 0x0F
        i += 1
        ext = []
        for nibble in (delta, length):
            if nibble == 13:
                ext.append(data[i] + 13)
                i += 1
            elif nibble == 14:
                ext.append((data[i] << 8 | data[i + 1]) + 269)
                i += 2
            else:
                ext.append(nibble)
        number += ext[0]
        out.append((number, data[i : i + ext[1]]))
        i += ext[1]
    payload = data[i + 1 :] if i < len(data) else b""
    return out, payload


def write(folder, data, name=None):
    os.makedirs(folder, exist_ok=True)
    name = name or hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


for log in sorted(os.listdir(log_dir)):
    lines = [l.split() for l in open(os.path.join(log_dir, log)) if l.strip()]
    frames = bytearray([0])  # config selector 0: the default block size
    for i, (direction, client, hexdata) in enumerate(lines):
        data = bytes.fromhex(hexdata)
        write(os.path.join(corpus, "coap_message"), data)
        if direction != "c2s":
            continue
        frames += bytes([0, int(client) % 256, len(data) >> 8, len(data) & 0xFF]) + data
        # The gateway's answer to it, if any: the next non-empty datagram to that client.
        for d2, c2, h2 in lines[i + 1 :]:
            answer = bytes.fromhex(h2)
            if d2 == "s2c" and c2 == client and len(answer) > 4 and answer[1] != 0:
                opts, payload = options(answer)
                observe = any(n == 6 for n, _ in opts)
                frames += bytes([2, 1 if observe else 0, answer[1], min(255, (len(payload) + 15) // 16)])
                if observe:
                    # A notification for the new relation, as the broker would cause.
                    frames += bytes([3, 0, 2, 1])
                break
    write(os.path.join(corpus, "endpoint"), bytes(frames), log)
    sent = sum(1 for d, _, _ in lines if d == "c2s")
    print(f"{log}: {sent} datagrams from the client, {len(lines) - sent} from the gateway")
