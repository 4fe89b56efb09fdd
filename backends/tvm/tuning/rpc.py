"""Measuring on other machines through TVM's RPC tracker: ``RPCConfig`` (what ``tune``
takes as its ``runner``), the MetaSchedule runner behind it, and ``local_rpc_cluster``, a
tracker and servers on 127.0.0.1 (tests, demos)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .workers import fast_pool_classes, fast_tvm_imports

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RPCConfig:
    """Measure candidates on servers registered to an RPC tracker.

    Start a tracker with ``python -m tvm.exec.rpc_tracker --host 127.0.0.1 --port 9190`` (it
    needs the ``tornado`` package) and servers with
    ``python -m tvm.exec.rpc_server --tracker=127.0.0.1:9190 --key=KEY``.
    """

    tracker_host: str
    tracker_port: int
    device_key: str
    session_timeout_sec: float = 60.0
    session_priority: int = 1
    #: parallel measurement sessions; None = number of servers registered under the key
    max_workers: int | None = None

    def to_ms(self):
        from tvm.s_tir.meta_schedule.runner import RPCConfig as MSRPCConfig  # noqa: PLC0415

        return MSRPCConfig(
            tracker_host=self.tracker_host,
            tracker_port=int(self.tracker_port),
            tracker_key=self.device_key,
            session_priority=self.session_priority,
            session_timeout_sec=int(self.session_timeout_sec),
        )

    def count_servers(self) -> int:
        return int(self.to_ms().count_num_servers(allow_missing=True))


@functools.cache
def rpc_runner_class() -> type:
    """``FastRPCRunner`` (defined lazily: it needs ``tvm.s_tir.meta_schedule``)."""
    fast_tvm_imports()
    # pylint: disable=import-outside-toplevel
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import PyRunner
    from tvm.s_tir.meta_schedule.runner import rpc_runner as _rr
    from tvm.s_tir.meta_schedule.runner.rpc_runner import RPCRunnerFuture

    # pylint: enable=import-outside-toplevel
    _, fast_pool = fast_pool_classes()

    @derived_object
    class FastRPCRunner(PyRunner):
        """RPCRunner semantics (TVM's default session/upload/alloc/evaluate functions) with
        torch-free workers and a client-side timeout, so a dead server fails its candidates
        instead of hanging the run."""

        def __init__(self, ms_rpc_config, evaluator_config, max_workers: int, timeout_sec):
            super().__init__()
            self.rpc_config = ms_rpc_config
            self.evaluator_config = evaluator_config
            self.timeout_sec = timeout_sec
            self.pool = fast_pool(max_workers=max_workers, timeout=timeout_sec)

        def run(self, runner_inputs) -> list:
            results = []
            for inp in runner_inputs:
                fut = self.pool.submit(
                    _rr._worker_func,  # pylint: disable=protected-access
                    None,
                    None,
                    None,
                    None,
                    None,
                    self.rpc_config,
                    self.evaluator_config,
                    1,
                    str(inp.artifact_path),
                    str(inp.device_type),
                    tuple(a.as_json() for a in inp.args_info),
                )
                results.append(RPCRunnerFuture(future=fut, timeout_sec=self.timeout_sec))
            return results

        def shutdown(self):
            self.pool.shutdown()

    return FastRPCRunner


# --------------------------------------------------------------------------------------
# A local RPC tracker + servers (tests, demos). Only 127.0.0.1.
# --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Servers and tracker run TVM's own entry points, without torch (5 s faster to start).
_RPC_BOOT = r"""
import runpy, sys
sys.modules["torch"] = None
mod = sys.argv[1]
sys.argv = [mod] + sys.argv[2:]
runpy.run_module(mod, run_name="__main__", alter_sys=True)
"""


@dataclasses.dataclass
class LocalRPCCluster:
    host: str
    port: int
    key: str
    tracker: subprocess.Popen
    servers: list[subprocess.Popen]
    log_dir: Path

    def config(self, session_timeout_sec: float = 60.0, **kw) -> RPCConfig:
        return RPCConfig(self.host, self.port, self.key, session_timeout_sec, **kw)

    def kill_server(self, i: int = 0) -> None:
        """Kill server ``i`` and its session processes (simulates a lost device)."""
        _kill_tree(self.servers[i])


def _kill_tree(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if proc.poll() is not None:
        return
    try:
        import psutil  # pylint: disable=import-outside-toplevel

        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.send_signal(sig)
    except Exception:  # pylint: disable=broad-except
        pass
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@contextlib.contextmanager
def local_rpc_cluster(
    num_servers: int = 2,
    key: str = "shrinkc-local",
    timeout_sec: float = 60.0,
    log_dir: str | os.PathLike | None = None,
) -> Iterator[LocalRPCCluster]:
    """Start an RPC tracker and ``num_servers`` servers on 127.0.0.1 (free ports), wait until
    all servers are registered under ``key``, yield, and always stop them afterwards."""
    import importlib.util  # pylint: disable=import-outside-toplevel
    import tempfile  # pylint: disable=import-outside-toplevel

    if importlib.util.find_spec("tornado") is None:
        raise RuntimeError("TVM's RPC tracker needs the tornado package: pip install tornado")
    host = "127.0.0.1"
    own_dir = log_dir is None
    ldir = Path(tempfile.mkdtemp(prefix="shrinkc-rpc-")) if own_dir else Path(log_dir)
    ldir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TVM_FFI_DISABLE_TORCH_C_DLPACK="1")
    procs: list[subprocess.Popen] = []
    files = []

    def spawn(name: str, module: str, *args: str) -> subprocess.Popen:
        fh = open(ldir / f"{name}.log", "w", encoding="utf-8")  # pylint: disable=consider-using-with
        files.append(fh)
        p = subprocess.Popen(  # pylint: disable=consider-using-with
            [sys.executable, "-c", _RPC_BOOT, module, *args],
            stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
        procs.append(p)
        return p

    try:
        port = _free_port()
        tracker = spawn("tracker", "tvm.exec.rpc_tracker", "--host", host, "--port", str(port),
                        "--port-end", str(port + 1), "--silent")  # fmt: skip
        servers = []
        for i in range(num_servers):
            sport = _free_port()
            servers.append(
                spawn(f"server{i}", "tvm.exec.rpc_server", "--host", host, "--port", str(sport),
                      "--port-end", str(sport + 1), f"--tracker={host}:{port}", f"--key={key}")
            )  # fmt: skip
        cluster = LocalRPCCluster(host, port, key, tracker, servers, ldir)
        deadline = time.monotonic() + timeout_sec
        n = 0
        while time.monotonic() < deadline:
            for p in procs:
                if p.poll() is not None:
                    logs = "\n".join(f.name + ":\n" + Path(f.name).read_text()[-2000:]
                                     for f in files)  # fmt: skip
                    raise RuntimeError(f"RPC process exited with {p.returncode}:\n{logs}")
            try:
                n = _count_servers_quiet(host, port, key)
            except Exception as exc:  # pylint: disable=broad-except
                logger.debug("tracker not ready: %s", exc)
            if n >= num_servers:
                break
            time.sleep(0.5)
        else:
            raise TimeoutError(f"{n}/{num_servers} RPC servers registered after {timeout_sec} s")
        logger.info("RPC tracker %s:%d with %d servers (key %s)", host, port, n, key)
        yield cluster
    finally:
        for p in reversed(procs):
            _kill_tree(p, signal.SIGTERM)
            _kill_tree(p, signal.SIGKILL)
        for fh in files:
            fh.close()
        if own_dir:
            shutil.rmtree(ldir, ignore_errors=True)


def _count_servers_quiet(host: str, port: int, key: str) -> int:
    """Servers registered under ``key``; 0 (at once) when the tracker is not listening yet.

    (``rpc.connect_tracker`` itself retries for 60 s.)
    """
    from tvm import rpc  # pylint: disable=import-outside-toplevel

    try:
        with socket.create_connection((host, port), timeout=1.0):
            pass
    except OSError:
        return 0
    tracker = rpc.connect_tracker(host, port)
    try:
        summary = tracker.summary()
    finally:
        tracker.close()
    return sum(1 for item in summary.get("server_info", []) if item["key"].split(":")[-1] == key)


def make_rpc_runner(config: RPCConfig, evaluator_config) -> object:
    """The MetaSchedule runner for ``config``: one measuring session per registered server
    (or ``config.max_workers``). Raises ``RuntimeError`` when no server is registered."""
    servers = config.count_servers()
    if servers == 0:
        raise RuntimeError(
            f"no RPC server registered under key {config.device_key!r} at "
            f"{config.tracker_host}:{config.tracker_port} "
            f"(python -m tvm.exec.query_rpc_tracker --host {config.tracker_host} "
            f"--port {config.tracker_port})"
        )
    workers = config.max_workers or servers
    return rpc_runner_class()(config.to_ms(), evaluator_config, workers,
                              config.session_timeout_sec + 30.0)


__all__ = ["LocalRPCCluster", "RPCConfig", "local_rpc_cluster", "make_rpc_runner"]
