"""A local cluster: acceptor processes on 127.0.0.1, described by one directory (DESIGN §9).

Theory of operation
===================

Everything about a cluster is in its directory, so every command (`paxwal cluster up|down|
status`, `paxwal load`, the chaos runner) works from any shell given only `--dir`:

    DIR/cluster.json       the configuration: each acceptor's port, wal_start, segment size
    DIR/<acceptor>/        the acceptor's data: timelines/<timeline>/ with each timeline's
                           control file and WAL segments (impl/acceptor_server.py rule 10)
    DIR/logs/<node>.log    the stderr of each process (appended across restarts)
    DIR/pids/<node>.pid    the pid of a running process, written by whoever started it
    DIR/remote/            the object store (LocalFs) the acceptors offload WAL to, unless
                           cluster.json names another (`cluster up --remote`)
    DIR/run/<timeline>/    one run directory per timeline (each its own consensus, checked
                           as its own run): each node's trace of that timeline
                           (<node>.ndjson), run.json naming the cluster and the timeline's
                           wal_start, and history.jsonl, the clients' history of it
    DIR/pageserver/        the pageserver's data (impl/pageserver.py); its objects live in
                           the same object store under the prefix `pageserver_prefix`

Rules:

1. The configuration is written once, by the first `up`, atomically; later `up`s start the
   same cluster again from its data (ports, WAL start and segment size never change, since
   a node's data depends on them).
2. Each node is its own OS process in its own session, so it outlives the command that
   started it and a signal to that command's process group does not reach it.  A pid file
   names a process of ours only while that process runs with our command line: a stale pid
   file (the process died, the pid was reused) is ignored, so `down` never signals a
   stranger.
3. A node is up once it accepts connections; `up` waits for that, and reports the last
   lines of the node's log if the process exits first (a damaged directory, a busy port).
4. `status` asks each acceptor over the wire (StatusRequest, answered beside the core) and
   never changes anything.
5. The pageserver (issue 8) is one more node, `pageserver`, started after the acceptors and
   stopped before them (its SIGTERM checkpoints and uploads while they still run).  It
   writes no trace: it is not in the spec, and run.json does not name it.  A new cluster has
   one unless created with `pageserver=False` (`cluster up --no-pageserver`); everything
   written to the WAL must then be page WAL records (impl/pagewal.py), as `paxwal load`
   writes them.
6. Computes (impl/compute.py) are processes too, named by the user, each with its record in
   DIR/computes/<name>.json (branch, mode, port), pid file and log; a compute is up once its
   process writes DIR/computes/<name>.ready (its pid) after it starts serving; a primary's proposer is
   named in its branch's run.json before it starts, so its trace is checked.  `down` stops
   them first.  Every compute's Postgres port takes user `paxwal`, database `paxwal` and the
   cluster's `compute_password`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

from impl.storage import fsync_dir
from impl.wal import DEFAULT_SEGMENT_SIZE
from impl.wire import (
    FrameDecoder, PageserverStatus, PageserverStatusRequest, ProtocolError, StatusRequest, StatusResponse, check_timeline_id,
    encode,
)

__all__ = ["Cluster", "ClusterConfig", "ClusterError", "ComputeRecord", "NodeStatus", "DEFAULT_DIR", "PAGESERVER"]

# Where commands look for the cluster without --dir (DESIGN §9).
DEFAULT_DIR = Path(".paxwal")
CONFIG_FILE = "cluster.json"
CONFIG_VERSION = 3  # 2: acceptors keep one directory, trace and key prefix per timeline; 3: computes

# How long `up` waits for a node to listen, and `down` for a node to exit after SIGTERM
# before it is killed.
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
# A status query that takes longer than this reports the node as not answering.
STATUS_TIMEOUT = 2.0
# The pageserver's node name (pid file, log, data directory).
PAGESERVER = "pageserver"
# The load process's node name (impl/chaos.py), which no compute may take.
LOAD_NODE = "p1"
# The account of every compute's Postgres port; the password is the cluster's.
COMPUTE_USER = "paxwal"
COMPUTE_DATABASE = "paxwal"
COMPUTES_DIR = "computes"
# How long `compute start` waits: an election, then the pageserver catching up.
COMPUTE_START_TIMEOUT = 90.0
# The log lines quoted when a node fails to start.
LOG_TAIL_LINES = 5


class ClusterError(Exception):
    """A cluster command cannot do what it was asked (one line for the user)."""


@attrs.frozen
class ClusterConfig:
    """What DIR/cluster.json holds.

    Attributes:
        acceptors: acceptor id -> its TCP port on 127.0.0.1, in id order.
        wal_start: the LSN every WAL starts at.
        segment_size: the WAL segment size of every acceptor.
        remote: the object store the acceptors offload WAL to: a directory (relative to the
            cluster's directory unless absolute) or s3://BUCKET[/PREFIX].
        remote_prefix: the key prefix of the WALs' objects in it; timeline T's are under
            ``<remote_prefix>/<T>`` (so main's keys are those of the one-timeline layout).
        pageserver_port: the pageserver's page service port on 127.0.0.1, or None for none.
        pageserver_prefix: the key prefix of the pageserver's objects in the same store.
        compute_password: the password of the computes' Postgres port (user and database
            `paxwal`), made at random when the cluster is created.
    """

    acceptors: dict[str, int]
    wal_start: int = 0
    segment_size: int = DEFAULT_SEGMENT_SIZE
    remote: str = "remote"
    remote_prefix: str = "timelines"
    pageserver_port: int | None = None
    pageserver_prefix: str = "pageserver"
    compute_password: str = attrs.field(default="", repr=False)

    def to_json(self) -> str:
        return json.dumps({"version": CONFIG_VERSION, **attrs.asdict(self)}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path) -> ClusterConfig:
        try:
            data = json.loads(text)
            version = data.pop("version")
            if version != CONFIG_VERSION:
                raise ValueError(f"version {version!r}, not {CONFIG_VERSION} (made by another paxwal: use a new DIR)")
            acceptors = data.pop("acceptors")
            if not acceptors or not all(isinstance(p, int) and 0 < p < 65536 for p in acceptors.values()):
                raise ValueError("acceptors must map ids to TCP ports")
            return cls(dict(acceptors), **data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ClusterError(f"{where} is not a paxwal cluster configuration: {exc}") from None


@attrs.frozen
class NodeStatus:
    """One acceptor as `status` sees it: its process and, if it answered, its state."""

    node: str
    port: int
    pid: int | None
    state: StatusResponse | None
    error: str | None  # why it did not answer


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 now (the OS picks them)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def _write_atomically(path: Path, text: str) -> None:
    temp = path.with_name(path.name + ".tmp")
    with open(temp, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temp, path)
    fsync_dir(path.parent)


class Cluster:
    """The cluster in one directory (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.run_dir = self.dir / "run"

    def timeline_run_dir(self, timeline: str = "main") -> Path:
        """The run directory of `timeline`: its nodes' traces, run.json and history."""
        return self.run_dir / check_timeline_id(timeline)

    def history_path(self, timeline: str = "main") -> Path:
        """The clients' history of `timeline` (impl/load.py)."""
        return self.timeline_run_dir(timeline) / "history.jsonl"

    @property
    def history_file(self) -> Path:
        """The clients' history of main."""
        return self.history_path("main")

    # -- configuration ------------------------------------------------------------------

    @property
    def config_file(self) -> Path:
        return self.dir / CONFIG_FILE

    def exists(self) -> bool:
        return self.config_file.exists()

    def load(self) -> ClusterConfig:
        """The configuration; ClusterError if DIR holds no cluster."""
        try:
            text = self.config_file.read_text()
        except FileNotFoundError:
            raise ClusterError(f"no cluster in {self.dir} (no {CONFIG_FILE}; start one with `paxwal cluster up --dir {self.dir}`)") from None
        return ClusterConfig.from_json(text, self.config_file)

    def create(self, acceptors: int, wal_start: int = 0, segment_size: int = DEFAULT_SEGMENT_SIZE,
               remote: str = "remote", pageserver: bool = True) -> ClusterConfig:
        """Write a new configuration with `acceptors` acceptors a1..aN on free ports (rule 1),
        and a pageserver on another if `pageserver` (rule 5)."""
        if acceptors < 1:
            raise ClusterError(f"a cluster needs at least one acceptor, not {acceptors}")
        if self.exists():
            raise ClusterError(f"{self.config_file} exists already")
        names = [f"a{i}" for i in range(1, acceptors + 1)]
        ports = free_ports(acceptors + 1)
        config = ClusterConfig(dict(zip(names, ports)), wal_start, segment_size, remote,
                               pageserver_port=ports[-1] if pageserver else None,
                               compute_password=secrets.token_urlsafe(12))
        for sub in ("logs", "pids", "run", COMPUTES_DIR):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        _write_atomically(self.config_file, config.to_json())
        self._write_run_json(config, proposers=[])
        return config

    # -- run.json: the cluster the traces describe ---------------------------------------

    @contextlib.contextmanager
    def _run_json_locked(self, timeline: str) -> Iterator[dict]:
        run_dir = self.timeline_run_dir(timeline)
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "run.json.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = run_dir / "run.json"
            run = json.loads(path.read_text()) if path.exists() else {}
            yield run
            _write_atomically(path, json.dumps(run, indent=1) + "\n")

    def _write_run_json(self, config: ClusterConfig, proposers: Sequence[str], timeline: str = "main",
                        wal_start: int | None = None) -> None:
        with self._run_json_locked(timeline) as run:
            start = config.wal_start if wal_start is None else wal_start
            run["cluster"] = {"proposers": list(proposers), "acceptors": list(config.acceptors), "wal_start": start}

    def add_proposer(self, name: str, timeline: str = "main", wal_start: int | None = None) -> None:
        """Name proposer `name` in `timeline`'s run.json, so the checker expects its trace.

        The first proposer of a timeline other than main writes its run.json, with the
        timeline's `wal_start` (None: the cluster's); a `wal_start` other than the one there
        is a ClusterError (the acceptors would refuse the proposer anyway).
        """
        config = self.load()
        with self._run_json_locked(timeline) as run:
            start = config.wal_start if wal_start is None else wal_start
            if "cluster" not in run:
                run["cluster"] = {"proposers": [], "acceptors": list(config.acceptors), "wal_start": start}
            if run["cluster"]["wal_start"] != start:
                raise ClusterError(f"timeline {timeline}'s WAL starts at {run['cluster']['wal_start']}, not at {start}")
            proposers = run["cluster"]["proposers"]
            if name not in proposers:
                proposers.append(name)
                proposers.sort()

    # -- processes ------------------------------------------------------------------------

    def pid_file(self, node: str) -> Path:
        return self.dir / "pids" / f"{node}.pid"

    def log_file(self, node: str) -> Path:
        return self.dir / "logs" / f"{node}.log"

    def acceptor_command(self, node: str, config: ClusterConfig) -> list[str]:
        return [
            sys.executable, "-m", "impl.cli", "acceptor", "--node", node, "--dir", str(self.dir / node),
            "--port", str(config.acceptors[node]),
            "--segment-size", str(config.segment_size), "--trace-dir", str(self.run_dir),
            "--remote", self.remote_location(config), "--remote-prefix", config.remote_prefix,
        ]

    def pageserver_command(self, config: ClusterConfig) -> list[str]:
        assert config.pageserver_port is not None
        acceptors = ",".join(f"{node}={port}" for node, port in config.acceptors.items())
        return [
            sys.executable, "-m", "impl.cli", "pageserver", "--node", PAGESERVER, "--dir", str(self.dir / PAGESERVER),
            "--port", str(config.pageserver_port), "--acceptors", acceptors, "--wal-start", str(config.wal_start),
            "--remote", self.remote_location(config), "--remote-prefix", config.pageserver_prefix,
        ]

    def node_port(self, node: str, config: ClusterConfig) -> int:
        if node == PAGESERVER:
            assert config.pageserver_port is not None
            return config.pageserver_port
        return config.acceptors[node]

    def nodes(self, config: ClusterConfig) -> list[str]:
        """Every node of the cluster, in start order (rule 5)."""
        return [*config.acceptors, *([PAGESERVER] if config.pageserver_port is not None else [])]

    def remote_location(self, config: ClusterConfig) -> str:
        """The object store's location as the acceptor processes are given it."""
        if config.remote.startswith("s3://"):
            return config.remote
        return str(self.dir.resolve() / config.remote)

    def pid(self, node: str) -> int | None:
        """The pid of node's running process, or None (rule 2)."""
        try:
            pid = int(self.pid_file(node).read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        return pid if _is_node_process(cmdline, node, self.dir) else None

    def spawn(self, node: str, command: list[str]) -> subprocess.Popen[bytes]:
        """Start `command` as node's process in its own session, stderr to its log (rule 2)."""
        if self.pid(node) is not None:
            raise ClusterError(f"{node} is running already (pid {self.pid(node)})")
        with open(self.log_file(node), "ab") as log:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                    cwd=Path(__file__).resolve().parents[1])
        _write_atomically(self.pid_file(node), f"{proc.pid}\n")
        return proc

    def start_node(self, node: str, config: ClusterConfig) -> subprocess.Popen[bytes]:
        """Start node `node` (an acceptor, or the pageserver) and wait until it listens (rule 3)."""
        command = self.pageserver_command(config) if node == PAGESERVER else self.acceptor_command(node, config)
        port = self.node_port(node, config)
        proc = self.spawn(node, command)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise ClusterError(f"{node} exited with status {proc.returncode} while starting: {self.log_tail(node)}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
            if time.monotonic() > deadline:
                proc.kill()
                raise ClusterError(f"{node} did not listen on port {port} within {START_TIMEOUT:.0f} s: {self.log_tail(node)}")
            time.sleep(0.05)


    def log_tail(self, node: str) -> str:
        try:
            lines = self.log_file(node).read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return " | ".join(lines[-LOG_TAIL_LINES:]) or "(empty log)"

    def signal(self, node: str, signum: int) -> bool:
        """Send `signum` to node's process; False if it is not running."""
        pid = self.pid(node)
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        return True

    def kill(self, node: str) -> bool:
        """kill -9 node's process, as a crash, and forget its pid file; False if it was not
        running."""
        killed = self.signal(node, signal.SIGKILL)
        self.pid_file(node).unlink(missing_ok=True)
        return killed

    def stop(self, node: str, timeout: float = STOP_TIMEOUT) -> str:
        """Stop node's process: SIGTERM (and SIGCONT, in case it is paused), then SIGKILL
        after `timeout`.  Returns how it went, for the user."""
        pid = self.pid(node)
        if pid is None:
            self.pid_file(node).unlink(missing_ok=True)
            return "not running"
        for signum in (signal.SIGTERM, signal.SIGCONT):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        how = "stopped"
        if not _wait_gone(pid, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, timeout)
            how = f"killed (no exit {timeout:.0f} s after SIGTERM)"
        self.pid_file(node).unlink(missing_ok=True)
        return how

    def up(self, acceptors: int, segment_size: int = DEFAULT_SEGMENT_SIZE, remote: str = "remote",
           pageserver: bool = True) -> tuple[ClusterConfig, list[str]]:
        """Create the cluster if DIR has none, then start every node not running.

        Returns:
            The configuration and the nodes started now.
        """
        if self.exists():
            config = self.load()
            if len(config.acceptors) != acceptors:
                raise ClusterError(f"the cluster in {self.dir} has {len(config.acceptors)} acceptors, not {acceptors}")
        else:
            config = self.create(acceptors, segment_size=segment_size, remote=remote, pageserver=pageserver)
        started = []
        try:
            for node in self.nodes(config):
                if self.pid(node) is None:
                    self.start_node(node, config)
                    started.append(node)
        except ClusterError:
            for node in started:  # all or nothing: no half-started cluster left behind
                self.stop(node)
            raise
        return config, started

    def down(self) -> dict[str, str]:
        """Stop every compute, then every node; returns node -> how it went."""
        config = self.load()
        stopped = {record.name: self.stop(record.name) for record in self.computes() if self.pid(record.name) is not None}
        return stopped | {node: self.stop(node) for node in reversed(self.nodes(config))}

    # -- computes (rule 6) ----------------------------------------------------------------

    def compute_file(self, name: str) -> Path:
        return self.dir / COMPUTES_DIR / f"{name}.json"

    def ready_file(self, name: str) -> Path:
        """Written by compute `name`'s process (its pid) once it serves clients."""
        return self.dir / COMPUTES_DIR / f"{name}.ready"

    def computes(self) -> list[ComputeRecord]:
        """Every compute ever started in this cluster, by name."""
        directory = self.dir / COMPUTES_DIR
        paths = sorted(directory.glob("*.json")) if directory.is_dir() else []
        return [ComputeRecord.from_json(path.read_text(), path) for path in paths]

    def compute_command(self, record: ComputeRecord) -> list[str]:
        return [
            sys.executable, "-m", "impl.cli", "compute", "run", "--dir", str(self.dir), "--name", record.name,
            "--branch", record.branch, "--port", str(record.port), "--wal-start", str(record.wal_start),
            *([] if record.lsn is None else ["--lsn", str(record.lsn)]),
            *(["--replica"] if record.mode == "replica" else []),
        ]

    def start_compute(self, name: str, branch: str, *, port: int | None = None, lsn: int | None = None,
                      replica: bool = False, wal_start: int) -> ComputeRecord:
        """Start compute `name` on `branch` (static at `lsn` if given, a read replica if
        `replica`) and wait until it accepts connections (rule 6).  `wal_start`: where the
        branch's WAL starts.

        Raises:
            ClusterError: a bad or taken name, or the compute exited or did not listen in
                time (with its log's last lines).
        """
        config = self.load()
        check_timeline_id(name)
        if name in self.nodes(config) or name == LOAD_NODE:
            raise ClusterError(f"{name!r} names a node of the cluster; choose another compute name")
        if self.pid(name) is not None:
            raise ClusterError(f"compute {name} is running already (pid {self.pid(name)})")
        mode = "replica" if replica else "primary" if lsn is None else "static"
        record = ComputeRecord(name, branch, mode, lsn, port if port is not None else free_ports(1)[0], wal_start)
        (self.dir / COMPUTES_DIR).mkdir(exist_ok=True)
        _write_atomically(self.compute_file(name), record.to_json())
        if mode == "primary":
            self.add_proposer(name, branch, wal_start)
        ready = self.ready_file(name)
        ready.unlink(missing_ok=True)
        proc = self.spawn(name, self.compute_command(record))
        deadline = time.monotonic() + COMPUTE_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise ClusterError(f"compute {name} exited with status {proc.returncode} while starting:"
                                   f" {self.log_tail(name)}")
            # Its own word, not an answer on the port: another process may hold that.
            with contextlib.suppress(FileNotFoundError, ValueError):
                if int(ready.read_text()) == proc.pid:
                    return record
            if time.monotonic() > deadline:
                proc.kill()
                raise ClusterError(f"compute {name} did not listen on port {record.port} within"
                                   f" {COMPUTE_START_TIMEOUT:.0f} s: {self.log_tail(name)}")
            time.sleep(0.02)

    def compute_uri(self, record: ComputeRecord) -> str:
        """The compute's connection URI, for psql."""
        return f"postgresql://{COMPUTE_USER}:{self.load().compute_password}@127.0.0.1:{record.port}/{COMPUTE_DATABASE}"

    def status(self, timeline: str = "main") -> list[NodeStatus]:
        """Each acceptor's process and state of `timeline` (rule 4)."""
        config = self.load()
        result = []
        for node, port in config.acceptors.items():
            pid = self.pid(node)
            state, error = None, "not running"
            if pid is not None:
                try:
                    state, error = query_status(port, timeline=timeline), None
                except (OSError, ProtocolError) as exc:
                    error = f"not answering: {exc}"
            result.append(NodeStatus(node, port, pid, state, error))
        return result


    def pageserver_status(self, timeline: str = "main") -> PageserverStatus | str | None:
        """The pageserver's view of `timeline`, why it did not answer, or None if the cluster
        has no pageserver (rule 5)."""
        config = self.load()
        if config.pageserver_port is None:
            return None
        if self.pid(PAGESERVER) is None:
            return "not running"
        try:
            reply = _request(config.pageserver_port, PageserverStatusRequest(timeline=timeline))
        except (OSError, ProtocolError) as exc:
            return f"not answering: {exc}"
        if not isinstance(reply, PageserverStatus):
            return f"refused: {reply}"
        return reply


def _request(port: int, msg: object) -> object:
    from impl.pageclient import page_request

    return page_request(port, msg, STATUS_TIMEOUT)  # type: ignore[arg-type]


@attrs.frozen
class ComputeRecord:
    """What DIR/computes/<name>.json holds: how compute `name` was started (rule 6).

    Attributes:
        name: the compute's (and its proposer's) id.
        branch: the timeline it serves.
        mode: "primary", "static" or "replica".
        lsn: a static compute's LSN, else None.
        port: its Postgres port on 127.0.0.1.
        wal_start: where the branch's WAL starts.
    """

    name: str
    branch: str
    mode: str
    lsn: int | None
    port: int
    wal_start: int

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self)) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path) -> ComputeRecord:
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError) as exc:
            raise ClusterError(f"{where} is not a compute record: {exc}") from None


