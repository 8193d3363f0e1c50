"""The official OpenAI and Anthropic Python SDKs against Revo, unchanged but for base_url
and a Revo API key. Run by tests/router.rs: python official_sdks.py BASE_URL API_KEY TEXT.
Exits non-zero (with the failing assertion) on any difference."""

import sys

import anthropic
import openai

base, key, text = sys.argv[1], sys.argv[2], sys.argv[3]

oa = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)

ids = [m.id for m in oa.models.list()]
assert ids[0] == "auto" and "gpt" in ids and "claude" in ids, ids

raw = oa.chat.completions.with_raw_response.create(
    model="gpt", messages=[{"role": "user", "content": "capital of France?"}], max_tokens=64
)
assert raw.headers["x-revo-model"] == "gpt", raw.headers
assert raw.headers["x-revo-cost-usd"] == "0.00212", raw.headers
c = raw.parse()
assert c.choices[0].message.content == text, c
assert c.choices[0].finish_reason == "stop", c
assert c.usage.prompt_tokens == 1200 and c.usage.completion_tokens == 40, c.usage
assert c.usage.prompt_tokens_details.cached_tokens == 1024, c.usage
print("openai chat ok")

chunks = list(
    oa.chat.completions.create(
        model="auto",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
)
streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
assert streamed == text, streamed
assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 40, chunks[-1]
assert chunks[0].model == "lcpp", chunks[0]
print("openai stream ok")

try:
    oa.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    raise AssertionError("an unknown model was served")
except openai.NotFoundError as e:
    assert e.body["code"] == "model_not_found", e.body
print("openai errors ok")

an = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
m = an.messages.create(
    model="claude", max_tokens=64, system="be brief", messages=[{"role": "user", "content": "hi"}]
)
assert m.content[0].text == text, m
assert m.stop_reason == "end_turn", m
assert (m.usage.input_tokens, m.usage.cache_read_input_tokens, m.usage.output_tokens) == (100, 1000, 40), m.usage
print("anthropic messages ok")

with an.messages.stream(
    model="claude", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
) as s:
    streamed = "".join(s.text_stream)
    final = s.get_final_message()
assert streamed == text, streamed
assert final.usage.output_tokens == 40 and final.usage.cache_creation_input_tokens == 100, final.usage
print("anthropic stream ok")

if len(sys.argv) > 4:
    # A key whose budget is spent: 402 budget_exceeded, which neither SDK retries (the test
    # counts the requests Revo answered).
    spent_key = sys.argv[4]
    oa = openai.OpenAI(base_url=f"{base}/v1", api_key=spent_key, max_retries=3)
    try:
        oa.chat.completions.create(
            model="gpt", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
        raise AssertionError("a spent budget served a cloud request")
    except openai.APIStatusError as e:
        assert e.status_code == 402 and e.body["code"] == "budget_exceeded", e.body
    an = anthropic.Anthropic(base_url=base, api_key=spent_key, max_retries=3)
    try:
        an.messages.create(model="gpt", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("a spent budget served a cloud request")
    except anthropic.APIStatusError as e:
        assert e.status_code == 402, e
    print("budget refusals ok")
