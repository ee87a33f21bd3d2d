"""Connect to the test server with one Python driver and one setting, run a query, print
one JSON line: {"pid": ..., "ok": bool, "error": ...}. Driven by tests/tests/e2e/clients.rs.

usage: py_driver.py DRIVER MODE HOST PORT CA_FILE

PGWIRE_TEST_SETTLE_SECONDS: wait that long after importing the driver, before connecting
(as a long-running app does between its start and its first query).
"""
import importlib
import json
import os
import ssl
import sys
import time


def psycopg2_connect(mode, host, port, ca):
    import psycopg2
    settings = {
        "disable": "sslmode=disable",
        "prefer": "sslmode=prefer",
        "require": "sslmode=require",
        "verify-full": f"sslmode=verify-full sslrootcert={ca}",
    }[mode]
    conn = psycopg2.connect(f"host={host} port={port} user=postgres dbname=postgres gssencmode=disable {settings}")
    conn.cursor().execute("select 1")
    conn.close()


def psycopg3_connect(mode, host, port, ca):
    import psycopg
    if mode.startswith("interleaved-"):
        return psycopg3_interleaved(mode.removeprefix("interleaved-"), host, port, ca)
    settings = {
        "disable": "sslmode=disable",
        "require": "sslmode=require",
        "direct": "sslmode=require sslnegotiation=direct",
    }[mode]
    with psycopg.connect(f"host={host} port={port} user=postgres dbname=postgres gssencmode=disable {settings}") as conn:
        conn.execute("select 1")


def psycopg3_interleaved(mode, host, port, ca):
    """Four async connections opened at once on one thread (one event loop): their TLS
    handshakes interleave on that thread."""
    import asyncio
    import psycopg
    settings = {
        "require": "sslmode=require",
        "verify-full": f"sslmode=verify-full sslrootcert={ca}",
    }[mode]
    conninfo = f"host={host} port={port} user=postgres dbname=postgres gssencmode=disable {settings}"

    async def one():
        conn = await psycopg.AsyncConnection.connect(conninfo)
        await conn.execute("select 1")
        await conn.close()

    async def run():
        await asyncio.gather(*(one() for _ in range(4)))

    asyncio.run(run())


def asyncpg_connect(mode, host, port, ca):
    import asyncio
    import asyncpg

    async def run():
        kwargs = {"ssl": False} if mode == "disable" else {"ssl": "require"}
        if mode == "verify":
            kwargs = {"ssl": ssl.create_default_context(cafile=ca)}
        if mode == "direct":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["postgresql"])
            kwargs = {"ssl": ctx, "direct_tls": True}
        conn = await asyncpg.connect(host=host, port=port, user="postgres", database="postgres", timeout=10, **kwargs)
        await conn.fetchval("select 1")
        await conn.close()

    asyncio.run(run())


def pg8000_connect(mode, host, port, ca):
    import pg8000.native
    if mode == "disable":
        context = False
    elif mode == "unverified":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=ca)
    conn = pg8000.native.Connection("postgres", host=host, port=port, database="postgres", ssl_context=context)
    conn.run("select 1")
    conn.close()


DRIVERS = {
    "psycopg2": psycopg2_connect,
    "psycopg3": psycopg3_connect,
    "asyncpg": asyncpg_connect,
    "pg8000": pg8000_connect,
}


def main():
    driver, mode, host, port, ca = sys.argv[1:6]
    result = {"pid": os.getpid(), "ok": True}
    module = {"psycopg2": "psycopg2", "psycopg3": "psycopg", "asyncpg": "asyncpg", "pg8000": "pg8000.native"}
    importlib.import_module(module[driver])
    time.sleep(float(os.environ.get("PGWIRE_TEST_SETTLE_SECONDS", "0")))
    try:
        DRIVERS[driver](mode, host, int(port), ca)
    except Exception as exc:  # the test decides whether a failure is expected
        result.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
