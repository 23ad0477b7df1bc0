"""Who trains which shared run: the locks and claims that let workers (processes here, Slurm jobs elsewhere)
share a study's asks, a race's runs and a confirm's seeds, each run trained once.

Two ways, chosen by the study's storage. With a database server (`search.storage=postgresql://...`) the
locks are PostgreSQL advisory locks held for a transaction, and a claim is a row of `mnist_arch_claims` (the
run, the worker's host and pid, how often it beats, when it was last heard, by the server's clock): workers
on machines that share a disk for run dirs but no working file locks (NFS, often) still never train the same
run twice. With a file storage (SQLite, a journal) today's way stays: a file lock in the study folder and a
`claim.json` in the run dir. Either way a claim is kept fresh by a thread of its worker every HEARTBEAT_S,
however long an epoch takes, and is taken over when its process is gone (same host) or it has been silent
for STALE_BEATS of its own beats.
"""
import json
import os
import socket
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from filelock import FileLock

from mnist_arch.errors import ConfigError, RunError, redact
from mnist_arch.files import write_atomic

CLAIM = "claim.json"  # in a run dir while a worker trains it (file claims): host, pid, and how often it beats
HEARTBEAT_S = 30  # a claim is refreshed this often by its worker's heartbeat thread, whatever an epoch takes
STALE_BEATS = 4  # a claim unheard of for this many of its own beats is taken over (its worker stopped or hung)
LEGACY_HEARTBEAT_S = 225  # a claim.json that states no beat (written before it did): 4 beats = the old 15 minutes
SERVERS = ("postgresql",)  # storages whose database holds the claims; any other keeps file locks and claim.json
TABLE = "mnist_arch_claims"


STORAGE_PATIENCE_S = float(os.environ.get("MNIST_ARCH_STORAGE_PATIENCE_S", 120))  # a database away this long: stop


class StorageAway(RunError):
    """The study's database stopped answering mid-study (restarted, the network down)."""


def patient(call, storage: Optional[str], patience_s: Optional[float] = None):
    """call(), retried while the study's database does not answer, for STORAGE_PATIENCE_S at most (a restart
    takes seconds); then one line: the work done is kept and the same command goes on from it."""
    # Deferred: optional dependencies (the optuna extra brings both); a race of a designs file runs without them
    import sqlalchemy
    from optuna.exceptions import StorageInternalError  # Optuna's wrapping of a failed commit

    patience_s = STORAGE_PATIENCE_S if patience_s is None else patience_s
    waited, delay = 0.0, 1.0
    while True:
        try:
            return call()
        except (StorageAway, StorageInternalError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as e:
            if waited >= patience_s:
                cause = getattr(e, "orig", None) or e.__cause__ or e
                reason = str(getattr(cause, "orig", None) or cause).strip().splitlines()
                raise StorageAway(f"search.storage={redact(storage or '')}: the study's database did not answer for "
                                  f"{waited:.0f} s ({redact(reason[0] if reason else type(e).__name__)[:200]}); what "
                                  "finished is kept: run the same command again to go on") from None
            time.sleep(delay)
            waited, delay = waited + delay, min(2 * delay, 15.0)


def missing_driver(url: str) -> ConfigError:
    """The one line for a database storage whose driver is not installed."""
    dialect = url.split(":", 1)[0].split("+")[0]
    hint = {"postgresql": "pip install 'mnist-arch[postgres]': psycopg 3", "mysql": "pip install pymysql"}.get(
        dialect, "install the driver SQLAlchemy names for it")
    return ConfigError(f"search.storage={redact(url)}: the driver for {dialect} is not installed ({hint})")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _gone(host: object, pid: object) -> bool:
    """A claim's worker on this host whose process no longer runs."""
    return host == socket.gethostname() and isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 \
        and not alive(pid)


class Claims:
    """The study folder's locks and its runs' claims; `Claims.of(storage, study_dir)` picks the way."""

    def __init__(self, study_dir: Path):
        self.study_dir = Path(study_dir)

    @staticmethod
    def of(storage: Optional[str], study_dir: Path) -> "Claims":
        if storage and storage.split(":", 1)[0].split("+")[0] in SERVERS:
            return DatabaseClaims(storage, study_dir)
        return FileClaims(study_dir)

    @contextmanager
    def heartbeat(self, path: Path, every_s: float = HEARTBEAT_S) -> Iterator[None]:
        """A thread refreshing this process's claim on `path` every `every_s` while the block runs; it stops with
        the block, or when the claim is gone (let go, or taken over)."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(every_s):
                if not self._refresh(path):
                    return

        thread = threading.Thread(target=beat, name="claim-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)


class FileClaims(Claims):
    """A file lock in the study folder; claim.json in the run dir, its file's time the last beat."""

    @contextmanager
    def locked(self, name: str) -> Iterator[None]:
        self.study_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.study_dir / name)):
            yield

    def claimed(self, path: Path) -> bool:
        """Whether a live worker holds this run dir (call under the lock). A claim.json that is not what a
        worker writes (damaged, or someone else's) is judged by its file's time alone."""
        try:
            heard = (path / CLAIM).stat().st_mtime
            claim = json.loads((path / CLAIM).read_text()[:4096]) if (path / CLAIM).stat().st_size <= 4096 else {}
        except (OSError, ValueError):
            return False
        claim = claim if isinstance(claim, dict) else {}
        beat = claim.get("heartbeat_s")
        beat = beat if isinstance(beat, (int, float)) and not isinstance(beat, bool) and 0 < beat <= 3600 else \
            LEGACY_HEARTBEAT_S
        if _gone(claim.get("host"), claim.get("pid")):
            return False
        return time.time() - heard < STALE_BEATS * beat

    def claim(self, path: Path) -> None:
        """This process takes the run dir (call under the lock)."""
        path.mkdir(parents=True, exist_ok=True)
        write_atomic(path / CLAIM, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                               "heartbeat_s": HEARTBEAT_S}))

    def release(self, path: Path) -> None:
        (path / CLAIM).unlink(missing_ok=True)

    def _refresh(self, path: Path) -> bool:
        try:
            os.utime(path / CLAIM)
            return True
        except OSError:
            return False


