#!/usr/bin/env python3
"""A tiny HTTP listener for tests: records each request as one JSON line.

usage: recorder.py PORT OUTFILE [FAIL_FIRST_N]
Answers 500 to the first FAIL_FIRST_N requests, 200 after that.
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

port, out = int(sys.argv[1]), sys.argv[2]
fail_first = int(sys.argv[3]) if len(sys.argv) > 3 else 0
seen = 0


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        global seen
        seen += 1
        body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
        with open(out, "a") as f:
            f.write(json.dumps({"path": self.path, "body": body,
                                "content_type": self.headers.get("content-type")}) + "\n")
        status = 500 if seen <= fail_first else 200
        self.send_response(status)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", port), Handler).serve_forever()
