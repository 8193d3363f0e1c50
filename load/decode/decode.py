"""Greedy decoding of one prompt with Python's onnxruntime, the same loop Revo runs: prefill,
then one token per step, feeding the returned cache back. The baseline of load/decode/bench.sh
and gpu.sh.

usage: decode.py MODEL_DIR THREADS MAX_TOKENS PROMPT [cpu|cuda]
prints: time to first token (ms) and decode tokens/s
"""
import json, sys, time

import numpy as np
import onnxruntime as ort
import tokenizers

d, threads, max_tokens, prompt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
device = sys.argv[5] if len(sys.argv) > 5 else "cpu"
cfg = json.load(open(f"{d}/config.json"))
so = ort.SessionOptions()
so.intra_op_num_threads = threads
provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
s = ort.InferenceSession(f"{d}/model.onnx", so, providers=[provider])
assert s.get_providers()[0] == provider, s.get_providers()
ids = tokenizers.Tokenizer.from_file(f"{d}/tokenizer.json").encode(prompt, add_special_tokens=False).ids
L, kvh, hd = cfg["layers"], cfg["kv_heads"], cfg["head_dim"]
past = {f"past_key_values.{i}.{k}": np.zeros((1, kvh, 0, hd), np.float32) for i in range(L) for k in ("key", "value")}
names = [o.name for o in s.get_outputs()]
start = time.perf_counter()
first = None
out, inp, done = [], ids, 0
while len(out) < max_tokens:
    total = done + len(inp)
    r = dict(zip(names, s.run(None, {
        "input_ids": np.array([inp], np.int64),
        "attention_mask": np.ones((1, total), np.int64),
        "position_ids": np.arange(done, total, dtype=np.int64)[None], **past})))
    nxt = int(r["logits"][0, -1].argmax())
    past = {f"past_key_values.{i}.{k}": r[f"present.{i}.{k}"] for i in range(L) for k in ("key", "value")}
    done, inp = total, [nxt]
    if nxt in cfg["stop_token_ids"]:
        break
    if first is None:
        first = time.perf_counter()
    out.append(nxt)
end = time.perf_counter()
print(f"{(first - start) * 1e3:.1f} {(len(out) - 1) / (end - first):.1f}")
