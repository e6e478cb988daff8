"""Database engines for the agent: how to dump, check, prepare and restore each one.

The agent streams a dump into ``restic backup --stdin`` and ``restic dump`` into a
restore; this module knows the engines. Everything about the database reaches the
tools as whole arguments (a libpq connection string with every value quoted, MySQL
``--flag=value`` items, a Redis connection made here): a database name such as
``x; touch pwned`` or ``$(id)`` is only ever a name. The password never becomes an
argument: PostgreSQL tools get ``PGPASSWORD`` in their own environment, MySQL and
MariaDB tools a private option file (folder 0700, file 0600, removed afterwards), and
Redis is spoken to directly (``AUTH`` on the connection).

A dump counts only when it finished: each engine says how to recognise a complete
dump (PostgreSQL and MySQL dumps end with a "dump complete" comment, a Redis RDB
ends with its EOF opcode and checksum after exactly the length announced), and the
agent never lets restic finish a snapshot of anything less.

Standard library only: the agent image has nothing else.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, cast

from stash_plugin.credentials import FOLDER_PREFIX, write_private
from stash_plugin.protocol import (
    ALL_DATABASES,
    ENV_DB_HOST,
    ENV_DB_NAME,
    ENV_DB_PASSWORD,
    ENV_DB_PORT,
    ENV_DB_USER,
)

CHUNK = 1 << 20
TAIL = 8192
"""Bytes kept from the end of a stream to recognise a complete dump."""


class DatabaseError(RuntimeError):
    """A failure with a message fit for the task log (never holding a secret)."""


@dataclass(frozen=True)
class Database:
    """Where the database is and who logs in, from the step's environment."""

    engine: str
    host: str
    port: int | None
    name: str
    """A database name, or ``all``."""
    user: str | None
    password: str | None = field(default=None, repr=False)

    @property
    def everything(self) -> bool:
        return self.name == ALL_DATABASES

    def describe(self) -> str:
        """``postgres database 'app' at 10.0.0.5:5432`` (never the password)."""
        where = f"{self.host}:{self.port}" if self.port else self.host
        what = "every database" if self.everything else f"database {self.name!r}"
        if self.engine == "redis":
            what = "every database"
        return f"{self.engine} {what} at {where}"


def not_empty(db: Database, databases: str = "") -> DatabaseError:
    """The refusal of a restore into a database that holds data, and the way past it."""
    if databases:
        return DatabaseError(
            f"{db.describe()} is not empty (databases: {databases}); set "
            "databaseRestorer.overwrite: true to replace them"
        )
    return DatabaseError(
        f"{db.describe()} is not empty; set databaseRestorer.overwrite: true to replace it"
    )


def database_from_env(engine: str, environ: MutableMapping[str, str]) -> Database:
    """The database of this step; the password leaves ``environ`` (restic never sees it)."""
    host = environ.get(ENV_DB_HOST, "")
    if not host:
        raise DatabaseError(f"{ENV_DB_HOST} is not set")
    port_text = environ.get(ENV_DB_PORT, "")
    try:
        port = int(port_text) if port_text else None
    except ValueError:
        raise DatabaseError(f"{ENV_DB_PORT} is not a port number") from None
    return Database(
        engine=engine,
        host=host,
        port=port,
        name=environ.get(ENV_DB_NAME) or ALL_DATABASES,
        user=environ.get(ENV_DB_USER) or None,
        password=environ.pop(ENV_DB_PASSWORD, None) or None,
    )


# --------------------------------------------------------------------------- streams


class Source(Protocol):
    """Where a dump comes from: chunks, then whether it was complete."""

    def chunks(self) -> Iterator[bytes]: ...

    def problem(self) -> str | None:
        """None when the stream was a complete dump; else why not (after ``chunks``)."""
        ...

    def stop(self) -> None:
        """Stop producing (the agent was interrupted or restic gave up)."""
        ...


def read_chunks(fd: int, tail: bytearray) -> Iterator[bytes]:
    """Chunks of ``fd`` until EOF, keeping the last ``TAIL`` bytes in ``tail``."""
    while True:
        chunk = os.read(fd, CHUNK)
        if not chunk:
            return
        tail += chunk
        del tail[:-TAIL]
        yield chunk


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _first_error(text: str) -> str:
    for line in text.splitlines():
        if "ERROR" in line or "error" in line:
            return line.strip()
    return _last_line(text)


