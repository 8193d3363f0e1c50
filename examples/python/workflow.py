"""Create a three-step workflow, run it, watch it over the WebSocket, approve it, see its cost.

    pip install -r examples/python/requirements.txt
    python3 examples/python/workflow.py --url http://localhost:8080 --username admin \
        --password PASSWORD --text "The Eiffel Tower is a wrought-iron tower in Paris..."

The workflow (`brief`): summarise the text with the local model, extract a JSON card from the
summary (checked against a schema), then wait for a person's approval. This client subscribes
to `workflow` frames, prints the generated text as it streams, and approves when asked
(`--reject` rejects instead). It prints the run's cost at the end: local models cost nothing.
"""

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request

from websockets.asyncio.client import connect

BRIEF = {
    "name": "brief",
    "input": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
    "steps": [
        {"id": "summary", "type": "generate", "model": "smollm2", "temperature": 0,
         "max_tokens": 60, "prompt": "Summarise in one sentence: {{ input.text }}"},
        {"id": "card", "type": "extract", "model": "smollm2", "temperature": 0, "max_tokens": 80,
         "prompt": "Return only a JSON object with keys \"title\" and \"summary\" for this text: "
                   "{{ steps.summary.output }}",
         "schema": {"type": "object", "required": ["title", "summary"],
                    "properties": {"title": {"type": "string"}, "summary": {"type": "string"}}}},
        {"id": "ok", "type": "approval", "after": ["card"]},
    ],
    "output": {"card": "{{ steps.card.output }}", "approval": "{{ steps.ok.output }}"},
}


def call(url, method, path, token=None, body=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, method=method, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        sys.exit(f"{method} {path}: {e.code} {e.read().decode()}")


async def main(args):
    token = call(args.url, "POST", "/auth/login",
                 body={"username": args.username, "password": args.password})["access_token"]
    me = call(args.url, "GET", "/users/me", token)["user"]["id"]
    wf = call(args.url, "POST", "/workflows", token, BRIEF)
    print(f"workflow {wf['id']} (version {wf['version']})")
    ws_url = args.url.replace("http", "ws", 1) + f"/ws/{me}"
    async with connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topics": ["workflow"]}))
        run = call(args.url, "POST", f"/workflows/{wf['id']}/execute", token,
                   {"input": {"text": args.text}})
        print(f"run {run['id']}: {run['status']}")
        async for raw in ws:
            f = json.loads(raw)
            if f.get("run_id") != run["id"]:
                continue
            kind = f["type"]
            if kind == "workflow.progress":
                print(f.get("text", ""), end="", flush=True)
            elif kind == "workflow.step.started":
                print(f"\n[{f['step']}] started")
            elif kind == "workflow.step.completed":
                print(f"\n[{f['step']}] completed: {json.dumps(f['output'])} (${f['cost_usd']})")
            elif kind == "workflow.approval.requested":
                print(f"[{f['step']}] waiting for approval: spent ${f['cost_so_far_usd']}, "
                      f"at most ${f['estimated_remaining_usd']} to go")
                decision = "workflow.reject" if args.reject else "workflow.approve"
                await ws.send(json.dumps({"type": decision, "run_id": run["id"],
                                          "comment": "from workflow.py"}))
            elif kind == "workflow.approval.decided":
                print(f"[{f['step']}] {'approved' if f['approved'] else 'rejected'}")
            elif kind in ("workflow.completed", "workflow.failed", "workflow.cancelled"):
                print(f"{kind}: cost ${f['cost_usd']}")
                break
            elif kind == "error":
                sys.exit(f"error frame: {f}")
    final = call(args.url, "GET", f"/runs/{run['id']}", token)
    print(json.dumps({"status": final["status"], "cost_usd": final["cost_usd"],
                      "output": final["output"], "error": final["error"]}))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://localhost:8080")
    p.add_argument("--username", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--text", default="The Eiffel Tower is a wrought-iron lattice tower on the "
                   "Champ de Mars in Paris, built from 1887 to 1889 for the World Fair.")
    p.add_argument("--reject", action="store_true")
    asyncio.run(main(p.parse_args()))
