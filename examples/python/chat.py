"""A terminal client for Revo's rooms: chat, presence, typing, and one shared Yjs document.

    pip install -r examples/python/requirements.txt
    python3 examples/python/chat.py --url http://localhost:8080 --username dana \
        --password a-long-password --room ROOM_ID

Type a line to send it. `/away`, `/busy`, `/online` set your presence; `/edit TEXT` appends
TEXT to the room's document `notes` (a Yjs text, edited through pycrdt); `/doc` prints it;
`/quit` leaves. The last offset seen is kept in ~/.cache/revo/chat-<room>-<user>.offset, so a
client started again (on any edge: pass another `--url`) receives exactly what it missed.

For scripts and tests: `--say TEXT` and `--edit TEXT` (repeatable) send and edit without a
terminal, `--delay SECONDS` waits before them, and `--for SECONDS` says how long to stay
connected afterwards.
"""

import argparse
import asyncio
import base64
import json
import os
import random
import sys
import urllib.request
import uuid

from pycrdt import Doc, Text
from websockets.asyncio.client import connect


def login(url, username, password):
    req = urllib.request.Request(
        url + "/auth/login", method="POST",
        data=json.dumps({"username": username, "password": password}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        token = json.load(r)["access_token"]
    req = urllib.request.Request(url + "/users/me", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return token, json.load(r)["user"]["id"]


class Chat:
    def __init__(self, args, user_id):
        self.args, self.me, self.room = args, user_id, args.room
        cache = os.path.join(os.path.expanduser("~"), ".cache", "revo")
        os.makedirs(cache, exist_ok=True)
        self.offset_file = os.path.join(cache, f"chat-{self.room}-{user_id}.offset")
        self.offset = int(open(self.offset_file).read()) if os.path.exists(self.offset_file) else 0
        # Yjs client ids are 32-bit (what the wire format carries); pycrdt's default is wider.
        self.doc = Doc(client_id=random.getrandbits(32))
        self.text = self.doc.get("notes", type=Text)
        self.names = {}
        self.ws = None
        self.joined = asyncio.Event()

    def seen(self, offset):
        if offset > self.offset:
            self.offset = offset
            with open(self.offset_file, "w") as f:
                f.write(str(offset))

    def show(self, line):
        print(line, flush=True)

    def on_frame(self, f):
        t = f["type"]
        who = f.get("user_id", "")[-6:]
        if "offset" in f:
            self.seen(f["offset"])
        if t == "message.new":
            self.show(f"[{f['offset']}] {who}: {f['text']}")
        elif t == "message.edited":
            self.show(f"[{f['offset']}] {who} edited: {f['text']}")
        elif t == "presence.update":
            self.show(f"* {who} is {f['status']}")
        elif t in ("typing.start", "typing.stop"):
            self.show(f"* {who} {'is typing' if t == 'typing.start' else 'stopped typing'}")
        elif t in ("member.joined", "member.left"):
            self.show(f"* {who} {'joined' if t == 'member.joined' else 'left'}")
        elif t == "doc.sync" or (t == "doc.update" and f.get("doc") == "notes"):
            self.doc.apply_update(base64.b64decode(f["update"]))
            if t == "doc.update":
                self.show(f"doc notes: {self.text}")
        elif t == "room.joined":
            self.joined.set()
            self.show(f"joined {f.get('name')} as {f['role']} at offset {f['offset']}")
        elif t == "error":
            self.show(f"! {f['code']}: {f['message']}")

    async def send(self, **frame):
        await self.ws.send(json.dumps(frame))

    async def edit(self, words):
        before = self.doc.get_state()
        self.text += words
        update = self.doc.get_update(before)
        await self.send(type="doc.update", room=self.room, doc="notes",
                        update=base64.b64encode(update).decode())

    async def command(self, line):
        if line in ("/away", "/busy", "/online"):
            await self.send(type="presence.set", status=line[1:])
        elif line.startswith("/edit "):
            await self.edit(line[len("/edit "):])
        elif line == "/doc":
            self.show(f"doc notes: {self.text}")
        elif line:
            await self.send(type="typing.start", room=self.room)
            await self.send(type="message.send", room=self.room, client_id=str(uuid.uuid4()), text=line)
            await self.send(type="typing.stop", room=self.room)

    async def run(self, token):
        url = self.args.url.replace("http://", "ws://").replace("https://", "wss://") + f"/ws/{self.me}"
        async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            self.ws = ws
            await self.send(type="room.join", room=self.room, after=self.offset)
            await self.send(type="doc.open", room=self.room, doc="notes")
            reader = asyncio.create_task(self.read())
            await asyncio.wait_for(self.joined.wait(), 30)
            if self.args.say or self.args.edit or self.args.stay is not None:
                await asyncio.sleep(self.args.delay)
                for s in self.args.say:
                    await self.command(s)
                for e in self.args.edit:
                    await self.edit(e)
                await asyncio.sleep(self.args.stay if self.args.stay is not None else 3.0)
            else:
                loop = asyncio.get_running_loop()
                while True:
                    raw = await loop.run_in_executor(None, sys.stdin.readline)
                    line = raw.rstrip("\n")
                    if line == "/quit" or not raw:  # `/quit` or end of input
                        break
                    await self.command(line)
            reader.cancel()

    async def read(self):
        async for raw in self.ws:
            self.on_frame(json.loads(raw))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default="http://localhost:8080")
    p.add_argument("--username", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--room", required=True)
    p.add_argument("--say", action="append", default=[])
    p.add_argument("--edit", action="append", default=[])
    p.add_argument("--for", dest="stay", type=float, default=None)
    p.add_argument("--delay", type=float, default=0.5, help="seconds to wait before --say/--edit")
    args = p.parse_args()
    token, user_id = login(args.url, args.username, args.password)
    asyncio.run(Chat(args, user_id).run(token))


if __name__ == "__main__":
    main()
