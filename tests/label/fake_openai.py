"""A fake OpenAI-compatible chat server for tests, run as its own process on 127.0.0.1:

    python fake_openai.py PORT LOG MODE [DELAY]

It answers ``{"O": g}`` where g is the first digit after the word ``grade`` in the request's
last message (so a test knows the right label), after DELAY seconds. It appends one line
per request to LOG (the sha256 of the messages), so tests count requests on the server side.

MODE sets what the first request for each prompt gets (later ones get a good answer):
ok, 429, 500, timeout (sleeps 5 s), malformed (a body that is not JSON), garbage (a 200 whose
content is prose without a score), no_response_format (400 whenever response_format is sent),
always500 (every request fails).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, LOG, MODE = int(sys.argv[1]), sys.argv[2], sys.argv[3]
DELAY = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
seen: dict[str, int] = {}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, code: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send(200, json.dumps({"object": "list", "data": [{"id": "fake"}]}).encode())

    def do_POST(self) -> None:
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = hashlib.sha256(json.dumps(req["messages"], sort_keys=True).encode()).hexdigest()
        with lock:
            n = seen[key] = seen.get(key, 0) + 1
            with open(LOG, "a") as f:
                f.write(key + "\n")
        if MODE == "no_response_format" and "response_format" in req:
            err = {"error": {"message": "response_format is not supported", "type": "x"}}
            return self._send(400, json.dumps(err).encode())
        if MODE == "always500" or (n == 1 and MODE == "500"):
            return self._send(500, b'{"error": {"message": "boom"}}')
        if n == 1 and MODE == "429":
            return self._send(429, b'{"error": {"message": "slow down"}}', {"Retry-After": "0"})
        if n == 1 and MODE == "timeout":
            time.sleep(5)
        if n == 1 and MODE == "malformed":
            return self._send(200, b"{this is not json")
        time.sleep(DELAY)
        text = req["messages"][-1]["content"]
        m = re.search(r"grade (\d)", text)
        content = json.dumps({"O": int(m.group(1)) if m else 0})
        if n == 1 and MODE == "garbage":
            content = "I would say this passage is quite relevant to the query."
        body = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": req.get("model", "fake"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 100, "completion_tokens": 8, "total_tokens": 108},
        }
        self._send(200, json.dumps(body).encode())


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
