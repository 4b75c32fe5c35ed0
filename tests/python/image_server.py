"""A small HTTP(S) server for the image import tests: serves files of one directory in ways
real servers behave and misbehave. Prints "PORT <n>" once it listens.

  /fast/NAME   the file, at once
  /slow/NAME   the file in 256 KiB pieces, 50 ms apart (imports in progress can be watched)
  /cut/NAME    announces the whole length, sends half, closes
  /fail/500    answers 500
  anything else answers 404

Usage: image_server.py DIR [--tls CERT KEY]
"""

import http.server
import os
import ssl
import sys
import time

ROOT = sys.argv[1]
PIECE = 256 * 1024


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        kind, _, name = self.path.lstrip("/").partition("/")
        if kind == "fail":
            self.send_error(500)
            return
        path = os.path.join(ROOT, os.path.basename(name))
        if kind not in ("fast", "slow", "cut") or not os.path.isfile(path):
            self.send_error(404)
            return
        with open(path, "rb") as f:
            data = f.read()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if kind == "fast":
            self.wfile.write(data)
        elif kind == "cut":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            for at in range(0, len(data), PIECE):
                self.wfile.write(data[at : at + PIECE])
                self.wfile.flush()
                time.sleep(0.05)


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
if len(sys.argv) == 5 and sys.argv[2] == "--tls":
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[3], sys.argv[4])
    server.socket = context.wrap_socket(server.socket, server_side=True)
print("PORT", server.server_address[1], flush=True)
server.serve_forever()
