"""A real OpenStack Keystone for the tests: the `keystone` package from PyPI on SQLite with
Fernet tokens, bootstrapped with user `admin` (password `secret`, role admin on project
`admin`), served by a threaded stdlib WSGI server on 127.0.0.1.

Usage: keystone_server.py DIR

Writes DIR/keystone.conf and the database, then, once it serves: an application credential of
`admin` as DIR/credential.toml (`id`, `secret`: what hvagent's credential_file holds), a
password token of `admin` as DIR/admin-token, and prints "READY <port>".
"""

import json
import os
import socketserver
import subprocess
import sys
import threading
import urllib.request
import wsgiref.simple_server

CONF = """[DEFAULT]
[database]
connection = sqlite:///{dir}/keystone.db
[token]
provider = fernet
expiration = 3600
[fernet_tokens]
key_repository = {dir}/fernet-keys
[fernet_receipts]
key_repository = {dir}/fernet-keys
[credential]
key_repository = {dir}/credential-keys
"""


class Server(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
    daemon_threads = True


class Quiet(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, fmt, *args):
        sys.stderr.write("keystone: " + (fmt % args) + "\n")


def manage(conf, *args):
    subprocess.run(
        [sys.executable, "-c", "import sys; from keystone.cmd.manage import main; sys.exit(main())",
         "--config-file", conf, *args],
        check=True, stdout=subprocess.DEVNULL,
    )


def call(url, body, token=None):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("X-Auth-Token", token)
    with urllib.request.urlopen(request) as answer:
        return answer.headers.get("X-Subject-Token"), json.loads(answer.read())


def main():
    # Keystone logs to stdout: it goes to stderr, stdout carries only the READY line.
    ready = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    directory = os.path.abspath(sys.argv[1])
    os.makedirs(directory, exist_ok=True)
    conf = os.path.join(directory, "keystone.conf")
    with open(conf, "w") as f:
        f.write(CONF.format(dir=directory))
    server = wsgiref.simple_server.make_server("127.0.0.1", 0, lambda e, s: [], server_class=Server, handler_class=Quiet)
    port = server.server_address[1]
    url = f"http://127.0.0.1:{port}"
    manage(conf, "db_sync")
    manage(conf, "fernet_setup", "--keystone-user", "root", "--keystone-group", "root")
    manage(conf, "credential_setup", "--keystone-user", "root", "--keystone-group", "root")
    manage(conf, "bootstrap", "--bootstrap-password", "secret", "--bootstrap-public-url", url + "/v3")
    os.environ["OS_KEYSTONE_CONFIG_FILES"] = conf
    # Keystone's WSGI set-up parses the command line as its own.
    sys.argv = sys.argv[:1]
    from keystone.server.wsgi import initialize_public_application

    server.set_app(initialize_public_application())
    threading.Thread(target=server.serve_forever, daemon=True).start()

    token, body = call(url + "/v3/auth/tokens", {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"id": "default"}, "password": "secret"}}},
        "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}})
    user = body["token"]["user"]["id"]
    _, body = call(f"{url}/v3/users/{user}/application_credentials",
                   {"application_credential": {"name": "hvagent", "roles": [{"name": "admin"}]}}, token)
    credential = body["application_credential"]
    with open(os.path.join(directory, "credential.toml"), "w") as f:
        f.write(f'id = "{credential["id"]}"\nsecret = "{credential["secret"]}"\n')
    with open(os.path.join(directory, "admin-token"), "w") as f:
        f.write(token)
    print("READY", port, file=ready, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