class ProcessSource:
    """A dump program's standard output; its standard error goes to the log afterwards.

    The agent either reads it (``chunks``) or hands the program the write end of
    restic's own input pipe (``start``) and keeps a copy of that end open, so restic
    sees the end of its input only when the agent closes it, after the program exited
    well: no copy through Python for the dumps the agent runs itself."""

    def __init__(
        self, argv: Sequence[str], env: Mapping[str, str], complete: bytes, tool: str
    ) -> None:
        self.argv, self.env = list(argv), dict(env)
        self.tool, self.complete = tool, complete
        self.err = tempfile.TemporaryFile()
        self.tail = bytearray()
        self.read = False
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self._proc is not None, "the dump was not started"
        return self._proc

    def start(self, stdout: int) -> None:
        self._proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=self.err,
        )

    def chunks(self) -> Iterator[bytes]:
        self.start(subprocess.PIPE)
        self.read = True
        assert self.proc.stdout is not None
        yield from read_chunks(self.proc.stdout.fileno(), self.tail)

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read().decode("utf-8", "replace")

    def problem(self) -> str | None:
        code = self.proc.wait()
        text = self.stderr()
        if text:
            os.write(2, text.encode())
        if code != 0:
            reason = _first_error(text) or "no error output"
            how = f"killed by signal {-code}" if code < 0 else f"exit {code}"
            return f"{self.tool} failed ({how}): {reason}"
        if self.read and self.complete not in self.tail:
            return f"{self.tool} output ended before its end-of-dump marker"
        return None

    def stop(self) -> None:
        if self._proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class StdinSource:
    """The agent's standard input: a BackupAgent's shell command pipes its dump here."""

    def __init__(self, complete: bytes | None, what: str) -> None:
        self.complete, self.what = complete, what
        self.tail = bytearray()
        self.size = 0

    def chunks(self) -> Iterator[bytes]:
        for chunk in read_chunks(0, self.tail):
            self.size += len(chunk)
            yield chunk

    def problem(self) -> str | None:
        if self.size == 0:
            return f"the {self.what} piped to stash-agent was empty (did the dump fail?)"
        if self.complete is not None and self.complete not in self.tail:
            return f"the {self.what} piped to stash-agent ended before its end-of-dump marker"
        return None

    def stop(self) -> None:
        return None


# --------------------------------------------------------------------------- engines


class Engine(Protocol):
    db: Database
    complete: bytes
    """What a complete dump holds near its end."""
    suffix: str

    def dump(self) -> Source: ...

    def check_empty(self, overwrite: bool) -> None:
        """Refuse a restore into a database that holds data, unless ``overwrite``."""
        ...

    def prepare(self, overwrite: bool) -> None:
        """Make the target ready: create the database, or empty it when overwriting."""
        ...

    def restore(self) -> Restorer: ...


class Restorer(Protocol):
    def write(self, data: bytes) -> None: ...

    def abort(self) -> None:
        """The stream was bad: stop without committing anything."""
        ...

    def finish(self) -> None:
        """The stream was complete: commit, or raise with the database's own error."""
        ...


