"""A webhook receiver that checks every delivery with the reference
Standard Webhooks library (PyPI `standardwebhooks` 1.1.0), an oracle
independent of Herald's signer.

Usage: receiver.py SECRET [SECRET...]. Listens on 127.0.0.1, port 0; prints
`port N`, then one line per request: `ok <webhook-id> <secret index>` when
a secret verifies it (answer 204), `bad <webhook-id> <reason>` otherwise
(answer 401). `standardwebhooks` is imported first: without it the script
fails with an ImportError before printing the port.
"""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

SECRETS = sys.argv[1:]


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {name.lower(): value for name, value in self.headers.items()}
        message_id = headers.get("webhook-id", "-")
        verified, reasons = None, []
        for index, secret in enumerate(SECRETS):
            try:
                Webhook(secret).verify(body, headers)
                verified = index
                break
            except Exception as error:  # noqa: BLE001 - any failure is a refusal
                reasons.append(f"{type(error).__name__}: {error}")
        if verified is None:
            print(f"bad {message_id} {' | '.join(reasons)}", flush=True)
            self.send_response(401)
        else:
            print(f"ok {message_id} {verified}", flush=True)
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"port {server.server_address[1]}", flush=True)
server.serve_forever()
