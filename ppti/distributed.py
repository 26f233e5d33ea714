"""Data parallelism in one place: rank and world size read once, who writes, what is communicated, and how an
error on one rank ends the run.

The same script runs alone or under `python -m paddle.distributed.launch` (GPUs: `--gpus 0,1,2,3`; CPU:
`--nproc_per_node N`, gloo; several machines: `--ips` or `--master` + `--nnodes`). Each rank trains on its own
slice of every global micro-batch (see data.StreamLayout); `paddle.DataParallel` averages the gradients; rank 0
alone logs and writes files.

What goes over the wire: `paddle.DataParallel` registers only trainable parameters with its reducer, and the only
trainable parameter is `PlaceholderEmbedding.rows` (`[num_vectors, dim]`), so the per-step all-reduce carries just
those rows' gradient -- not the `[vocab, dim]` matrix the ppdiffusers example all-reduces every step. The frozen
weights are also kept out of the one-off parameter broadcast DataParallel does when it wraps the model (see
`wrap_data_parallel`). With gradient accumulation the all-reduce runs once per optimizer step (`no_sync`). Besides
it, one small all_gather per optimizer step carries the loss, the overflow flag and any stop signal together
(`agree_on_step`): the only point where a step waits for the device.

Errors: when a rank raises, it exits non-zero and the launcher stops the other ranks. The launcher shows the
console output of rank 0 (and the log tail of the lowest failed rank), so a rank other than 0 first hands its error
message to rank 0, which prints it (`report_failures_to_main_rank`, `watch_for_failures`). A rank that dies without
a word (killed by the out-of-memory killer, its machine gone) is noticed by the rank watcher (ppti/rankwatch.py, a
small process beside rank 0 that every rank holds a connection to): it tells every other rank, which prints one
line naming the failed rank and exits -- also on other machines, whose launchers do not know of the death, and
ranks waiting in a collective (`start_rank_watch`).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paddle
import paddle.distributed as dist

from .signals import TrainingInterrupted

log = logging.getLogger("ppti")

# Keys in the launcher's key-value store (hosted by rank 0) used to hand an error over to rank 0.
_FAILURE_COUNT_KEY = "ppti/failures"
_FAILURE_MESSAGE_KEY = "ppti/failure/{}"
_FAILURE_SEEN_KEY = "ppti/failure-seen/{}"
FAILURE_POLL_SECONDS = 0.5
FAILURE_HANDOVER_SECONDS = 10.0  # how long a failing rank waits for rank 0 to print its error before it exits


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistContext:
    """Read rank/world size from the launcher's environment; join the process group when there are several ranks."""
    world_size = dist.get_world_size()
    if world_size <= 1:
        return DistContext()
    dist.init_parallel_env()
    ctx = DistContext(rank=dist.get_rank(), world_size=world_size)
    if ctx.is_main:
        watch_for_failures()
    start_rank_watch(ctx)
    return ctx


# ------------------------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------------------------
def wrap_data_parallel(model, ctx: DistContext):
    """paddle.DataParallel over the model when several ranks run.

    Its reducer takes only trainable parameters, i.e. the placeholder rows. The frozen parameters are tagged
    `no_sync`, which makes the broadcast DataParallel does at construction skip them: every rank loaded them from
    the same files, and for SD-1.x they are the whole 123M-parameter text encoder.
    """
    if not ctx.enabled:
        return model
    for param in model.parameters():
        if param.stop_gradient:
            param.no_sync = True
    return paddle.DataParallel(model)


