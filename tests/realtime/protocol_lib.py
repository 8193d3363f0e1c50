"""Helpers of the WebSocket tests: HTTP calls, users, and a client with a frame inbox."""

import asyncio
import json
import time
import urllib.error
import urllib.request

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

def http(base, method, path, token=None, body=None):
    req = urllib.request.Request(base + path, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, data, timeout=30) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, (json.loads(raw) if raw else None)


def login(base, user, pw):
    s, b = http(base, "POST", "/auth/login", body={"username": user, "password": pw})
    assert s == 200, (s, b)
    return b["access_token"]


def make_user(base, admin, name, roles):
    pw = f"{name}-password-123"
    s, b = http(base, "POST", "/users", admin, {"username": name, "password": pw, "roles": roles})
    assert s == 201, (s, b)
    return b["id"], pw


def ws_url(base, user_id):
    return base.replace("http://", "ws://") + f"/ws/{user_id}"


class Client:
    """A connection with a frame inbox, so tests can wait for a frame of a type."""

    def __init__(self, ws):
        self.ws = ws
        self.frames = []

    @classmethod
    async def open(cls, base, user_id, token, header=True):
        if header:
            ws = await connect(ws_url(base, user_id),
                               additional_headers={"Authorization": f"Bearer {token}"},
                               max_size=None)
        else:
            ws = await connect(ws_url(base, user_id), max_size=None)
            await ws.send(json.dumps({"type": "auth", "token": token}))
        c = cls(ws)
        welcome = await c.expect("welcome")
        assert welcome["user_id"] == user_id, welcome
        return c

    async def send(self, **frame):
        await self.ws.send(json.dumps(frame))

    async def next(self, timeout=10):
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        f = json.loads(raw)
        self.frames.append(f)
        return f

    async def expect(self, kind, timeout=10, where=lambda f: True):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no `{kind}` frame within {timeout}s; saw {[f['type'] for f in self.frames[-10:]]}"
            f = await self.next(left)
            if f["type"] == kind and where(f):
                return f

    async def quiet(self, seconds=0.5, ignore=("presence.update", "typing.start", "typing.stop")):
        """Frames that arrive within `seconds` (except the ignored types)."""
        got = []
        try:
            while True:
                f = await self.next(seconds)
                if f["type"] not in ignore:
                    got.append(f)
        except asyncio.TimeoutError:
            return got

    async def join(self, room, after=None):
        """Joins; returns the room events delivered before `room.joined`, and that frame."""
        frame = {"type": "room.join", "room": room}
        if after is not None:
            frame["after"] = after
        await self.send(**frame)
        missed = []
        while True:
            f = await self.next(30)
            if f["type"] == "room.joined" and f["room"] == room:
                return missed, f
            if f["type"] == "error":
                raise AssertionError(f"join refused: {f}")
            if f.get("room") == room and "offset" in f:
                missed.append(f)

    async def close_code(self, timeout=15):
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout)
        except ConnectionClosed as e:
            return e.rcvd.code if e.rcvd else None


def offsets(frames):
    return [f["offset"] for f in frames]
