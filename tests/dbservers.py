"""Throwaway database servers for tests: PostgreSQL, MariaDB and Redis on 127.0.0.1.

Each server runs from the Debian packages' binaries with its data under a temporary
folder, on a free loopback port, with password authentication for TCP clients, and is
stopped (and its folder removed) by ``stop()``. As root, the servers run as the
packages' own users (``postgres``, ``mysql``, ``redis``) through ``runuser``, since
PostgreSQL and MariaDB refuse to run as root. Passwords never appear in a server's
argv (they go through files or SQL), so ``ps`` checks see only what the agent does.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stash_plugin.databases import conninfo

USER = "dumper"
PASSWORD = "Db-pa55word-not-in-argv-7f3a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (Debian package postgresql)")
    return found[-1]


def _as(user: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run as ``user`` when we are root (the servers refuse root)."""
    if os.geteuid() != 0:
        return list(argv)
    return ["runuser", "-u", user, "--", *argv]


def _owned_tmp(user: str, prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    os.chmod(path, 0o700)
    return path


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


@dataclass
class Server:
    engine: str
    port: int
    root: Path
    proc: subprocess.Popen[bytes]
    user: str = USER
    password: str = PASSWORD
    env: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def url(self, database: str | None = None) -> str:
        scheme = {"postgres": "postgres", "mariadb": "mysql", "redis": "redis"}[self.engine]
        return f"{scheme}://127.0.0.1:{self.port}" + (f"/{database}" if database else "")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ clients

    def client_env(self) -> dict[str, str]:
        env = {**os.environ}
        if self.engine == "postgres":
            env["PGPASSWORD"] = self.password
        elif self.engine == "mariadb":
            env["MYSQL_PWD"] = self.password
        else:
            env["REDISCLI_AUTH"] = self.password
        return env

    def sql(self, script: str, database: str | None = None, check: bool = True) -> str:
        """Run SQL as the test's superuser; tab-separated rows back."""
        if self.engine == "postgres":
            argv = [
                "psql",
                "-X",
                "-At",
                "-F",
                "\t",
                "-v",
                "ON_ERROR_STOP=1",
                "--dbname="
                + conninfo(
                    host="127.0.0.1", port=self.port, user=self.user, dbname=database or "postgres"
                ),
            ]
        elif self.engine == "mariadb":
            argv = [
                "mariadb",
                "--default-character-set=utf8mb4",
                "--batch",
                "--skip-column-names",
                "--host=127.0.0.1",
                f"--port={self.port}",
                f"--user={self.user}",
                *([f"--database={database}"] if database else []),
            ]
        else:
            raise ValueError("sql() is for PostgreSQL and MariaDB")
        proc = subprocess.run(
            argv, input=script, env=self.client_env(), capture_output=True, text=True
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{self.engine} SQL failed: {proc.stderr}")
        return proc.stdout

    def redis(self, *args: str, db: int = 0) -> str:
        argv = ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "-n", str(db), *args]
        proc = subprocess.run(argv, env=self.client_env(), capture_output=True, check=True)
        return proc.stdout.decode("utf-8", "replace")


# --------------------------------------------------------------------------- starters


def start_postgres() -> Server:
    root = _owned_tmp("postgres", "stash-test-pg-")
    data, port = root / "data", free_port()
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres")
    subprocess.run(
        _as(
            "postgres",
            [
                _pg_bin("initdb"),
                "-D",
                str(data),
                f"--username={USER}",
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=peer",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ],
        ),
        check=True,
        capture_output=True,
    )
    pwfile.unlink()
    proc = subprocess.Popen(
        _as(
            "postgres",
            [
                _pg_bin("postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={root}",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "synchronous_commit=off",
            ],
        ),
        stdout=subprocess.DEVNULL,
        stderr=open(root / "server.log", "wb"),  # noqa: SIM115 - kept for the server's life
    )
    server = Server("postgres", port, root, proc)
    _wait_port(port, proc, "postgres")
    for _ in range(100):  # listening comes slightly before accepting logins
        if (
            subprocess.run(
                ["pg_isready", "-h", "127.0.0.1", "-p", str(port)], capture_output=True
            ).returncode
            == 0
        ):
            break
        time.sleep(0.1)
    return server


def start_mariadb() -> Server:
    root = _owned_tmp("mysql", "stash-test-mariadb-")
    data, port, sock = root / "data", free_port(), root / "mysqld.sock"
    subprocess.run(
        [
            "mariadb-install-db",
            "--no-defaults",
            f"--datadir={data}",
            "--user=mysql",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
        ],
        check=True,
        capture_output=True,
    )
    argv = [
        "mariadbd",
        "--no-defaults",
        f"--datadir={data}",
        f"--socket={sock}",
        f"--port={port}",
        "--bind-address=127.0.0.1",
        f"--pid-file={root / 'mysqld.pid'}",
        "--skip-log-bin",
        "--innodb-flush-log-at-trx-commit=0",
        "--innodb-doublewrite=0",
        "--skip-name-resolve",
        "--log-error=" + str(root / "server.log"),
    ]
    if os.geteuid() == 0:
        argv.append("--user=mysql")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server("mariadb", port, root, proc)
    _wait_port(port, proc, "mariadbd")
    quoted = PASSWORD.replace("'", "''")
    setup = (
        f"CREATE USER '{USER}'@'%' IDENTIFIED BY '{quoted}';"
        f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'%' WITH GRANT OPTION;"
    )
    subprocess.run(
        ["mariadb", "--no-defaults", f"--socket={sock}", "--user=root"],
        input=setup.encode(),
        check=True,
        capture_output=True,
    )
    return server


def start_redis() -> Server:
    root = _owned_tmp("redis", "stash-test-redis-") if _has_user("redis") else None
    root = root or Path(tempfile.mkdtemp(prefix="stash-test-redis-"))
    port = free_port()
    conf = root / "redis.conf"
    conf.write_text(
        f'port {port}\nbind 127.0.0.1\ndir {root}\nsave ""\nappendonly no\n'
        f"requirepass {PASSWORD}\nprotected-mode yes\n"
    )
    if os.geteuid() == 0 and _has_user("redis"):
        shutil.chown(conf, "redis")
        argv = _as("redis", ["redis-server", str(conf)])
    else:
        argv = ["redis-server", str(conf)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server("redis", port, root, proc, user="")
    _wait_port(port, proc, "redis-server")
    return server


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


STARTERS = {"postgres": start_postgres, "mariadb": start_mariadb, "redis": start_redis}


# --------------------------------------------------------------------------- data

PG_SEED = """
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text);
CREATE TABLE orders (
  id bigint PRIMARY KEY, customer_id int REFERENCES customers(id), amount numeric(12,2),
  note text);
CREATE TABLE blobs (id int PRIMARY KEY, data bytea NOT NULL);
CREATE TABLE audit (id serial PRIMARY KEY, order_id bigint, at_amount numeric(12,2));
CREATE FUNCTION log_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit(order_id, at_amount) VALUES (NEW.id, NEW.amount); RETURN NEW; END $$;
CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION log_order();
INSERT INTO customers
  SELECT g, 'Kundin ' || g || ' Grüße 名前 ' || chr(1000 + g % 500), 'c' || g || '@example.org'
  FROM generate_series(1, 20000) g;
INSERT INTO orders
  SELECT g, 1 + g % 20000, (g % 997) * 1.25, 'ñote ' || md5(g::text)
  FROM generate_series(1, {rows}) g;
INSERT INTO blobs
  SELECT g, decode(repeat(md5(g::text), 16), 'hex') || '\\x00ff00'::bytea
  FROM generate_series(1, 2000) g;
CREATE VIEW big_orders AS SELECT o.id, c.name, o.amount
  FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.amount > 1000;
"""

PG_TABLES = ("customers", "orders", "blobs", "audit")


def seed_postgres(server: Server, database: str, rows: int = 300_000) -> None:
    server.sql(f'CREATE DATABASE "{database}";')
    server.sql(PG_SEED.replace("{rows}", str(rows)), database)


def postgres_state(server: Server, database: str) -> dict[str, str]:
    """Row count and checksum of every table, plus the view, trigger and function."""
    out = {}
    for table in PG_TABLES:
        out[table] = server.sql(
            f"SELECT count(*) || ':' || md5(coalesce(string_agg(t::text, '|' ORDER BY t.id), ''))"
            f" FROM {table} t;",
            database,
        ).strip()
    out["view"] = server.sql("SELECT count(*) FROM big_orders;", database).strip()
    out["trigger"] = server.sql(
        "SELECT string_agg(tgname, ',') FROM pg_trigger WHERE NOT tgisinternal;", database
    ).strip()
    out["function"] = server.sql(
        "SELECT prosrc FROM pg_proc WHERE proname = 'log_order';", database
    ).strip()
    return out


MARIADB_SEED = """
CREATE DATABASE `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
USE `{db}`;
CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(200) NOT NULL, email VARCHAR(200));
CREATE TABLE orders (id BIGINT PRIMARY KEY, customer_id INT, amount DECIMAL(12,2), note TEXT,
  FOREIGN KEY (customer_id) REFERENCES customers(id)) ENGINE=InnoDB;
CREATE TABLE blobs (id INT PRIMARY KEY, data LONGBLOB NOT NULL);
CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, order_id BIGINT, at_amount DECIMAL(12,2));
CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW
  INSERT INTO audit (order_id, at_amount) VALUES (NEW.id, NEW.amount);
CREATE PROCEDURE order_total(IN c INT, OUT total DECIMAL(14,2))
  SELECT COALESCE(SUM(amount), 0) INTO total FROM orders WHERE customer_id = c;
INSERT INTO customers SELECT seq,
  CONCAT('Kundin ', seq, ' Grüße 名前 ', ELT(1 + seq % 4, 'α', 'ß', '名', '😀')),
  CONCAT('c', seq, '@example.org') FROM seq_1_to_20000;
INSERT INTO orders SELECT seq, 1 + seq % 20000, (seq % 997) * 1.25, CONCAT('ñote ', MD5(seq))
  FROM seq_1_to_{rows};
INSERT INTO blobs SELECT seq, CONCAT(UNHEX(REPEAT(MD5(seq), 16)), X'00FF00') FROM seq_1_to_2000;
CREATE VIEW big_orders AS SELECT o.id, c.name, o.amount
  FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.amount > 1000;
"""
MARIADB_TABLES = ("customers", "orders", "blobs", "audit")


def seed_mariadb(server: Server, database: str, rows: int = 300_000) -> None:
    server.sql(MARIADB_SEED.replace("{db}", database).replace("{rows}", str(rows)))


def mariadb_state(server: Server, database: str) -> dict[str, str]:
    """Row count and checksum of every table, plus the view, trigger and procedure."""
    db = database.replace("`", "``")
    out = {}
    for table in MARIADB_TABLES:
        count = server.sql(f"SELECT COUNT(*) FROM `{db}`.{table};").strip()
        checksum = server.sql(f"CHECKSUM TABLE `{db}`.{table} EXTENDED;").split("\t")[-1].strip()
        out[table] = f"{count}:{checksum}"
    out["view"] = server.sql(f"SELECT COUNT(*) FROM `{db}`.big_orders;").strip()
    lit = database.replace("'", "''")
    out["trigger"] = server.sql(
        f"SELECT GROUP_CONCAT(trigger_name) FROM information_schema.triggers "
        f"WHERE trigger_schema = '{lit}';"
    ).strip()
    out["routine"] = server.sql(
        f"SELECT GROUP_CONCAT(CONCAT(routine_name, ':', MD5(routine_definition))) "
        f"FROM information_schema.routines WHERE routine_schema = '{lit}';"
    ).strip()
    return out


def seed_redis(server: Server, keys: int = 100_000, db: int = 0, tag: str = "") -> None:
    """Strings (binary and unicode), hashes, lists, sets, sorted sets, some with TTLs."""
    out = bytearray()
    from stash_plugin.databases import Resp

    out += Resp.encode("SELECT", db)
    for i in range(keys):
        kind = i % 5
        key = f"{tag}k:{i}:ключ"
        if kind == 0:
            out += Resp.encode("SET", key, bytes([i % 256, 0, 255]) + f"wert {i} 名".encode())
        elif kind == 1:
            out += Resp.encode("HSET", key, "a", i, "b", f"ü{i}")
        elif kind == 2:
            out += Resp.encode("RPUSH", key, "x", i, "z")
        elif kind == 3:
            out += Resp.encode("SADD", key, "m1", f"m{i}")
        else:
            out += Resp.encode("ZADD", key, i, "one", i * 2, "two")
        if i % 10 == 0:
            out += Resp.encode("EXPIRE", key, 86_400)
    subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(server.port), "--pipe"],
        input=bytes(out),
        env=server.client_env(),
        check=True,
        capture_output=True,
    )


def _read(kind: bytes, key: bytes) -> bytes:
    """The command that reads a whole value of ``kind``."""
    from stash_plugin.databases import Resp

    args: dict[bytes, tuple[Any, ...]] = {
        b"string": ("GET", key),
        b"hash": ("HGETALL", key),
        b"list": ("LRANGE", key, 0, -1),
        b"set": ("SMEMBERS", key),
        b"zset": ("ZRANGE", key, 0, -1, "WITHSCORES"),
    }
    return Resp.encode(*args[kind])


def redis_state(server: Server) -> dict[int, str]:
    """Per database: key count and a checksum over every key's type, value and whether
    it expires (values compared as sets where Redis keeps no order: set members, hash
    fields)."""
    from stash_plugin.databases import Resp

    conn = Resp(("127.0.0.1", server.port))
    conn.call("AUTH", server.password)
    out = {}
    info = conn.call("INFO", "keyspace").decode()
    for line in info.splitlines():
        if not line.startswith("db"):
            continue
        number = int(line.split(":", 1)[0][2:])
        conn.call("SELECT", number)
        digest = hashlib.sha256()
        keys = []
        cursor = b"0"
        while True:
            cursor, found = conn.call("SCAN", cursor, "COUNT", 5000)
            keys += found
            if cursor == b"0":
                break
        keys.sort()
        for start in range(0, len(keys), 1000):  # pipelined: one round trip per batch
            batch = keys[start : start + 1000]
            conn.sock.sendall(b"".join(Resp.encode("TYPE", k) for k in batch))
            types = [conn.reply() for _ in batch]
            conn.sock.sendall(
                b"".join(_read(t, k) for k, t in zip(batch, types, strict=True))
                + b"".join(Resp.encode("PTTL", k) for k in batch)
            )
            values = [conn.reply() for _ in batch]
            ttls = [int(conn.reply()) > 0 for _ in batch]
            for key, kind, value, ttl in zip(batch, types, values, ttls, strict=True):
                canonical = sorted(value) if kind in (b"set", b"hash") else value
                digest.update(repr((key, kind, canonical, ttl)).encode())
        out[number] = f"{len(keys)}:{digest.hexdigest()}"
    conn.close()
    return out
