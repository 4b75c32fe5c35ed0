"""A real OpenStack Placement for the tests: the `openstack-placement` package from PyPI on
SQLite, with `auth_strategy = noauth2` (any `X-Auth-Token`; `admin` gets the admin role),
served by a threaded stdlib WSGI server on 127.0.0.1.

Usage: placement_server.py DIR PORT [KEYSTONE_URL]   (PORT 0: any free port)

With KEYSTONE_URL (keystone_server.py's), `auth_strategy = keystone` instead: tokens are
validated by Keystone (keystonemiddleware, as user admin), and only admins may write.

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
auth_strategy = {auth}
[placement_database]
connection = sqlite:///{db}
"""

KEYSTONE = """[keystone_authtoken]
www_authenticate_uri = {url}/v3
auth_url = {url}/v3
auth_type = password
username = admin
password = secret
project_name = admin
user_domain_id = default
project_domain_id = default
interface = public
"""


class Server(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class Quiet(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, fmt, *args):
        sys.stderr.write("placement: " + (fmt % args) + "\n")


def main():
    directory, port = os.path.abspath(sys.argv[1]), int(sys.argv[2])
    keystone = sys.argv[3] if len(sys.argv) > 3 else None
    os.makedirs(directory, exist_ok=True)
    conf = os.path.join(directory, "placement.conf")
    with open(conf, "w") as f:
        db = os.path.join(directory, "placement.db")
        f.write(CONF.format(db=db, auth="keystone" if keystone else "noauth2"))
        if keystone:
            f.write(KEYSTONE.format(url=keystone))
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
