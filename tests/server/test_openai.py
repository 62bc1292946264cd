#!/usr/bin/env python3
"""`ferry serve` against the official `openai` Python client.

Starts servers on loopback (port 0: each picks a free port) running SmolLM2 and
checks chat, streaming, completions, stop strings, errors, the API key, the
queue bound (429), cancellation on disconnect, metrics, and that concurrent
greedy requests give exactly what the same requests give one at a time.

    python3 tests/server/test_openai.py [path/to/ferry]

Needs `openai` importable (scripts/test.sh installs it under target/pydeps).
"""

import concurrent.futures
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import unittest

import openai

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FERRY = os.environ.get("FERRY_BIN") or os.path.join(ROOT, "target", "debug", "ferry")
MODELS = os.environ.get("FERRY_MODELS") or os.path.join(ROOT, "models")
MODEL = os.path.join(MODELS, "smollm2-135m-instruct-q4_1.gguf")
CTX = 512


class Server:
    """A `ferry serve` process; its address is read from its first stderr lines."""

    def __init__(self, *extra):
        cmd = [FERRY, "serve", "-m", MODEL, "--port", "0", "-c", str(CTX), "--device", "cpu", *extra]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.log = []
        deadline = time.time() + 120
        self.port = None
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            m = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            self.proc.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.log))
        # Keep draining stderr so the server never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def client(self, key="none", **kw):
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=key, max_retries=0, **kw)

    def raw(self, method, path, body=None, headers=None):
        """(status, headers, body bytes) of a plain HTTP request."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        c.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        r = c.getresponse()
        out = (r.status, dict(r.getheaders()), r.read())
        c.close()
        return out

    def metrics(self, key=None):
        h = {"Authorization": f"Bearer {key}"} if key else {}
        status, _, body = self.raw("GET", "/metrics", headers=h)
        assert status == 200, status
        values = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, v = line.rsplit(" ", 1)
                values[name] = float(v)
        return values

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.proc.stderr.close()


PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a land far away,",
    "1, 2, 3, 4,",
    "Water boils at",
    "The quick brown fox",
    "My favourite colour is",
    "Question: what is 7 times 8? Answer:",
    "import numpy as np\n",
    "The three laws of robotics are",
]


class ServerTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server("--parallel", "4", "--queue", "16", "--max-body", "64KiB")
        cls.client = cls.server.client()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def chat(self, content, **kw):
        return self.client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": content}], temperature=0, **kw
        )

    def test_models_and_health(self):
        models = self.client.models.list()
        self.assertEqual([m.id for m in models.data], ["smollm2-135m-instruct-q4_1"])
        status, _, body = self.server.raw("GET", "/health")
        self.assertEqual((status, json.loads(body)), (200, {"status": "ok"}))

    def test_chat(self):
        r = self.chat("What is the capital of France?", max_tokens=24)
        self.assertEqual(r.object, "chat.completion")
        self.assertEqual(len(r.choices), 1)
        c = r.choices[0]
        self.assertEqual(c.message.role, "assistant")
        self.assertTrue(c.message.content)
        self.assertIn(c.finish_reason, ("stop", "length"))
        u = r.usage
        self.assertGreater(u.prompt_tokens, 10)
        self.assertTrue(1 <= u.completion_tokens <= 24)
        self.assertEqual(u.total_tokens, u.prompt_tokens + u.completion_tokens)
        if c.finish_reason == "length":
            self.assertEqual(u.completion_tokens, 24)

    def test_chat_streaming_equals_non_streaming(self):
        question = "Name three colours."
        whole = self.chat(question, max_tokens=20)
        stream = self.chat(question, max_tokens=20, stream=True, stream_options={"include_usage": True})
        pieces, finish, usage, roles = [], None, None, []
        for chunk in stream:
            self.assertEqual(chunk.object, "chat.completion.chunk")
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.role:
                    roles.append(choice.delta.role)
                if choice.delta.content:
                    pieces.append(choice.delta.content)
                if choice.finish_reason:
                    finish = choice.finish_reason
        self.assertEqual(roles, ["assistant"])
        self.assertEqual("".join(pieces), whole.choices[0].message.content)
        self.assertEqual(finish, whole.choices[0].finish_reason)
        self.assertEqual(usage.completion_tokens, whole.usage.completion_tokens)
        self.assertEqual(usage.prompt_tokens, whole.usage.prompt_tokens)

    def test_completions_streaming_and_not(self):
        r = self.client.completions.create(model="m", prompt="The capital of France is", max_tokens=12, temperature=0)
        self.assertEqual(r.object, "text_completion")
        text = r.choices[0].text
        self.assertTrue(text)
        self.assertEqual(r.usage.completion_tokens, 12)
        self.assertEqual(r.choices[0].finish_reason, "length")
        streamed = "".join(
            c.choices[0].text
            for c in self.client.completions.create(
                model="m", prompt="The capital of France is", max_tokens=12, temperature=0, stream=True
            )
        )
        self.assertEqual(streamed, text)
        # Token ids as the prompt give the same answer as the text.
        status, _, body = self.server.raw(
            "POST", "/v1/completions", {"prompt": "The capital of France is", "max_tokens": 1, "temperature": 0}
        )
        self.assertEqual(status, 200)

    def test_stop_strings(self):
        prompt = "1, 2, 3, 4,"
        full = self.client.completions.create(model="m", prompt=prompt, max_tokens=16, temperature=0)
        text = full.choices[0].text
        # Stop at the second comma of the continuation.
        cut = [m.start() for m in re.finditer(",", text)]
        self.assertGreaterEqual(len(cut), 2, text)
        stopped = self.client.completions.create(model="m", prompt=prompt, max_tokens=16, temperature=0, stop=[","])
        self.assertEqual(stopped.choices[0].text, text[: cut[0]])
        self.assertEqual(stopped.choices[0].finish_reason, "stop")
        # The same through streaming: no part of the stop string leaks out.
        streamed = "".join(
            c.choices[0].text
            for c in self.client.completions.create(
                model="m", prompt=prompt, max_tokens=16, temperature=0, stop=",", stream=True
            )
        )
        self.assertEqual(streamed, text[: cut[0]])

    def test_sampling_is_reproducible_with_a_seed(self):
        kw = dict(model="m", prompt="Once upon a time", max_tokens=16, temperature=1.0, seed=1234)
        a = self.client.completions.create(**kw).choices[0].text
        b = self.client.completions.create(**kw).choices[0].text
        self.assertEqual(a, b)

    def assert_error(self, status, body, want_status, param=None, code=None):
        self.assertEqual(status, want_status, body)
        err = json.loads(body)["error"]
        self.assertTrue(err["message"])
        self.assertIn("type", err)
        if param:
            self.assertEqual(err["param"], param)
        if code:
            self.assertEqual(err["code"], code)
        return err

    def test_errors(self):
        raw = self.server.raw
        status, _, body = raw("POST", "/v1/chat/completions", b'{"messages": [')
        self.assertIn("not valid JSON", self.assert_error(status, body, 400)["message"])
        status, _, body = raw("POST", "/v1/chat/completions", {"messages": "hello"})
        self.assert_error(status, body, 400)
        status, _, body = raw(
            "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}
        )
        self.assert_error(status, body, 400)
        status, _, body = raw(
            "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "temperature": 5}
        )
        self.assert_error(status, body, 400, param="temperature")
        status, _, body = raw("POST", "/v1/completions", {"prompt": "x", "max_tokens": 100000})
        self.assert_error(status, body, 400, param="max_tokens", code="context_length_exceeded")
        status, _, body = raw("POST", "/v1/completions", {"prompt": "word " * 2000, "max_tokens": 1})
        self.assert_error(status, body, 400, code="context_length_exceeded")
        status, _, body = raw("POST", "/v1/completions", b'{"prompt": "' + b"a" * 70000 + b'"}')
        self.assert_error(status, body, 413)
        status, _, body = raw("GET", "/v1/nothing")
        self.assert_error(status, body, 404)
        status, _, body = raw("GET", "/v1/chat/completions")
        self.assert_error(status, body, 405)
        # The client raises the matching exception classes.
        with self.assertRaises(openai.BadRequestError) as e:
            self.chat("hi", max_tokens=10**6)
        self.assertEqual(e.exception.status_code, 400)
        with self.assertRaises(openai.BadRequestError):
            # More choices than parallel sequences (4).
            self.client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], n=5)

    def test_logprobs(self):
        # Chat: the chosen token's log-probability and its alternatives; at
        # temperature 0 the chosen token is the most likely one.
        r = self.client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
        content = r.choices[0].logprobs.content
        self.assertGreater(len(content), 0)
        self.assertEqual("".join(t.token for t in content), r.choices[0].message.content)
        for t in content:
            self.assertLessEqual(t.logprob, 0.0)
            self.assertEqual(len(t.top_logprobs), 3)
            self.assertEqual(t.top_logprobs[0].token, t.token)
            self.assertAlmostEqual(t.top_logprobs[0].logprob, t.logprob, places=5)
            lps = [a.logprob for a in t.top_logprobs]
            self.assertEqual(lps, sorted(lps, reverse=True))
            self.assertEqual(bytes(t.bytes).decode("utf-8", "replace"), t.token)
        # Streamed: the same tokens and values, piece by piece.
        streamed = []
        for c in self.client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "Name a colour."}],
                max_tokens=6, temperature=0, logprobs=True, top_logprobs=3, stream=True):
            if c.choices and c.choices[0].logprobs:
                streamed.extend(c.choices[0].logprobs.content)
        self.assertEqual([(t.token, round(t.logprob, 5)) for t in streamed],
                         [(t.token, round(t.logprob, 5)) for t in content])
        # Without the field: null.
        self.assertIsNone(self.chat("hi", max_tokens=2).choices[0].logprobs)
        # Completions: the legacy shape.
        r = self.client.completions.create(model="m", prompt="The capital of France is", max_tokens=5,
                                           temperature=0, logprobs=2)
        lp = r.choices[0].logprobs
        self.assertEqual(len(lp.tokens), len(lp.token_logprobs))
        self.assertEqual(len(lp.top_logprobs), len(lp.tokens))
        self.assertEqual("".join(lp.tokens), r.choices[0].text)
        self.assertEqual(lp.text_offset[0], 0)
        for tok, l, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
            self.assertEqual(len(top), 2)
            self.assertAlmostEqual(max(top.values()), l, places=5)
        # Out of range or misplaced: 400 naming the field.
        raw = self.server.raw
        msgs = [{"role": "user", "content": "x"}]
        status, _, body = raw("POST", "/v1/chat/completions", {"messages": msgs, "logprobs": True, "top_logprobs": 21})
        self.assert_error(status, body, 400, param="top_logprobs")
        status, _, body = raw("POST", "/v1/chat/completions", {"messages": msgs, "top_logprobs": 2})
        self.assert_error(status, body, 400, param="top_logprobs")
        status, _, body = raw("POST", "/v1/chat/completions", {"messages": msgs, "logprobs": 3})
        self.assert_error(status, body, 400, param="logprobs")
        status, _, body = raw("POST", "/v1/completions", {"prompt": "x", "logprobs": 6})
        self.assert_error(status, body, 400, param="logprobs")

    def test_n_choices_share_one_prefill(self):
        before = self.server.metrics()
        prompt = "Once upon a time, in a small village, there lived"
        r = self.client.completions.create(model="m", prompt=prompt, max_tokens=12, temperature=0.9, seed=7, n=3)
        self.assertEqual([c.index for c in r.choices], [0, 1, 2])
        # Choices sample with their own seeds: not all the same text.
        self.assertGreater(len({c.text for c in r.choices}), 1)
        after = self.server.metrics()
        n_prompt = len(prompt.split())  # at least this many tokens
        prefilled = after["ferry_prompt_tokens_total"] - before["ferry_prompt_tokens_total"]
        self.assertEqual(prefilled, r.usage.prompt_tokens, "the prompt was prefilled once")
        self.assertGreaterEqual(prefilled, n_prompt)
        # Completion tokens add up over the choices (each 1 to 12).
        self.assertTrue(3 <= r.usage.completion_tokens <= 36, r.usage)
        # Greedy choices are identical to a single greedy request.
        one = self.client.completions.create(model="m", prompt=prompt, max_tokens=12, temperature=0).choices[0].text
        three = self.client.completions.create(model="m", prompt=prompt, max_tokens=12, temperature=0, n=3)
        self.assertEqual([c.text for c in three.choices], [one] * 3)
        # Streamed chat: every index gets its role, text and finish.
        seen = {}
        finished = set()
        for c in self.client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8,
                temperature=0, n=2, stream=True):
            for ch in c.choices:
                seen.setdefault(ch.index, "")
                seen[ch.index] += ch.delta.content or ""
                if ch.finish_reason:
                    finished.add(ch.index)
        self.assertEqual(finished, {0, 1})
        self.assertEqual(seen[0], seen[1])

    def test_tools(self):
        # SmolLM2's template has no tools section: the request is served, a
        # tool turn is accepted, and an answer that is no call stays content
        # (streamed and not). Parsing calls is unit-tested (server::tools).
        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}]
        msgs = [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"sky\": \"clear\"}"},
        ]
        r = self.client.chat.completions.create(model="m", messages=msgs, tools=tools, max_tokens=8, temperature=0)
        self.assertIn(r.choices[0].finish_reason, ("stop", "length", "tool_calls"))
        streamed = "".join(c.choices[0].delta.content or "" for c in self.client.chat.completions.create(
            model="m", messages=msgs, tools=tools, max_tokens=8, temperature=0, stream=True) if c.choices)
        if not r.choices[0].message.tool_calls:
            self.assertEqual(streamed, r.choices[0].message.content)
        raw = self.server.raw
        # A required call and a named one are produced under a grammar: they
        # always parse (SmolLM2 has no call format of its own: one JSON object).
        tools2 = tools + [{"type": "function", "function": {"name": "add", "parameters": {
            "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"], "additionalProperties": False}}}]
        ask = [{"role": "user", "content": "What is 2 plus 3?"}]
        for choice, names in (("required", {"get_weather", "add"}),
                              ({"type": "function", "function": {"name": "add"}}, {"add"})):
            for stream in (False, True):
                kw = dict(model="m", messages=ask, tools=tools2, tool_choice=choice, max_tokens=60, temperature=0)
                if stream:
                    calls = {}
                    for c in self.client.chat.completions.create(stream=True, **kw):
                        for d in (c.choices[0].delta.tool_calls or []) if c.choices else []:
                            e = calls.setdefault(d.index, {"name": "", "arguments": ""})
                            e["name"] += d.function.name or ""
                            e["arguments"] += d.function.arguments or ""
                    got = list(calls.values())
                else:
                    r = self.client.chat.completions.create(**kw)
                    self.assertEqual(r.choices[0].finish_reason, "tool_calls")
                    got = [{"name": t.function.name, "arguments": t.function.arguments}
                           for t in r.choices[0].message.tool_calls]
                self.assertEqual(len(got), 1)
                self.assertIn(got[0]["name"], names)
                args = json.loads(got[0]["arguments"])
                if got[0]["name"] == "add":
                    self.assertEqual(set(args), {"a", "b"})
                    self.assertTrue(all(isinstance(v, int) for v in args.values()))
        status, _, body = raw("POST", "/v1/chat/completions", {"messages": msgs, "tools": tools, "tool_choice": {
            "type": "function", "function": {"name": "nope"}}})
        self.assert_error(status, body, 400, param="tool_choice")
        status, _, body = raw("POST", "/v1/chat/completions", {"messages": msgs, "tools": tools,
                                                               "tool_choice": "required",
                                                               "response_format": {"type": "json_object"}})
        self.assert_error(status, body, 400, param="tool_choice")
        status, _, body = raw("POST", "/v1/chat/completions", {"messages": msgs, "tools": [{"type": "function"}]})
        self.assert_error(status, body, 400, param="tools")
        bad = [dict(msgs[1], tool_calls=[{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}])]
        status, _, body = raw("POST", "/v1/chat/completions", {"messages": [msgs[0]] + bad})
        self.assert_error(status, body, 400, param="messages")

    def test_structured_output(self):
        # A JSON Schema holds the answer (streamed and not): it parses and
        # validates, whatever the small model would have said.
        schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                  "age": {"type": "integer", "minimum": 0, "maximum": 150}},
                  "required": ["name", "age"], "additionalProperties": False}
        fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}
        r = self.chat("Describe a person.", response_format=fmt, max_tokens=60)
        self.assertEqual(r.choices[0].finish_reason, "stop")
        obj = json.loads(r.choices[0].message.content)
        self.assertEqual(set(obj), {"name", "age"})
        self.assertIsInstance(obj["name"], str)
        self.assertLessEqual(len(obj["name"]), 12)
        self.assertIsInstance(obj["age"], int)
        streamed = "".join(c.choices[0].delta.content or "" for c in self.client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Describe a person."}], temperature=0,
            response_format=fmt, max_tokens=60, stream=True) if c.choices)
        self.assertEqual(streamed, r.choices[0].message.content)
        # Any JSON object; n choices, each held to it.
        r = self.client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Say hello."}], temperature=1, seed=3, n=3,
            response_format={"type": "json_object"}, max_tokens=40)
        for c in r.choices:
            if c.finish_reason == "stop":
                self.assertIsInstance(json.loads(c.message.content), dict)
            else:
                self.assertTrue(c.message.content.lstrip().startswith("{"))
        # A Lark grammar (the `grammar` extension), on completions too.
        r = self.client.completions.create(model="m", prompt="My favourite colour is", max_tokens=5,
                                           temperature=0, extra_body={"grammar": 'start: " red" | " green" | " blue"'})
        self.assertIn(r.choices[0].text, (" red", " green", " blue"))
        self.assertEqual(r.choices[0].finish_reason, "stop")
        # llama.cpp's GBNF, as its server takes it.
        gbnf = 'root ::= " " answer "!"\nanswer ::= "yes" | "no" # short\n'
        r = self.client.completions.create(model="m", prompt="Is water wet? Answer:", max_tokens=5,
                                           temperature=0, extra_body={"grammar": gbnf})
        self.assertIn(r.choices[0].text, (" yes!", " no!"))
        # Refusals name the field.
        raw = self.server.raw
        msgs = [{"role": "user", "content": "x"}]
        for bad in ({"type": "json_schema"}, {"type": "json_schema", "json_schema": {"schema": 3}},
                    {"type": "yaml"},
                    {"type": "json_schema", "json_schema": {"schema": {"$ref": "#/nowhere"}}}):
            status, _, body = raw("POST", "/v1/chat/completions", {"messages": msgs, "response_format": bad})
            self.assert_error(status, body, 400, param="response_format")
        status, _, body = raw("POST", "/v1/chat/completions", {"messages": msgs, "grammar": "start: (("})
        self.assert_error(status, body, 400, param="grammar")
        status, _, body = raw("POST", "/v1/chat/completions", {"messages": msgs, "grammar": 'answer ::= "x"'})
        self.assertIn("root", self.assert_error(status, body, 400, param="grammar")["message"])
        status, _, body = raw("POST", "/v1/chat/completions", {"messages": msgs, "grammar": 'start: "a"',
                                                               "response_format": {"type": "json_object"}})
        self.assert_error(status, body, 400, param="grammar")

    def test_chat_template_kwargs(self):
        raw = self.server.raw
        msgs = [{"role": "user", "content": "x"}]
        # enable_thinking reaches the template (SmolLM2's ignores it).
        status, _, body = raw("POST", "/v1/chat/completions",
                              {"messages": msgs, "max_tokens": 2, "chat_template_kwargs": {"enable_thinking": False}})
        self.assertEqual(status, 200, body)
        # The model has no thinking markers: no reasoning_content.
        self.assertNotIn("reasoning_content", json.loads(body)["choices"][0]["message"])
        status, _, body = raw("POST", "/v1/chat/completions",
                              {"messages": msgs, "chat_template_kwargs": {"tools_in_system": True}})
        self.assert_error(status, body, 400, param="chat_template_kwargs")

    def test_concurrent_greedy_equals_sequential(self):
        def ask(p):
            r = self.client.completions.create(model="m", prompt=p, max_tokens=24, temperature=0)
            return r.choices[0].text, r.choices[0].finish_reason, r.usage.completion_tokens

        sequential = [ask(p) for p in PROMPTS]
        before = self.server.metrics()
        with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
            concurrent_ = list(pool.map(ask, PROMPTS))
        after = self.server.metrics()
        self.assertEqual(concurrent_, sequential)
        generated = after["ferry_generated_tokens_total"] - before["ferry_generated_tokens_total"]
        self.assertEqual(generated, sum(n for _, _, n in sequential))
        # They really shared decode steps: the mean batch grew.
        self.assertGreater(after["ferry_decode_batch_mean"], before["ferry_decode_batch_mean"])

    def test_disconnect_cancels_the_generation(self):
        # A streamed request learns of the disconnect at its next event. A
        # non-streamed one cannot tell a client that left from one that
        # half-closed after its request (both are an end of input), and the
        # latter must get its reply: it runs to its end.
        self.check_disconnect(True)
        self.check_non_streamed_disconnect()

    def check_non_streamed_disconnect(self):
        before = self.server.metrics()
        c = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
        body = json.dumps({"prompt": "Once upon a time", "max_tokens": 64, "temperature": 0})
        c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        deadline = time.time() + 10
        while self.server.metrics()["ferry_active_sequences"] == 0 and time.time() < deadline:
            time.sleep(0.01)
        c.sock.shutdown(2)
        c.close()
        deadline = time.time() + 60
        while time.time() < deadline:
            m = self.server.metrics()
            if m["ferry_active_sequences"] == 0:
                break
            time.sleep(0.05)
        self.assertEqual(m["ferry_active_sequences"], 0)
        ended = sum(m[k] - before.get(k, 0) for k in m if k.startswith("ferry_requests_total"))
        self.assertGreaterEqual(ended, 1)
        # The server goes on.
        self.assertEqual(self.server.metrics()["ferry_queue_length"], 0)

    def check_disconnect(self, stream):
        before = self.server.metrics()
        c = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
        body = json.dumps({"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0, "stream": stream})
        c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        if stream:
            r = c.getresponse()
            self.assertEqual(r.status, 200)
            r.fp.readline()  # the first event
        else:
            # Wait until the engine has taken the request, then hang up.
            deadline = time.time() + 10
            while self.server.metrics()["ferry_active_sequences"] == 0 and time.time() < deadline:
                time.sleep(0.01)
        c.sock.shutdown(2)
        c.close()
        deadline = time.time() + 10
        while time.time() < deadline:
            m = self.server.metrics()
            cancelled = m['ferry_requests_total{outcome="cancelled"}'] - before['ferry_requests_total{outcome="cancelled"}']
            if cancelled >= 1 and m["ferry_active_sequences"] == 0:
                break
            time.sleep(0.05)
        self.assertEqual(cancelled, 1)
        self.assertEqual(m["ferry_active_sequences"], 0)
        # Far fewer than 400 tokens were generated for it.
        self.assertLess(m["ferry_generated_tokens_total"] - before["ferry_generated_tokens_total"], 200)

    def test_metrics(self):
        self.chat("hi", max_tokens=4)
        m = self.server.metrics()
        for name in [
            "ferry_prompt_tokens_total",
            "ferry_generated_tokens_total",
            "ferry_prefill_tokens_per_second",
            "ferry_decode_tokens_per_second",
            "ferry_queue_length",
            "ferry_active_sequences",
            "ferry_kv_cache_bytes",
            "ferry_resident_memory_bytes",
        ]:
            self.assertIn(name, m)
        self.assertGreater(m["ferry_generated_tokens_total"], 0)
        self.assertGreater(m["ferry_prefill_tokens_per_second"], 0)


class QueueAndKeyTests(unittest.TestCase):
    def test_queue_bound_gives_429_with_retry_after(self):
        server = Server("--parallel", "1", "--queue", "1")
        try:
            body = {"prompt": "Once upon a time", "max_tokens": 64, "temperature": 0}
            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                results = list(pool.map(lambda _: server.raw("POST", "/v1/completions", body), range(6)))
            statuses = sorted(s for s, _, _ in results)
            self.assertIn(200, statuses)
            self.assertIn(429, statuses)
            for status, headers, text in results:
                if status == 429:
                    self.assertEqual(json.loads(text)["error"]["type"], "rate_limit_error")
                    self.assertGreaterEqual(int(headers["retry-after"]), 1)
            # Once the queue drains, requests are served again.
            self.assertEqual(server.raw("POST", "/v1/completions", body)[0], 200)
        finally:
            server.stop()

    def test_api_key(self):
        server = Server("--parallel", "1", "--api-key", "sesame")
        try:
            with self.assertRaises(openai.AuthenticationError):
                server.client(key="wrong").models.list()
            self.assertEqual(len(server.client(key="sesame").models.list().data), 1)
            self.assertEqual(server.raw("GET", "/health")[0], 200)
            status, headers, _ = server.raw("GET", "/metrics")
            self.assertEqual(status, 401)
            self.assertEqual({k.lower(): v for k, v in headers.items()}["www-authenticate"], "Bearer")
            self.assertEqual(server.raw("POST", "/v1/completions", {"prompt": "x"})[0], 401)
            r = server.client(key="sesame").completions.create(model="m", prompt="Hi", max_tokens=2)
            self.assertEqual(r.usage.completion_tokens, 2)
        finally:
            server.stop()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        FERRY = os.path.abspath(sys.argv.pop(1))
    unittest.main(verbosity=2)