def no_sync(model, skip_sync: bool):
    """Skip the gradient all-reduce on accumulation micro-steps (gradients then add up locally)."""
    if skip_sync and isinstance(model, paddle.DataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def agree_on_step(loss_sum: paddle.Tensor, overflow: paddle.Tensor, signum: int, ctx: DistContext
                  ) -> tuple[float, bool, int]:
    """What every rank needs to know after an optimizer step's backward, in one collective and one host read:
    (the global batch's mean loss, whether any rank's gradient overflowed, the stop signal any rank received, 0
    for none). Every rank gets the same values, so the decisions taken on them (skip the step, stop on a
    non-finite loss or a signal) are taken by all ranks together.

    `loss_sum` and `overflow` are float32 scalars still on the device (no sync before this point)."""
    mine = paddle.stack([loss_sum.astype("float32").reshape([]), overflow.astype("float32").reshape([]),
                         paddle.full([], float(signum), dtype="float32")])  # (3,) (a fill: no host copy)
    if ctx.enabled:
        gathered: list = []
        dist.all_gather(gathered, mine)
        every = paddle.stack(gathered).numpy()  # (world, 3)
    else:
        every = mine.numpy()[None]
    return float(every[:, 0].mean()), bool(every[:, 1].max() > 0), int(every[:, 2].max())


def from_main_rank(value: float, ctx: DistContext) -> float:
    """Rank 0's value on every rank (one broadcast), so decisions taken on it are the same everywhere."""
    if not ctx.enabled:
        return value
    tensor = paddle.to_tensor([value], dtype="float32")
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


# ------------------------------------------------------------------------------------------------------------
# errors on one rank
# ------------------------------------------------------------------------------------------------------------
def watch_for_failures() -> None:
    """Rank 0: print, in the log the launcher shows, the errors other ranks hand over (a daemon thread)."""
    if "PADDLE_MASTER" not in os.environ:
        return
    stop = threading.Event()

    def watch() -> None:
        # A connection of its own to the store: a client must not be used by two threads at once.
        from paddle.base import core

        host, port = os.environ["PADDLE_MASTER"].split(":")
        store, printed = core.TCPStore(host, int(port), False, 0, 60), 0
        while True:
            stopping = stop.wait(FAILURE_POLL_SECONDS)
            while store.add(_FAILURE_COUNT_KEY, 0) > printed:  # (add 0 reads the counter)
                printed += 1
                message = bytes(store.get(_FAILURE_MESSAGE_KEY.format(printed))).decode("utf-8", "replace")
                log.error("%s", message)
                store.add(_FAILURE_SEEN_KEY.format(printed), 1)
            if stopping:
                return

    thread = threading.Thread(target=watch, name="ppti-failure-watch", daemon=True)
    thread.start()

    @atexit.register
    def stop_watching() -> None:
        # End the thread (after a last look for errors) before the interpreter shuts down: Python ends a daemon
        # thread that is still running by unwinding its stack, and unwinding through a Paddle call aborts.
        stop.set()
        thread.join(FAILURE_HANDOVER_SECONDS)


def hand_failure_to_main_rank(message: str) -> None:
    """A rank other than 0: give rank 0 the message and wait until it has printed it, or is gone, or
    FAILURE_HANDOVER_SECONDS have passed."""
    from paddle.base import core

    store = core.create_or_get_global_tcp_store()  # connected since init; this thread is its only user now

    def hand_over() -> None:
        try:
            slot = store.add(_FAILURE_COUNT_KEY, 1)
            store.set(_FAILURE_MESSAGE_KEY.format(slot), message.encode("utf-8"))
            while store.add(_FAILURE_SEEN_KEY.format(slot), 0) == 0:
                time.sleep(FAILURE_POLL_SECONDS / 5)
        except Exception:  # noqa: BLE001 - rank 0 (which hosts the store) is gone: nobody left to tell
            return

    thread = threading.Thread(target=hand_over, name="ppti-failure-handover", daemon=True)
    thread.start()
    thread.join(FAILURE_HANDOVER_SECONDS)


def worker_log() -> Path:
    """Where the launcher writes this rank's output (on this rank's machine)."""
    local_rank = os.environ.get("PADDLE_LOCAL_RANK", "?")
    return Path(os.environ.get("PADDLE_LOG_DIR", "log")) / f"workerlog.{local_rank}"


# ------------------------------------------------------------------------------------------------------------
# ranks that die without a word
# ------------------------------------------------------------------------------------------------------------
_RANK_WATCH_KEY = "ppti/rank-watch"
_watch_connection: dict = {}  # "socket": this rank's connection to the rank watcher, "said": its last word


def start_rank_watch(ctx: DistContext) -> None:
    """Rank 0 starts the watcher (ppti/rankwatch.py) and publishes its address in the launcher's store; every
    rank connects, keeps the connection for its lifetime and listens for "stop" on a daemon thread. Without the
    launcher's store (PADDLE_MASTER), or if the watcher cannot start, the run goes on without it."""
    if "PADDLE_MASTER" not in os.environ:
        return
    from paddle.base import core

    store = core.create_or_get_global_tcp_store()
    if ctx.is_main:
        store.set(_RANK_WATCH_KEY, _start_watcher(ctx.world_size).encode())  # (always set: the others wait for it)
    address = bytes(store.get(_RANK_WATCH_KEY)).decode()
    if address == "none":
        return
    try:
        host, port = address.rsplit(":", 1)
        conn = socket.create_connection((host, int(port)), timeout=30)
        conn.settimeout(None)
        conn.sendall(f"{ctx.rank}\n".encode())
    except (OSError, ValueError) as exc:
        log.warning("the rank watcher did not start (%s): a rank killed without a message may leave the others "
                    "waiting until the collective's timeout", exc)
        return
    _watch_connection.update(socket=conn, said=None)
    threading.Thread(target=_listen_for_stop, args=(conn, ctx.rank), name="ppti-rank-watch", daemon=True).start()
    atexit.register(tell_rank_watch, "bye")


def _start_watcher(world_size: int) -> str:
    """Rank 0: start ppti/rankwatch.py; its "host:port" as every rank reaches it, or "none" (with a warning)."""
    package_root = str(Path(__file__).resolve().parents[1])  # (importable even when ppti is not installed)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    try:
        watcher = subprocess.Popen([sys.executable, "-m", "ppti.rankwatch", str(world_size)], env=env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   start_new_session=True)  # (outlives rank 0 to say what happened)
        port = int(watcher.stdout.readline())
    except (OSError, ValueError) as exc:
        log.warning("the rank watcher did not start (%s): a rank killed without a message may leave the others "
                    "waiting until the collective's timeout", exc)
        return "none"
    return f"{os.environ['PADDLE_MASTER'].rsplit(':', 1)[0]}:{port}"  # rank 0's machine, as every rank reaches it


def tell_rank_watch(word: str) -> None:
    """"bye" (this rank ends normally) or "failed" (its error was handed to rank 0); the first word counts."""
    conn = _watch_connection.get("socket")
    if conn is None or _watch_connection.get("said"):
        return
    _watch_connection["said"] = word
    try:
        conn.sendall(f"{word}\n".encode())
    except OSError:
        pass


def _listen_for_stop(conn: socket.socket, rank: int) -> None:
    """On "stop <line>": print the line, tell the watcher it is printed, and end this process at once (its main
    thread may be waiting in a collective that will never complete). A rank that said "failed" prints it too: its
    own error may only be the echo of the peer's death (gloo's "connection closed"). If the watcher itself goes
    away, rank 0's machine has."""
    data = b""
    while b"\n" not in data:
        try:
            chunk = conn.recv(4096)
        except OSError:
            chunk = b""
        if not chunk:
            line = ("the rank watcher beside rank 0 is gone (rank 0's machine failed?); stopping. The last saved "
                    "embedding and checkpoint are intact: continue with --resume_from_checkpoint latest")
            break
        data += chunk
    else:
        line = data.split(b"\n", 1)[0].decode("utf-8", "replace").removeprefix("stop ")
    if _watch_connection.get("said") == "bye":  # this rank is ending normally already
        return
    log.error("%s", line)
    for handler in logging.getLogger().handlers + log.handlers:
        handler.flush()
    try:
        conn.sendall(b"printed\n")
    except OSError:
        pass
    os._exit(1)


def report_failures_to_main_rank(func):
    """Decorator for the training entry: an exception on a rank other than 0 is also printed by rank 0, then
    re-raised (the CLI prints it on this rank and exits non-zero; the launcher then stops every rank)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except TrainingInterrupted:  # every rank agreed to stop on a signal: not a failure
            raise
        except Exception as exc:
            if dist.is_initialized() and dist.get_world_size() > 1 and dist.get_rank() != 0:
                hand_failure_to_main_rank(
                    f"rank {dist.get_rank()} failed: {type(exc).__name__}: {exc} (its full output: {worker_log()})"
                )
            tell_rank_watch("failed")  # (its error is printed: the others are stopped without another message)
            raise

    return wrapper
