"""Client processes for the throughput runs.

Each worker is its own process (multiprocessing 'spawn'), so client-side
Python and libvirt's client library never share a GIL.  A worker waits for a
command on its pipe: ("run", uri, t0, t1) connects, sleeps until t0 (a
CLOCK_MONOTONIC instant, shared by every process on the machine), calls
getVersion() in a loop, and reports how many calls completed inside
[t0, t1].  The pool is reused for every daemon and client count.
"""

from __future__ import annotations

import multiprocessing as mp
import time


def worker_main(conn) -> None:
    import libvirt
    libvirt.registerErrorHandler(lambda *_: None, None)
    mono = time.monotonic
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg[0] == "exit":
            return
        _, uri, t0, t1 = msg
        count = 0
        late = False
        error = None
        try:
            c = libvirt.open(uri)
            try:
                now = mono()
                if now > t0:
                    late = True
                else:
                    time.sleep(t0 - now)
                call = c.getVersion
                while True:
                    call()
                    now = mono()
                    if now >= t1:
                        break
                    if now >= t0:
                        count += 1
            finally:
                c.close()
        except Exception as exc:  # report, never hang the parent
            error = f"{type(exc).__name__}: {exc}"
        conn.send((count, late, error))


class Pool:
    """N long-lived client processes."""

    def __init__(self, n: int) -> None:
        ctx = mp.get_context("spawn")
        self.pipes = []
        self.procs = []
        for _ in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(child,), daemon=True)
            p.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(p)
        for pipe in self.pipes:      # every worker has imported libvirt
            pipe.recv()

    def run(self, uri: str, clients: int, duration: float, lead: float) -> dict:
        """Run ``clients`` workers for ``duration`` s after ``lead`` s to connect."""
        t0 = time.monotonic() + lead
        t1 = t0 + duration
        for pipe in self.pipes[:clients]:
            pipe.send(("run", uri, t0, t1))
        results = [pipe.recv() for pipe in self.pipes[:clients]]
        total = sum(r[0] for r in results)
        errors = [r[2] for r in results if r[2]]
        late = sum(1 for r in results if r[1])
        return {"calls": total, "calls_per_s": total / duration, "late_workers": late,
                "errors": errors[:3], "n_errors": len(errors)}

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("exit",))
            except OSError:
                pass
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()