class ProcessRestorer:
    """A restore program fed on its standard input; killed (never committed) on abort."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], tool: str) -> None:
        self.tool = tool
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
            list(argv),
            env=dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=self.err,
        )

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            write_all(self.proc.stdin.fileno(), data)
        except BrokenPipeError:
            self.proc.wait()
            raise DatabaseError(self._failure()) from None

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read().decode("utf-8", "replace")

    def _failure(self) -> str:
        text = self.stderr()
        if text:
            os.write(2, text.encode())
        return f"{self.tool} failed (exit {self.proc.returncode}): {_first_error(text)}"

    def abort(self) -> None:
        self.proc.kill()  # the connection drops: an open transaction rolls back
        self.proc.wait()

    def finish(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        if self.proc.wait() != 0:
            raise DatabaseError(self._failure())
        text = self.stderr()
        if text:
            os.write(2, text.encode())
        self.check(text)

    def check(self, stderr: str) -> None:
        return None


def _tool_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The tool's environment: ours without Stash's and restic's secrets, plus ``extra``."""
    drop = ("RESTIC_", "AWS_", "GOOGLE_", "AZURE_", "B2_", "ST_", "OS_", "DB_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(extra)
    return env


def _run(argv: Sequence[str], env: Mapping[str, str], script: str, what: str) -> str:
    proc = subprocess.run(  # noqa: S603 - argv list, no shell
        list(argv), env=dict(env), input=script, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise DatabaseError(f"{what}: {_first_error(proc.stderr) or f'exit {proc.returncode}'}")
    return proc.stdout


# ----------------------------------------------------------------- PostgreSQL


def conninfo(**values: str | int | None) -> str:
    """A libpq connection string with every value quoted, so that no value (a
    database named ``x host=evil``) can add a setting of its own."""
    parts = []
    for key, value in values.items():
        if value is None or value == "":
            continue
        text = str(value).replace("\\", "\\\\").replace("'", "\\'")
        parts.append(f"{key}='{text}'")
    return " ".join(parts)


PG_SYSTEM_DATABASES = ("postgres", "template0", "template1")


class PostgresRestorer(ProcessRestorer):
    def __init__(self, argv: Sequence[str], env: Mapping[str, str], everything: bool) -> None:
        super().__init__(argv, env, "psql")
        self.everything = everything

    def check(self, stderr: str) -> None:
        """A whole-server dump re-creates roles that may exist already; any other error
        fails the restore."""
        if not self.everything:
            return
        errors = [
            ln.strip()
            for ln in stderr.splitlines()
            if "ERROR:" in ln and not ("role" in ln and "already exists" in ln)
        ]
        if errors:
            raise DatabaseError(f"psql reported {len(errors)} error(s), first: {errors[0]}")


class Postgres:
    suffix = ".sql"

    def __init__(self, db: Database) -> None:
        self.db = db
        self.complete = (
            b"-- PostgreSQL database cluster dump complete"
            if db.everything
            else b"-- PostgreSQL database dump complete"
        )
        self.env = _tool_env({"PGPASSWORD": db.password} if db.password else {})
        self.env.pop("PGPASSFILE", None)
        self.env["PGCONNECT_TIMEOUT"] = self.env.get("PGCONNECT_TIMEOUT", "30")

    def _conn(self, database: str) -> str:
        d = self.db
        return conninfo(host=d.host, port=d.port, user=d.user, dbname=database)

    def dump(self) -> Source:
        if self.db.everything:
            argv = ["pg_dumpall", "--no-password", f"--dbname={self._conn('postgres')}"]
            return ProcessSource(argv, self.env, self.complete, "pg_dumpall")
        argv = ["pg_dump", "--no-password", f"--dbname={self._conn(self.db.name)}"]
        return ProcessSource(argv, self.env, self.complete, "pg_dump")

    def query(self, script: str, database: str = "postgres", **variables: str) -> str:
        argv = [
            "psql",
            "-X",
            "--no-password",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            *[f"--set={k}={v}" for k, v in variables.items()],
            f"--dbname={self._conn(database)}",
        ]
        return _run(argv, self.env, script, f"psql on {self.db.describe()}")

    def _databases(self) -> list[str]:
        out = self.query("SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1;")
        return [ln for ln in out.splitlines() if ln]

    def _objects(self, database: str) -> int:
        out = self.query(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%';",
            database,
        )
        return int(out.strip() or 0)

    def _user_databases(self) -> list[str]:
        return [d for d in self._databases() if d not in PG_SYSTEM_DATABASES]

    def check_empty(self, overwrite: bool) -> None:
        if overwrite:
            return
        if self.db.everything:
            busy = self._user_databases()
            if busy or self._objects("postgres"):
                raise not_empty(self.db, ", ".join(busy) or "postgres has tables")
            return
        if self.db.name in self._databases() and self._objects(self.db.name):
            raise not_empty(self.db)

    def prepare(self, overwrite: bool) -> None:
        if self.db.everything:
            if overwrite:
                for name in self._user_databases():
                    self.query('DROP DATABASE :"db" WITH (FORCE);', db=name)
            return
        exists = self.db.name in self._databases()
        if exists and overwrite:
            self.query('DROP DATABASE :"db" WITH (FORCE);', db=self.db.name)
            exists = False
        if not exists:
            self.query('CREATE DATABASE :"db";', db=self.db.name)

    def restore(self) -> Restorer:
        base = ["psql", "-X", "--no-password", "--quiet"]
        if self.db.everything:
            argv = [*base, f"--dbname={self._conn('postgres')}"]
        else:
            argv = [
                *base,
                "-v",
                "ON_ERROR_STOP=1",
                "--single-transaction",
                f"--dbname={self._conn(self.db.name)}",
            ]
        return PostgresRestorer(argv, self.env, self.db.everything)


# ----------------------------------------------------------------- MySQL / MariaDB

MYSQL_SYSTEM_DATABASES = ("mysql", "information_schema", "performance_schema", "sys")


def _option_value(value: str) -> str:
    """A value for a MySQL option file, quoted with its escapes."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def mysql_identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def mysql_literal(text: str) -> str:
    """A string literal no SQL mode can misread: the bytes in hex."""
    return f"CONVERT(X'{text.encode().hex()}' USING utf8mb4)" if text else "''"


class Mysql:
    suffix = ".sql"
    complete = b"-- Dump completed"

    def __init__(self, db: Database, folder: Path) -> None:
        self.db = db
        self.env = _tool_env({})
        for key in ("MYSQL_PWD", "MYSQL_HOST", "MYSQL_TCP_PORT"):
            self.env.pop(key, None)
        lines = ["[client]"]
        if db.password is not None:
            lines.append(f"password={_option_value(db.password)}")
        self.options = write_private(folder, "my.cnf", "\n".join(lines) + "\n")
        names = {
            "mariadb": (("mariadb-dump", "mysqldump"), ("mariadb", "mysql")),
            "mysql": (("mysqldump", "mariadb-dump"), ("mysql", "mariadb")),
        }[db.engine]
        self.dump_tool = next((t for t in names[0] if shutil.which(t)), names[0][0])
        self.client = next((t for t in names[1] if shutil.which(t)), names[1][0])

    def _base(self, tool: str) -> list[str]:
        # --defaults-extra-file must come first; every other value is one --flag=value.
        argv = [tool, f"--defaults-extra-file={self.options}", f"--host={self.db.host}"]
        if self.db.port:
            argv.append(f"--port={self.db.port}")
        if self.db.user:
            argv.append(f"--user={self.db.user}")
        return [*argv, "--protocol=tcp", "--default-character-set=utf8mb4"]

    def query(self, script: str) -> str:
        argv = [*self._base(self.client), "--batch", "--skip-column-names"]
        return _run(argv, self.env, script, f"{self.client} on {self.db.describe()}")

    def _user_databases(self) -> list[str]:
        out = self.query("SHOW DATABASES;")
        return [d for d in out.splitlines() if d and d not in MYSQL_SYSTEM_DATABASES]

    def dump(self) -> Source:
        argv = [
            *self._base(self.dump_tool),
            "--single-transaction",
            "--routines",
            "--triggers",
            "--hex-blob",
        ]
        if self.db.everything:
            names = self._user_databases()
            if not names:
                raise DatabaseError(f"{self.db.describe()}: the server has no database to dump")
            argv += ["--databases", "--", *names]
        else:
            argv += ["--", self.db.name]
        return ProcessSource(argv, self.env, self.complete, self.dump_tool)

    def _objects(self, name: str) -> int:
        lit = mysql_literal(name)
        out = self.query(
            f"SELECT (SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = {lit})"
            f" + (SELECT COUNT(*) FROM information_schema.routines WHERE routine_schema = {lit});"
        )
        return int(out.strip() or 0)

    def check_empty(self, overwrite: bool) -> None:
        if overwrite:
            return
        if self.db.everything:
            busy = self._user_databases()
            if busy:
                raise not_empty(self.db, ", ".join(busy))
        elif self._objects(self.db.name):
            raise not_empty(self.db)

    def prepare(self, overwrite: bool) -> None:
        if self.db.everything:
            if overwrite:
                for name in self._user_databases():
                    self.query(f"DROP DATABASE {mysql_identifier(name)};")
            return
        ident = mysql_identifier(self.db.name)
        if overwrite:
            self.query(f"DROP DATABASE IF EXISTS {ident};")
        self.query(f"CREATE DATABASE IF NOT EXISTS {ident};")

    def restore(self) -> Restorer:
        argv = [*self._base(self.client), "--binary-mode"]
        if not self.db.everything:
            argv.append(f"--database={self.db.name}")
        return ProcessRestorer(argv, self.env, self.client)


# ----------------------------------------------------------------- Redis


class RespError(DatabaseError):
    pass


class Resp:
    """A minimal Redis client (RESP2) over TCP or a Unix socket."""

    def __init__(self, address: str | tuple[str, int], timeout: float = 30) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        if not isinstance(address, str):
            family = socket.getaddrinfo(address[0], address[1], type=socket.SOCK_STREAM)[0][0]
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.file = cast(io.BufferedReader, self.sock.makefile("rb", buffering=CHUNK))

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    @staticmethod
    def encode(*args: bytes | str | int) -> bytes:
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            raw = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
        return b"".join(out)

    def send(self, *args: bytes | str | int) -> None:
        self.sock.sendall(self.encode(*args))

    def line(self) -> bytes:
        raw = self.file.readline()
        if not raw.endswith(b"\r\n"):
            raise DatabaseError("the Redis server closed the connection")
        return raw[:-2]

    def reply(self) -> Any:
        head = self.line()
        kind, rest = head[:1], head[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RespError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.file.read(size + 2)
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.reply() for _ in range(count)]
        raise DatabaseError(f"unexpected reply from the Redis server: {head[:40]!r}")

    def call(self, *args: bytes | str | int) -> Any:
        self.send(*args)
        return self.reply()


RDB_MAGIC = b"REDIS"
RDB_EOF = 0xFF


class RedisSource:
    """An RDB snapshot of the whole server, fetched the way a replica does (``SYNC``)."""

    def __init__(self, conn: Resp) -> None:
        self.conn = conn
        self.size = 0
        self.expected: int | None = None
        self.marker: bytes | None = None
        self.head = b""
        self.tail = bytearray()
        self.ended = False

    def chunks(self) -> Iterator[bytes]:
        c = self.conn
        # Without "capa eof" the server sends a counted RDB at once; with it, a diskless
        # server waits repl-diskless-sync-delay (5 s) for other replicas first.
        try:
            c.call("REPLCONF", "rdb-only", "1")
        except RespError:
            pass  # older servers: a plain SYNC still sends the RDB
        c.send("SYNC")
        while True:  # the server sends newlines while it prepares the snapshot
            raw = c.file.readline()
            if not raw:
                return
            if raw.strip():
                break
        if not raw.startswith(b"$"):
            raise DatabaseError(f"the Redis server refused SYNC: {raw.strip()[:200]!r}")
        header = raw.strip()[1:]
        if header.startswith(b"EOF:"):
            self.marker = header[4:]
            yield from self._until_marker()
        else:
            self.expected = int(header)
            yield from self._counted(self.expected)

    def _note(self, chunk: bytes) -> None:
        if len(self.head) < 9:
            self.head += chunk[: 9 - len(self.head)]
        self.size += len(chunk)
        self.tail += chunk
        del self.tail[:-TAIL]

    def _counted(self, remaining: int) -> Iterator[bytes]:
        while remaining > 0:
            chunk = self.conn.file.read1(min(CHUNK, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            self._note(chunk)
            yield chunk
        self.ended = True

    def _until_marker(self) -> Iterator[bytes]:
        assert self.marker is not None
        held = b""
        n = len(self.marker)
        while True:
            chunk = self.conn.file.read1(CHUNK)
            if not chunk:
                return
            held += chunk
            if held.endswith(self.marker):
                data = held[:-n]
                if data:
                    self._note(data)
                    yield data
                self.ended = True
                return
            if len(held) > n:
                data, held = held[:-n], held[-n:]
                self._note(data)
                yield data

    def problem(self) -> str | None:
        if not self.ended:
            return "the Redis server's RDB snapshot ended early (connection lost)"
        if not self.head.startswith(RDB_MAGIC) or len(self.tail) < 9 or self.tail[-9] != RDB_EOF:
            return "the Redis server sent something that is not a complete RDB snapshot"
        return None

    def stop(self) -> None:
        self.conn.close()


def _redis_connect(db: Database) -> Resp:
    try:
        conn = Resp((db.host, db.port or 6379))
    except OSError as exc:
        raise DatabaseError(f"cannot connect to {db.describe()}: {exc.strerror or exc}") from None
    if db.password is not None:
        args = ("AUTH", db.user, db.password) if db.user else ("AUTH", db.password)
        try:
            conn.call(*args)
        except RespError as exc:
            conn.close()
            raise DatabaseError(f"{db.describe()} refused the login: {exc}") from None
    return conn


def _keyspace(conn: Resp) -> dict[int, int]:
    """Keys per database number, from ``INFO keyspace``."""
    info = conn.call("INFO", "keyspace").decode()
    out = {}
    for line in info.splitlines():
        if line.startswith("db") and ":" in line:
            name, fields = line.split(":", 1)
            keys = dict(f.split("=", 1) for f in fields.split(",") if "=" in f)
            out[int(name[2:])] = int(keys.get("keys", 0))
    return out


class RedisRestorer:
    """An RDB cannot be loaded into a running server over the network: it is written
    to a private file, served by a throwaway ``redis-server`` on a Unix socket, and
    every key is copied with ``DUMP``/``RESTORE`` (TTLs kept)."""

    def __init__(self, db: Database, folder: Path) -> None:
        self.db, self.folder = db, folder
        self.path = folder / "restore.rdb"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.out: IO[bytes] = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        self.out.write(data)

    def abort(self) -> None:
        self.out.close()
        self.path.unlink(missing_ok=True)

    def finish(self) -> None:
        self.out.close()
        sock = self.folder / "redis.sock"
        server = subprocess.Popen(  # noqa: S603 - argv list, no shell
            [
                "redis-server",
                "--port",
                "0",
                "--unixsocket",
                str(sock),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.folder),
                "--dbfilename",
                self.path.name,
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            source = self._wait_loaded(sock, server)
            target = _redis_connect(self.db)
            try:
                copied = self._copy(source, target)
            finally:
                target.close()
                source.close()
            os.write(2, f"stash-agent: restored {copied} Redis keys\n".encode())
        finally:
            server.terminate()
            server.wait()
            self.path.unlink(missing_ok=True)

    @staticmethod
    def _wait_loaded(sock: Path, server: subprocess.Popen[bytes]) -> Resp:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise DatabaseError("the snapshot is not an RDB file redis-server can load")
            if sock.exists():
                conn = Resp(str(sock))
                try:
                    conn.call("PING")
                    return conn
                except RespError as exc:  # LOADING: still reading the file
                    conn.close()
                    if "LOADING" not in str(exc):
                        raise
            time.sleep(0.1)
        raise DatabaseError("the throwaway redis-server did not load the snapshot in time")

    @staticmethod
    def _copy(source: Resp, target: Resp) -> int:
        copied = 0
        for number in sorted(_keyspace(source)):
            source.call("SELECT", number)
            target.call("SELECT", number)
            cursor = b"0"
            while True:
                cursor, keys = source.call("SCAN", cursor, "COUNT", 1000)
                if keys:  # pipelined: one round trip per batch each way
                    source.sock.sendall(
                        b"".join(Resp.encode("PTTL", k) + Resp.encode("DUMP", k) for k in keys)
                    )
                    dumped = [(source.reply(), source.reply()) for _ in keys]
                    batch = [
                        Resp.encode("RESTORE", key, max(int(ttl), 0), payload, "REPLACE")
                        for key, (ttl, payload) in zip(keys, dumped, strict=True)
                        if payload is not None  # expired meanwhile
                    ]
                    target.sock.sendall(b"".join(batch))
                    for _ in batch:
                        target.reply()
                    copied += len(batch)
                if cursor == b"0":
                    break
        return copied


class Redis:
    suffix = ".rdb"
    complete = b""

    def __init__(self, db: Database, folder: Path) -> None:
        self.db, self.folder = db, folder

    def dump(self) -> Source:
        return RedisSource(_redis_connect(self.db))

    def check_empty(self, overwrite: bool) -> None:
        if overwrite:
            return
        conn = _redis_connect(self.db)
        try:
            keys = sum(_keyspace(conn).values())
        finally:
            conn.close()
        if keys:
            raise DatabaseError(
                f"{self.db.describe()} is not empty ({keys} keys); set databaseRestorer."
                "overwrite: true to replace them"
            )

    def prepare(self, overwrite: bool) -> None:
        if overwrite:
            conn = _redis_connect(self.db)
            try:
                conn.call("FLUSHALL")
            finally:
                conn.close()

    def restore(self) -> Restorer:
        return RedisRestorer(self.db, self.folder)


@contextmanager
def engine_for(db: Database) -> Iterator[Engine]:
    """The engine of ``db``, with a private folder (0700) for its option files and
    restore staging, removed afterwards whatever happens."""
    folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))
    try:
        if db.engine == "postgres":
            yield Postgres(db)
        elif db.engine in ("mysql", "mariadb"):
            yield Mysql(db, folder)
        elif db.engine == "redis":
            yield Redis(db, folder)
        else:
            raise DatabaseError(f"unknown database engine {db.engine!r}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def complete_marker(engine: str, everything: bool) -> bytes | None:
    """What a complete dump of ``engine`` holds near its end (None: no known marker)."""
    if engine == "postgres":
        return (
            b"-- PostgreSQL database cluster dump complete"
            if everything
            else b"-- PostgreSQL database dump complete"
        )
    if engine in ("mysql", "mariadb"):
        return Mysql.complete
    return None


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGINT, grace: float = 30
) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