class DatabaseClaims(Claims):
    """Advisory locks and a table of claims in the study's PostgreSQL database, timed by the server's clock."""

    def __init__(self, storage: str, study_dir: Path):
        super().__init__(study_dir)
        import sqlalchemy  # deferred: an optional dependency (the optuna and postgres extras)

        self.url, self.sql, self.started = storage, sqlalchemy, False
        try:
            self.engine = sqlalchemy.create_engine(storage, pool_pre_ping=True, connect_args={"connect_timeout": 10})
        except ImportError:  # SQLAlchemy knows the dialect; its driver is not installed
            raise missing_driver(storage) from None
        with self._connection(begin=True) as connection:
            connection.execute(sqlalchemy.text(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (run TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, "
                "heartbeat_s DOUBLE PRECISION NOT NULL, heard_at DOUBLE PRECISION NOT NULL)"))

    def _key(self, path: Path) -> str:
        """The run as every machine names it: the study's folder name and the run's path inside it (the shared
        disk may be mounted at another path elsewhere)."""
        return f"{self.study_dir.name}/{Path(path).resolve().relative_to(self.study_dir.resolve()).as_posix()}"

    @contextmanager
    def _connection(self, begin: bool = False):
        """A connection (in a transaction with `begin`). The first one failing is the storage refused (a wrong
        password, host or database: ConfigError); a later one, the database away for a while (StorageAway)."""
        try:
            with (self.engine.begin() if begin else self.engine.connect()) as connection:
                yield connection
            self.started = True
        except (self.sql.exc.OperationalError, self.sql.exc.InterfaceError) as e:
            reason = str(e.orig or e).strip().splitlines()[0] if str(e.orig or e).strip() else type(e).__name__
            kind = StorageAway if self.started else ConfigError
            raise kind(f"search.storage={redact(self.url)}: the database did not answer ({redact(reason)[:200]})") \
                from None

    @contextmanager
    def locked(self, name: str) -> Iterator[None]:
        """PostgreSQL's advisory lock on (the study, `name`) for the block's transaction: released at its end,
        by the server if this process dies."""
        key = zlib.crc32(f"{self.study_dir.name}/{name}".encode()) - (1 << 31)
        with self._connection(begin=True) as connection:
            connection.execute(self.sql.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
            yield

    def claimed(self, path: Path) -> bool:
        with self._connection() as connection:
            row = connection.execute(self.sql.text(
                f"SELECT host, pid, heartbeat_s, heard_at, EXTRACT(EPOCH FROM clock_timestamp()) FROM {TABLE} "
                "WHERE run = :run"), {"run": self._key(path)}).first()
        if row is None or _gone(row[0], row[1]):
            return False
        return float(row[4]) - row[3] < STALE_BEATS * row[2]

    def claim(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        with self._connection(begin=True) as connection:
            connection.execute(self.sql.text(
                f"INSERT INTO {TABLE} (run, host, pid, heartbeat_s, heard_at) VALUES (:run, :host, :pid, :beat, "
                "EXTRACT(EPOCH FROM clock_timestamp())) ON CONFLICT (run) DO UPDATE SET host = :host, pid = :pid, "
                "heartbeat_s = :beat, heard_at = EXTRACT(EPOCH FROM clock_timestamp())"),
                {"run": self._key(path), "host": socket.gethostname(), "pid": os.getpid(), "beat": HEARTBEAT_S})

    def release(self, path: Path) -> None:
        with self._connection(begin=True) as connection:
            connection.execute(self.sql.text(f"DELETE FROM {TABLE} WHERE run = :run AND host = :host AND pid = :pid"),
                               {"run": self._key(path), "host": socket.gethostname(), "pid": os.getpid()})

    def _refresh(self, path: Path) -> bool:
        try:
            with self._connection(begin=True) as connection:
                done = connection.execute(self.sql.text(
                    f"UPDATE {TABLE} SET heard_at = EXTRACT(EPOCH FROM clock_timestamp()) WHERE run = :run AND "
                    "host = :host AND pid = :pid"),
                    {"run": self._key(path), "host": socket.gethostname(), "pid": os.getpid()})
            return done.rowcount > 0
        except StorageAway:  # the database is away for a moment: the next beat tries again
            return True
