"""The rank watcher: a small process beside rank 0 that notices a rank dying without a word and stops the rest.

    python -m ppti.rankwatch WORLD_SIZE      (started by ppti.distributed.start_rank_watch on rank 0)

Why a process of its own: a rank killed by the out-of-memory killer (SIGKILL) prints nothing, and the ranks waiting
for it either wait in the collective until its timeout (NCCL: 30 minutes) or, with gloo, abort at once with a
message that names an address, not a rank -- taking any thread that could have explained it with them.

How: every rank opens one TCP connection to the watcher and sends its rank; the operating system closes that
connection the moment the process ends, however it ends. A rank that ends normally says "bye" first (at
interpreter exit); one whose error was already handed to rank 0 says "failed" first. The first connection that
closes without "bye" names the failed rank: the watcher sends every rank still connected "stop <line>" (each
prints the line, answers "printed" and exits: ppti.distributed), and prints the line itself when rank 0 does not
print it: rank 0 is gone already, or it ends without answering "printed" (a peer's death makes gloo abort rank 0
at once, often before the "stop" reaches it). The watcher's output goes to rank 0's log. It exits when every rank
has gone. Standard library only: it starts in a moment.
"""

from __future__ import annotations

import select
import socket
import sys
import time

ACCEPT_SECONDS = 600.0  # how long the watcher waits for every rank to connect


def failure_line(rank: int, reported: bool) -> str:
    why = ("its error is above / in its log" if reported else
           "its process ended without a word: killed (out of memory?) or its machine went away")
    return (f"rank {rank} failed ({why}); stopping every rank. The last saved embedding and checkpoint are "
            "intact: continue with --resume_from_checkpoint latest")


def watch(world_size: int, server: socket.socket, log=sys.stderr) -> int:
    """Serve until every rank has connected and gone; returns the failed rank, or -1 when none failed."""
    server.setblocking(False)
    ranks: dict[socket.socket, int] = {}
    buffers: dict[socket.socket, bytes] = {}
    said: dict[int, str] = {}  # rank -> "bye" | "failed" | "printed" (the last word counts)
    registered, failed, unprinted = set(), -1, None  # unprinted: the failure line, until rank 0 has printed it
    started = time.monotonic()
    while True:
        if len(registered) == world_size and not ranks:
            return failed
        if len(registered) < world_size and time.monotonic() - started > ACCEPT_SECONDS and not ranks:
            return failed
        readable, _, _ = select.select([server, *ranks], [], [], 1.0)
        for conn in readable:
            if conn is server:
                try:
                    client, _ = server.accept()
                except BlockingIOError:
                    continue
                client.setblocking(True)
                ranks[client], buffers[client] = -1, b""
                continue
            try:
                data = conn.recv(4096)
            except OSError:
                data = b""
            if data:
                buffers[conn] += data
                *lines, buffers[conn] = buffers[conn].split(b"\n")
                for line in lines:
                    word = line.decode("ascii", "replace").strip()
                    if ranks[conn] < 0 and word.isdigit():
                        ranks[conn] = int(word)
                        registered.add(int(word))
                    elif ranks[conn] >= 0 and word in ("bye", "failed", "printed"):
                        said[ranks[conn]] = word
                continue
            rank = ranks.pop(conn)
            buffers.pop(conn)
            conn.close()
            if rank == 0 and unprinted is not None and said.get(0) != "printed":  # rank 0 ended without printing it
                print(f"ppti: {unprinted}", file=log, flush=True)
                unprinted = None
            if rank < 0 or said.get(rank) == "bye" or failed >= 0:
                continue
            failed = rank
            line = failure_line(rank, said.get(rank) == "failed")
            if 0 in ranks.values():
                unprinted = line
            else:  # rank 0 is gone too: nobody else writes into its log
                print(f"ppti: {line}", file=log, flush=True)
            for other in list(ranks):
                try:
                    other.sendall(f"stop {line}\n".encode("utf-8"))
                except OSError:
                    pass


def main(argv: list[str]) -> int:
    world_size = int(argv[0])
    server = socket.create_server(("", 0), backlog=max(world_size, 8))
    print(server.getsockname()[1], flush=True)  # the port, for rank 0 to publish
    sys.stdout.close()
    watch(world_size, server)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
