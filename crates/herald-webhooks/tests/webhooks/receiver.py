"""A webhook receiver that checks every delivery with the reference
Standard Webhooks library (PyPI `standardwebhooks` 1.1.0), an oracle
independent of Herald's signer.

Usage: receiver.py SECRET [SECRET...]. Listens on 127.0.0.1, port 0; prints
`port N`, then one line per request: `ok <webhook-id> <indexes>` with the
index of every secret that verifies it, comma-separated (answer 204), or
`bad <webhook-id> <reason>` when none does (answer 401). A line
`secret <whsec_...>` on stdin adds a secret (a rotation). `standardwebhooks`
is imported first: without it the script fails with an ImportError before
printing the port.
"""

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

SECRETS = sys.argv[1:]


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {name.lower(): value for name, value in self.headers.items()}
        message_id = headers.get("webhook-id", "-")
        verified, reasons = [], []
        for index, secret in enumerate(list(SECRETS)):
            try:
                Webhook(secret).verify(body, headers)
                verified.append(str(index))
            except Exception as error:  # noqa: BLE001 - any failure is a refusal
                reasons.append(f"{type(error).__name__}: {error}")
        if not verified:
            print(f"bad {message_id} {' | '.join(reasons)}", flush=True)
            self.send_response(401)
        else:
            print(f"ok {message_id} {','.join(verified)}", flush=True)
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def read_secrets():
    for line in sys.stdin:
        if line.startswith("secret "):
            SECRETS.append(line.split(" ", 1)[1].strip())


threading.Thread(target=read_secrets, daemon=True).start()
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"port {server.server_address[1]}", flush=True)
server.serve_forever()
