"""Generation progress over the WebSocket: a session subscribed to `generation` sees its own
user's routed requests start, stream and complete; another user's session sees none of it
(run by tests/realtime.rs against a stub provider).

Usage: generation.py URL ADMIN_PASSWORD EXPECTED_TEXT
"""

import asyncio
import json
import os
import sys
import threading
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import protocol_lib as p  # noqa: E402

URL, ADMIN_PW, TEXT = sys.argv[1], sys.argv[2], sys.argv[3]


def generate(token, out):
    req = urllib.request.Request(
        URL + "/ai/generate", method="POST",
        data=json.dumps({"prompt": "hello", "max_tokens": 64, "stream": True}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        out.append(r.read().decode())


async def main():
    admin = p.login(URL, "admin", ADMIN_PW)
    dev_id, dev_pw = p.make_user(URL, admin, "gdev", ["developer"])
    other_id, other_pw = p.make_user(URL, admin, "gother", ["developer"])
    dev = p.login(URL, "gdev", dev_pw)
    other = p.login(URL, "gother", other_pw)
    me = await p.Client.open(URL, dev_id, dev)
    spy = await p.Client.open(URL, other_id, other)
    for c in (me, spy):
        await c.send(type="subscribe", topics=["generation"])
        assert (await c.expect("subscribed"))["topics"] == ["generation"]
    await me.send(type="subscribe", topics=["weather"])
    assert (await me.expect("error"))["code"] == "invalid_frame"

    body = []
    t = threading.Thread(target=generate, args=(dev, body))
    t.start()
    started = await me.expect("generation.started")
    assert started["model"] == "gpt" and started["served_locally"] is False, started
    text = ""
    while True:
        f = await me.next(20)
        if f["type"] == "generation.token":
            assert f["id"] == started["id"], f
            text += f["text"]
        elif f["type"] == "generation.completed":
            done = f
            break
    t.join()
    assert text == TEXT, (text, TEXT)
    assert done["id"] == started["id"] and done["finish_reason"] == "stop", done
    assert float(done["cost_usd"]) > 0, done
    assert TEXT.split()[0] in body[0], body
    # Nothing about it reached the other user.
    leaked = [f for f in await spy.quiet(1.0) if f["type"].startswith("generation.")]
    assert not leaked, leaked
    print("ok generation progress", flush=True)


asyncio.run(main())
