"""The project's story, as a real app: a Flask service using psycopg2. One route connects
without TLS, one with sslmode=require (encrypted, the server not checked), one with verify-full. Started by tests/tests/e2e/clients.rs.

usage: flask_app.py HTTP_PORT DB_HOST DB_PORT CA_FILE
"""
import sys

import psycopg2
from flask import Flask

http_port, db_host, db_port, ca_file = sys.argv[1:5]
app = Flask(__name__)


def query(settings):
    conn = psycopg2.connect(
        f"host={db_host} port={db_port} user=postgres dbname=postgres gssencmode=disable {settings}"
    )
    with conn.cursor() as cur:
        cur.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
        ssl = cur.fetchone()[0]
    conn.close()
    return "tls" if ssl else "plain"


@app.route("/orders/plain")
def plain():
    return query("sslmode=disable")


@app.route("/orders/require")
def require():
    return query("sslmode=require")


@app.route("/orders/secure")
def secure():
    return query(f"sslmode=verify-full sslrootcert={ca_file}")


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(http_port))
