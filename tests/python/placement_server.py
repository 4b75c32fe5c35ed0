"""A real OpenStack Placement for the tests: the `openstack-placement` package from PyPI on
SQLite, with `auth_strategy = noauth2` (any `X-Auth-Token`; `admin` gets the admin role),
served by a threaded stdlib WSGI server on 127.0.0.1.

Usage: placement_server.py DIR PORT   (PORT 0: any free port)

Writes DIR/placement.conf, creates or upgrades the database DIR/placement.db (a restart on the
same DIR keeps every provider and allocation), then prints "READY <port>" once it serves.
Each request is logged to stderr as one line.
"""

import os
import socketserver
import subprocess
import sys
import threading
import wsgiref.simple_server

CONF = """[DEFAULT]
debug = False
[api]
auth_strategy = noauth2
[placement_database]
connection = sqlite:///{db}
"""


class Server(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class Quiet(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, fmt, *args):
        sys.stderr.write("placement: " + (fmt % args) + "\n")


def main():
    directory, port = os.path.abspath(sys.argv[1]), int(sys.argv[2])
    os.makedirs(directory, exist_ok=True)
    conf = os.path.join(directory, "placement.conf")
    with open(conf, "w") as f:
        f.write(CONF.format(db=os.path.join(directory, "placement.db")))
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from placement.cmd.manage import main; sys.exit(main())",
            "--config-file",
            conf,
            "db",
            "sync",
        ],
        check=True,
    )
    # placement.wsgi reads DIR/placement.conf from this variable when the app is made.
    os.environ["OS_PLACEMENT_CONFIG_DIR"] = directory
    from placement import wsgi

    app = wsgi.init_application()
    one_at_a_time = threading.Lock()

    def serialized(environ, start_response):
        # SQLite takes one writer at a time ("database is locked" under concurrent writes);
        # a region's Placement runs on MySQL or PostgreSQL. Connections are still accepted
        # side by side, so a slow client holds up no one while it sends.
        with one_at_a_time:
            return list(app(environ, start_response))

    server = wsgiref.simple_server.make_server(
        "127.0.0.1", port, serialized, server_class=Server, handler_class=Quiet
    )
    print("READY", server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
