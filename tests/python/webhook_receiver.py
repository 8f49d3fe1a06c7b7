"""A webhook receiver for the tests, verifying signatures with `standardwebhooks` (the Standard Webhooks
reference library: an implementation independent of the service's).

Usage: webhook_receiver.py PORT. Endpoints are paths /hook/<name>; each has a secret and a behaviour set
through the control API:
  POST /_config/<name> {"secret": "whsec_…", "status": 200, "delay": 0}
  GET  /_received      -> every request received: [{"endpoint", "webhook_id", "type", "ticket_id",
                          "verified", "status", "headers", "body"}]
Prints "listening" once ready.
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

LOCK = threading.Lock()
CONFIG = {}
RECEIVED = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _reply(self, status, payload=b""):
        self.send_response(status)
        self.send_header("content-length", str(len(payload)))
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(payload)

    def _body(self):
        return self.rfile.read(int(self.headers.get("content-length", "0")))

    def do_GET(self):
        if self.path == "/_received":
            with LOCK:
                self._reply(200, json.dumps(RECEIVED).encode())
        else:
            self._reply(404)

    def do_POST(self):
        body = self._body()
        if self.path.startswith("/_config/"):
            name = self.path[len("/_config/"):]
            with LOCK:
                CONFIG.setdefault(name, {"secrets": [], "status": 200, "delay": 0})
                update = json.loads(body)
                if "secret" in update:
                    CONFIG[name]["secrets"].append(update.pop("secret"))
                CONFIG[name].update(update)
            self._reply(200, b"{}")
            return
        if not self.path.startswith("/hook/"):
            self._reply(404)
            return
        name = self.path[len("/hook/"):]
        with LOCK:
            config = dict(CONFIG.get(name, {"secrets": [], "status": 200, "delay": 0}))
        headers = {k.lower(): v for k, v in self.headers.items()}
        verified_with = []
        for i, secret in enumerate(config["secrets"]):
            try:
                Webhook(secret).verify(body, headers)
                verified_with.append(i)
            except Exception:
                pass
        try:
            payload = json.loads(body)
        except ValueError:
            payload = {}
        if config.get("delay"):
            time.sleep(config["delay"])
        status = config.get("status", 200)
        with LOCK:
            RECEIVED.append({
                "endpoint": name,
                "webhook_id": headers.get("webhook-id"),
                "type": payload.get("type"),
                "ticket_id": headers.get("x-ticket-id"),
                "verified": bool(verified_with),
                "verified_with": verified_with,
                "status": status,
                "at": time.time(),
                "headers": headers,
                "body": payload,
            })
        self._reply(status, b"{}")


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
server.daemon_threads = True
# A hanging endpoint's caller gives up (timeout): the broken pipe is expected, not worth a traceback.
server.handle_error = lambda request, address: None
print("listening", flush=True)
server.serve_forever()
