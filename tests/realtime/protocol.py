"""The WebSocket protocol end to end with the `websockets` client, against two `revo serve`
edges on one Postgres and NATS (run by tests/realtime.rs).

Usage: protocol.py EDGE_A_URL EDGE_B_URL ADMIN_PASSWORD

Every check asserts; the script exits non-zero on the first failure. Prints `ok <name>` per
scenario so the Rust test shows progress.
"""

import asyncio
import json
import os
import sys
import uuid

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

sys.path.insert(0, os.path.dirname(__file__))
from protocol_lib import Client, http, login, offsets, ws_url  # noqa: E402
import protocol_lib  # noqa: E402

A, B, ADMIN_PW = sys.argv[1], sys.argv[2], sys.argv[3]


async def main():
    admin = login(A, "admin", ADMIN_PW)
    alice_id, alice_pw = protocol_lib.make_user(A, admin, "alice", ["developer"])
    bob_id, bob_pw = protocol_lib.make_user(A, admin, "bob", ["developer"])
    carol_id, carol_pw = protocol_lib.make_user(A, admin, "carol", ["viewer"])
    mallory_id, mallory_pw = protocol_lib.make_user(A, admin, "mallory", ["developer"])
    alice = login(A, "alice", alice_pw)
    bob = login(B, "bob", bob_pw)
    carol = login(A, "carol", carol_pw)
    mallory = login(A, "mallory", mallory_pw)

    # A private room with bob as member and carol as viewer.
    s, room = http(A, "POST", "/rooms", alice, {"name": "general", "members": [
        {"user_id": bob_id, "role": "member"}, {"user_id": carol_id, "role": "viewer"}]})
    assert s == 201, (s, room)
    rid = room["id"]
    assert room["role"] == "owner" and room["offset"] == 3, room
    # Bad input over HTTP leaves nothing behind.
    for body in [{"name": ""}, {"name": "x", "visibility": "secret"}, {"name": "x", "extra": 1},
                 {"name": "x", "members": [{"user_id": str(uuid.uuid4()), "role": "member"}]},
                 {"name": "x", "members": [{"user_id": bob_id, "role": "king"}]}]:
        s, b = http(A, "POST", "/rooms", alice, body)
        assert s in (404, 422), (body, s, b)
    s, b = http(A, "GET", "/rooms", alice)
    assert [r["id"] for r in b["rooms"]] == [rid], b
    # A private room is invisible to outsiders, on either edge.
    for base in (A, B):
        s, _ = http(base, "GET", f"/rooms/{rid}", mallory)
        assert s == 404, s
        s, _ = http(base, "GET", f"/rooms/{rid}/events?after=0", mallory)
        assert s == 404, s
    # Only owners manage members; a member cannot invite or promote.
    s, b = http(B, "POST", f"/rooms/{rid}/members", bob, {"user_id": mallory_id, "role": "member"})
    assert (s, b["error"]["code"]) == (403, "forbidden"), (s, b)
    s, b = http(B, "PATCH", f"/rooms/{rid}/members/{bob_id}", bob, {"role": "owner"})
    assert (s, b["error"]["code"]) == (403, "forbidden"), (s, b)
    s, b = http(A, "DELETE", f"/rooms/{rid}/members/{alice_id}", alice)
    assert (s, b["error"]["code"]) == (409, "last_owner"), (s, b)
    print("ok rooms over HTTP", flush=True)

    # The path's user must be the caller; a bad credential is refused before the upgrade.
    try:
        await connect(ws_url(A, alice_id), additional_headers={"Authorization": f"Bearer {mallory}"})
        raise AssertionError("another user's socket was opened")
    except InvalidStatus as e:
        assert e.response.status_code == 403, e
    try:
        await connect(ws_url(A, alice_id), additional_headers={"Authorization": "Bearer nonsense"})
        raise AssertionError("a bad token opened a socket")
    except InvalidStatus as e:
        assert e.response.status_code == 401, e
    # Without a header, the first frame must authenticate.
    ws = await connect(ws_url(A, alice_id))
    await ws.send(json.dumps({"type": "ping"}))
    c = Client(ws)
    assert (await c.expect("error"))["code"] == "unauthorized"
    assert await c.close_code() == 4001
    ws = await connect(ws_url(A, alice_id))
    await ws.send(json.dumps({"type": "auth", "token": mallory}))
    c = Client(ws)
    assert (await c.expect("error"))["code"] == "forbidden"
    assert await c.close_code() == 4003
    print("ok authentication", flush=True)

    # Alice on edge A (header), bob on edge B (auth frame); both catch up from offset 0.
    a = await Client.open(A, alice_id, alice)
    b = await Client.open(B, bob_id, bob, header=False)
    missed, joined = await a.join(rid, after=0)
    assert [f["type"] for f in missed] == ["room.created", "member.joined", "member.joined"], missed
    assert offsets(missed) == [1, 2, 3] and joined["offset"] == 3 and joined["role"] == "owner"
    missed, joined = await b.join(rid, after=0)
    assert offsets(missed) == [1, 2, 3] and joined["role"] == "member", (missed, joined)
    print("ok join with history", flush=True)

    # Presence, merged across edges: alice sets away; bob (edge B) sees it.
    await a.send(type="presence.set", status="away")
    f = await b.expect("presence.update", where=lambda f: f["user_id"] == alice_id and f["status"] == "away")
    s, p = http(B, "GET", f"/rooms/{rid}/presence", bob)
    status = {m["user_id"]: m["status"] for m in p["members"]}
    assert status[alice_id] == "away" and status[bob_id] == "online" and status[carol_id] == "offline", status
    await a.send(type="presence.set", status="online")
    await b.expect("presence.update", where=lambda f: f["user_id"] == alice_id and f["status"] == "online")
    # Typing and cursors cross edges, and never come back to the sender.
    await a.send(type="typing.start", room=rid)
    t = await b.expect("typing.start")
    assert t["user_id"] == alice_id and t["room"] == rid, t
    await a.send(type="cursor.move", room=rid, doc="notes", position={"index": 4})
    t = await b.expect("cursor.move")
    assert t["position"] == {"index": 4} and t["user_id"] == alice_id, t
    assert not [f for f in await a.quiet(0.3) if f["type"] in ("typing.start", "cursor.move")]
    print("ok presence, typing and cursors across edges", flush=True)

    # Messages sent on A arrive on B in order; acks carry the offsets.
    acks = []
    for i in range(50):
        await a.send(type="message.send", room=rid, client_id=f"m{i}", text=f"hello {i}", id=i)
    for i in range(50):
        acks.append(await a.expect("message.ack", where=lambda f, i=i: f.get("id") == i))
    got = []
    while len(got) < 50:
        f = await b.expect("message.new")
        got.append(f)
    assert [f["text"] for f in got] == [f"hello {i}" for i in range(50)], got
    assert offsets(got) == [x["offset"] for x in acks] == list(range(4, 54)), offsets(got)
    # The same client id again: acknowledged as a duplicate, not posted twice.
    await a.send(type="message.send", room=rid, client_id="m0", text="hello 0")
    dup = await a.expect("message.ack")
    assert dup["duplicate"] is True and dup["offset"] == 4, dup
    assert not [f for f in await b.quiet(0.5) if f["type"] == "message.new"]
    print("ok ordered fan-out and idempotent sends", flush=True)

    # Edits and deletes: only the author edits; bob cannot touch alice's message.
    first = got[0]["message_id"]
    await b.send(type="message.edit", room=rid, message_id=first, text="pwned")
    assert (await b.expect("error"))["code"] == "forbidden"
    await a.send(type="message.edit", room=rid, message_id=first, text="hello, edited")
    e = await b.expect("message.edited")
    assert e["text"] == "hello, edited" and e["message_id"] == first, e
    await a.send(type="message.delete", room=rid, message_id=got[1]["message_id"])
    await b.expect("message.deleted")
    # A viewer reads but cannot write; an outsider cannot join.
    c = await Client.open(A, carol_id, carol)
    await c.join(rid)
    await c.send(type="message.send", room=rid, client_id="c1", text="hi")
    assert (await c.expect("error"))["code"] == "forbidden"
    await c.send(type="doc.update", room=rid, doc="notes", update="AAA=")
    assert (await c.expect("error"))["code"] in ("forbidden", "invalid_update")
    m = await Client.open(A, mallory_id, mallory)
    await m.send(type="room.join", room=rid)
    assert (await m.expect("error"))["code"] == "not_a_member"
    await m.send(type="message.send", room=rid, client_id="x", text="let me in")
    assert (await m.expect("error"))["code"] == "not_joined"
    await m.send(type="notify", user_id=alice_id, kind="alert", title="hi")
    assert (await m.expect("error"))["code"] == "forbidden"
    print("ok edits, deletes and roles", flush=True)

    # Notifications: to a room (every member connected) and to one user.
    await a.send(type="notify", room=rid, kind="announcement", title="standup", body="in 5")
    n = await b.expect("notify")
    assert n["kind"] == "announcement" and n["from"] == alice_id, n
    await b.send(type="notify", user_id=alice_id, kind="alert", title="ping")
    n = await a.expect("notify", where=lambda f: f["kind"] == "alert")
    assert n["from"] == bob_id, n
    print("ok notifications", flush=True)

    # Bad input gets an error frame and the connection stays up.
    await a.ws.send("{not json")
    assert (await a.expect("error"))["code"] == "invalid_json"
    await a.send(type="warp.drive")
    assert (await a.expect("error"))["code"] == "unknown_type"
    await a.send(type="room.join", room="not-a-uuid")
    assert (await a.expect("error"))["code"] == "invalid_frame"
    await a.send(type="message.send", room=rid, client_id="big", text="x" * 300_000)
    assert (await a.expect("error"))["code"] == "frame_too_large"
    await a.send(type="message.send", room=rid, client_id="big", text="x" * 20_000)
    assert (await a.expect("error"))["code"] == "invalid_frame"
    await a.send(type="ping", id="still-there")
    assert (await a.expect("pong"))["id"] == "still-there"
    print("ok bad input keeps the connection", flush=True)

    # Recovery: bob drops, misses 20 (and 600 more, past the room's memory), reconnects to
    # the OTHER edge with his last offset, and gets exactly what he missed, in order.
    last = got[-1]["offset"]
    for f in await b.quiet(0.5):
        if "offset" in f:
            last = max(last, f["offset"])
    await b.ws.close()
    for i in range(20):
        await a.send(type="message.send", room=rid, client_id=f"r{i}", text=f"missed {i}")
        await a.expect("message.ack")
        await asyncio.sleep(0.0125)
    b = await Client.open(A, bob_id, login(A, "bob", bob_pw))
    missed, joined = await b.join(rid, after=last)
    texts = [f["text"] for f in missed if f["type"] == "message.new"]
    assert texts == [f"missed {i}" for i in range(20)], texts
    assert offsets(missed) == list(range(last + 1, joined["offset"] + 1)), (offsets(missed), joined)
    last = joined["offset"]
    await b.ws.close()
    for i in range(600):
        await a.send(type="message.send", room=rid, client_id=f"s{i}", text=f"far {i}")
        await a.expect("message.ack")
        # Under the connection's 100 frames/s (on a fast store the acks come sooner).
        await asyncio.sleep(0.0125)
    b = await Client.open(B, bob_id, bob)
    missed, joined = await b.join(rid, after=last)
    assert [f["text"] for f in missed] == [f"far {i}" for i in range(600)], len(missed)
    assert offsets(missed) == list(range(last + 1, last + 601)) and joined["offset"] == last + 600
    # HTTP history agrees, page by page.
    s, page = http(B, "GET", f"/rooms/{rid}/events?after={last}&limit=1000", bob)
    assert [e["offset"] for e in page["events"]] == list(range(last + 1, last + 601)), page["next_after"]
    assert page["more"] is False
    print("ok recovery by offset on the other edge", flush=True)

    # Removal ends bob's subscription at once, on his edge.
    s, _ = http(A, "DELETE", f"/rooms/{rid}/members/{bob_id}", alice)
    assert s == 204, s
    left = await b.expect("room.left")
    assert left["reason"] == "removed", left
    await b.send(type="message.send", room=rid, client_id="after", text="still here?")
    assert (await b.expect("error"))["code"] == "not_joined"
    await b.send(type="room.join", room=rid)
    assert (await b.expect("error"))["code"] == "not_a_member"
    print("ok removal", flush=True)

    # A flood is throttled, then closed with 4029.
    f = await Client.open(A, mallory_id, mallory)
    for _ in range(2000):
        try:
            await f.ws.send('{"type":"ping"}')
        except ConnectionClosed:
            break
    assert await f.close_code() == 4029
    print("ok flood", flush=True)

    # Logging out (revoking the token) closes its sockets.
    s, _ = http(B, "POST", "/auth/logout", bob)
    assert s in (200, 204), s
    assert await b.close_code(timeout=20) == 4001
    print("ok revoked token closes its socket", flush=True)
    for x in (a, c, m):
        await x.ws.close()


asyncio.run(main())