def _is_node_process(cmdline: list[bytes], node: str, directory: Path) -> bool:
    """Whether a process's argv is one of our nodes named `node` (rule 2): an acceptor
    (`--node`) or a load process (`--name`) of this directory."""
    try:
        args = [arg.decode() for arg in cmdline]
        where = next(i for i, arg in enumerate(args) if arg in ("--node", "--name"))
    except (UnicodeDecodeError, StopIteration):
        return False
    return args[where + 1 : where + 2] == [node] and any(
        arg == str(directory) or arg.startswith(str(directory) + "/") for arg in args
    )


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait until process `pid` has exited (reaping it if it is our child)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if _is_zombie(pid):
            return True
        time.sleep(0.02)
    return False


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def query_status(port: int, timeout: float = STATUS_TIMEOUT, timeline: str = "main") -> StatusResponse:
    """Ask the acceptor on 127.0.0.1:`port` for its state of `timeline` (a StatusRequest);
    a timeline it does not hold answers an empty status (impl/acceptor_server.py rule 7).

    Raises:
        OSError: no connection, or no answer within `timeout`.
        ProtocolError: the answer is not a StatusResponse.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(encode(StatusRequest(timeline=timeline)))
        decoder = FrameDecoder()
        while True:
            data = sock.recv(65536)
            if not data:
                raise OSError("connection closed before the status arrived")
            decoder.feed(data)
            frame = decoder.next_frame()
            if frame is not None:
                if not isinstance(frame.message, StatusResponse):
                    raise ProtocolError(f"expected a StatusResponse, got {type(frame.message).__name__}")
                return frame.message
