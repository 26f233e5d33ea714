"""Two "nodes" on this machine: two separate `python -m paddle.distributed.launch --nnodes 2 --master 127.0.0.1:PORT
--nproc_per_node 1` commands, one rank each, as two machines run them (docs/multi-card.md).

- they train like one process with the same global batch;
- a rank killed on purpose (SIGKILL, as the out-of-memory killer does: it prints nothing) ends every process within a
  minute, with one line naming the rank that failed, and leaves the last saved embedding and checkpoint intact.
  Without the rank watcher (ppti/rankwatch.py) the other node's launcher never learns of the death: on a GPU its
  rank waits in NCCL for 30 minutes; with gloo it aborts with a line that names an address, not a rank.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, train_args
from helpers import LAUNCH_TIMEOUT, SCALE_SENSITIVE_ADAM, assert_same_update, initial_rows, saved_rows
from ppti import checkpoint
from ppti.config import parse_config
from ppti.distributed import DistContext
from ppti.rankwatch import watch
from ppti.embeddings import read_embeddings
from ppti.train import train

SCRIPTS = Path(__file__).parent / "dist_scripts"
KILL_BOUND = 60  # seconds: every process ends within a minute of the kill


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_two_nodes(script: Path, args: list, logs: Path) -> list[dict]:
    """Two launcher commands, as on two machines (one rank each), started a moment apart; for each node:
    {"code", "console", "ended" (monotonic time), "log" (its rank's worker log)}."""
    port = free_port()
    nodes = []
    for name in ("node-a", "node-b"):
        command = [sys.executable, "-m", "paddle.distributed.launch", "--nnodes", "2", "--master",
                   f"127.0.0.1:{port}", "--nproc_per_node", "1", "--log_dir", str(logs / name), str(script),
                   *map(str, args)]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
        nodes.append({"name": name, "proc": proc})
        time.sleep(1)
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    try:
        while any("ended" not in node for node in nodes):
            for node in nodes:
                if "ended" not in node and node["proc"].poll() is not None:
                    node["ended"] = time.monotonic()
            if time.monotonic() > deadline:
                pytest.fail("a launcher did not end within the timeout")
            time.sleep(0.2)
    finally:
        for node in nodes:
            try:
                os.killpg(node["proc"].pid, signal.SIGKILL)  # a worker a launcher left behind
            except ProcessLookupError:
                pass
    for node in nodes:
        node["code"] = node["proc"].returncode
        node["console"] = node["proc"].stdout.read()
        node["log"] = (logs / node["name"] / "workerlog.0").read_text(errors="replace")
    return nodes


def test_two_nodes_train_like_one_process_with_the_same_global_batch(tiny_model_en, demo_images, tmp_path):
    common = dict(num_vectors=2, max_train_steps=2, gradient_accumulation_steps=2, scale_lr=True,
                  **SCALE_SENSITIVE_ADAM)
    two, dumps = tmp_path / "two-nodes", tmp_path / "rank-rows"
    dumps.mkdir()
    nodes = launch_two_nodes(SCRIPTS / "train_and_save_rows.py",
                             [dumps, *train_args(tiny_model_en, demo_images, two, train_batch_size=1, **common)],
                             tmp_path / "logs")
    assert [n["code"] for n in nodes] == [0, 0], "\n".join(n["console"][-2000:] for n in nodes)
    assert re.search(r"cards \(world size\)\s+= 2\n", nodes[0]["console"] + nodes[1]["console"])
    one_config = parse_config(train_args(tiny_model_en, demo_images, tmp_path / "one", train_batch_size=2, **common))
    train(one_config, DistContext())
    rank0, rank1 = np.load(dumps / "rank-0-rows.npy"), np.load(dumps / "rank-1-rows.npy")
    assert np.array_equal(rank0, rank1) and np.array_equal(rank0, saved_rows(two))
    assert_same_update(rank0, saved_rows(tmp_path / "one"), initial_rows(tiny_model_en, one_config))


@pytest.mark.parametrize("killed", [1, 0])
def test_a_killed_rank_ends_every_process_within_a_minute_naming_it(tiny_model_en, demo_images, tmp_path, killed):
    out = tmp_path / "out"
    nodes = launch_two_nodes(
        SCRIPTS / "fail_on_rank.py",
        [killed, "kill", *train_args(tiny_model_en, demo_images, out, train_batch_size=1, max_train_steps=6,
                                     save_steps=1, checkpointing_steps=1)],
        tmp_path / "logs")
    everything = "\n".join(n["console"] + n["log"] for n in nodes)
    assert all(n["code"] != 0 for n in nodes), everything[-3000:]
    # every process ended within a minute of the first one (the killed rank's launcher ends at once)
    assert max(n["ended"] for n in nodes) - min(n["ended"] for n in nodes) < KILL_BOUND
    time.sleep(1)
    leftover = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert not leftover, f"processes still running: {leftover}"
    # one line naming the failed rank -- and only that rank -- in what the user reads (console or the worker log)
    named = set(re.findall(r"rank (\d+) failed \(", everything))
    assert named == {str(killed)}, everything[-3000:]
    assert "its process ended without a word" in everything
    # the last saved embedding and checkpoint are intact: the newest complete checkpoint verifies, and the
    # embedding saved at its step holds its rows; no final embedding claims the run finished
    (step, newest), *_ = reversed(checkpoint.complete_checkpoints(out))
    assert step >= 1
    checkpoint.verify_files(newest)
    (saved,) = read_embeddings(out / f"learned_embeds-steps-{step}.pdparams")
    (in_checkpoint,) = read_embeddings(newest / "learned_embeds.pdparams")
    assert np.array_equal(saved.vectors, in_checkpoint.vectors)
    assert not (out / "learned_embeds.pdparams").exists()


# ------------------------------------------------------------------------------------------------------------
# the watcher's rules, without launching anything
# ------------------------------------------------------------------------------------------------------------
def _watch_in_thread(world_size: int):
    import io
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    log, result = io.StringIO(), {}
    thread = threading.Thread(target=lambda: result.update(failed=watch(world_size, server, log)), daemon=True)
    thread.start()
    port = server.getsockname()[1]

    def connect(rank: int) -> socket.socket:
        conn = socket.create_connection(("127.0.0.1", port))
        conn.sendall(f"{rank}\n".encode())
        return conn

    return connect, thread, log, result


def _received(conn: socket.socket) -> str:
    conn.settimeout(10)
    return conn.recv(4096).decode()


@pytest.mark.parametrize("said, expected", [
    (None, "rank 2 failed (its process ended without a word"),  # killed: the connection just closes
    ("failed", "rank 2 failed (its error is above"),  # its error was handed to rank 0 first
])
def test_the_first_rank_to_vanish_without_bye_is_named_to_every_other_rank(said, expected):
    connect, thread, log, result = _watch_in_thread(3)
    ranks = [connect(r) for r in range(3)]
    time.sleep(0.3)
    if said:
        ranks[2].sendall(f"{said}\n".encode())
    ranks[2].close()
    for rank in (0, 1):
        message = _received(ranks[rank])
        assert message.startswith(f"stop {expected}") and "--resume_from_checkpoint latest" in message
    assert log.getvalue() == ""  # rank 0 is alive: it prints the line itself
    ranks[0].sendall(b"printed\n")  # (as ppti.distributed's listener answers, then ends: not a second failure)
    ranks[0].close()
    ranks[1].close()
    thread.join(10)
    assert result == {"failed": 2} and log.getvalue() == ""


def test_the_watcher_prints_the_line_when_rank_0_ends_without_printing_it():
    """A peer's death makes gloo abort rank 0 at once, often before the watcher's "stop" reaches it (the CI flake
    of test_a_killed_rank_ends_every_process_within_a_minute_naming_it[1]): the watcher then prints the line into
    rank 0's log itself, once."""
    connect, thread, log, result = _watch_in_thread(2)
    ranks = [connect(r) for r in range(2)]
    time.sleep(0.3)
    ranks[1].close()  # rank 1 killed
    assert _received(ranks[0]).startswith("stop rank 1 failed (its process ended without a word")
    ranks[0].sendall(b"failed\n")  # rank 0's own error (gloo: connection closed), then it ends without printing
    ranks[0].close()
    thread.join(10)
    assert result == {"failed": 1}
    assert log.getvalue().count("rank 1 failed (its process ended without a word") == 1, log.getvalue()


def test_ranks_that_say_bye_are_no_failure_and_the_watcher_speaks_for_a_vanished_rank_0():
    connect, thread, log, result = _watch_in_thread(2)
    ranks = [connect(r) for r in range(2)]
    time.sleep(0.3)
    ranks[1].sendall(b"bye\n")
    ranks[1].close()
    time.sleep(0.3)
    ranks[0].sendall(b"bye\n")
    ranks[0].close()
    thread.join(10)
    assert result == {"failed": -1} and log.getvalue() == ""

    connect, thread, log, result = _watch_in_thread(2)
    ranks = [connect(r) for r in range(2)]
    time.sleep(0.3)
    ranks[0].close()  # rank 0 killed: nobody else writes into its log, so the watcher does
    assert _received(ranks[1]).startswith("stop rank 0 failed (its process ended without a word")
    ranks[1].close()
    thread.join(10)
    assert result == {"failed": 0} and log.getvalue().startswith("ppti: rank 0 failed (its process ended")
