#!/usr/bin/env python3
"""Consume Revo's committed events from NATS JetStream and print them as JSON lines.

    pip install -r examples/python/requirements.txt
    python3 examples/python/subscriber.py --url nats://127.0.0.1:4222

Each message on `<prefix>.evt.<stream_type>.<stream_id>` is one MessagePack map: the envelope,
with the event itself under "payload" (see docs/events.md). Delivery is at least once, so a
subscriber keeps the ids it has seen and skips repeats.
"""

import argparse
import asyncio
import json
import sys

import msgpack
import nats
from nats.js.api import DeliverPolicy


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="nats://127.0.0.1:4222")
    ap.add_argument("--prefix", default="revo", help="subject prefix: revo.evt.> and stream REVO_EVENTS")
    ap.add_argument("--stream-type", help="only this stream type, e.g. node")
    ap.add_argument("--count", type=int, default=0, help="exit after this many events (0: run forever)")
    ap.add_argument("--timeout", type=float, default=0, help="give up after this many seconds (0: never)")
    args = ap.parse_args()

    subject = f"{args.prefix}.evt.{args.stream_type}.*" if args.stream_type else f"{args.prefix}.evt.>"
    nc = await nats.connect(args.url)
    js = nc.jetstream()
    # An ordered consumer replays the stream from its first message, then follows it live.
    sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)

    seen = set()
    printed = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout if args.timeout else None
    try:
        while not args.count or printed < args.count:
            wait = None if deadline is None else max(deadline - loop.time(), 0.001)
            try:
                msg = await sub.next_msg(timeout=wait)
            except nats.errors.TimeoutError:
                print(f"timed out after {printed} events", file=sys.stderr)
                return 1
            envelope = msgpack.unpackb(msg.data, raw=False)
            if envelope["event_id"] in seen:
                continue
            seen.add(envelope["event_id"])
            print(json.dumps(envelope, default=repr), flush=True)
            printed += 1
    finally:
        await nc.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
