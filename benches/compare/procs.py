"""What every section of the comparison shares: the processes it starts
(each the head of its own process group, stopped with its children), free
loopback ports, readiness, and the rules that keep a run honest on a shared
machine (wait for quiet, redo a noisy run, wait out TIME_WAIT).

Owns no scenario and no config text.
"""

import http.client
import os
import signal
import subprocess
import socket
import sys
import time

import measure
from measure import RunError

QUIET_PCT = 10.0  # machine busy below this (all CPUs) counts as quiet
NOISY_PCT = 5.0  # a run in which other processes took more of the machine is redone


def log(msg):
    print(f"[compare {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_cpus(spec):
    """A taskset CPU list ("1", "0,2", "2-3") as a set of CPU numbers."""
    out = set()
    try:
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        sys.exit(f"benches/compare: {spec!r} is not a CPU list (e.g. 1, 0,2 or 2-3)")
    return out


def free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Proc:
    """A process this harness started, head of its own process group so its
    children (nginx workers) are stopped with it."""

    def __init__(self, name, cmd, tmp, env=None):
        self.name = name
        self.log_path = os.path.join(tmp, f"{name}.log")
        self.log_file = open(self.log_path, "ab")
        self.popen = subprocess.Popen(cmd, stdout=self.log_file, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True,
                                      env=env, cwd=tmp)
        self.pid = self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def log_tail(self, lines=15):
        with open(self.log_path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")

    def stop(self):
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
                self.popen.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(timeout=10)
        self.log_file.close()


def wait_ready(proc, port, path="/", timeout=20):
    """Until 127.0.0.1:port answers GET path with 200 (through to the backend)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RunError(f"{proc.name} exited (status {proc.popen.returncode}):\n{proc.log_tail()}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                return
            last = f"status {r.status}"
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    name = proc.name if proc else f"port {port}"
    raise RunError(f"{name} not ready on 127.0.0.1:{port} after {timeout}s ({last})")


def wait_time_wait(ports, notes, what, limit=5000, max_wait=75):
    """TIME_WAIT sockets left by connection-per-request runs cost the kernel
    timer and lookup work for 60 s; keep-alive and latency runs start without."""
    count = measure.time_wait_sockets(ports)
    if count < limit:
        return
    log(f"  {count} sockets in TIME_WAIT before {what}; waiting up to {max_wait}s for them to expire")
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        time.sleep(1)
        count = measure.time_wait_sockets(ports)
        if count < limit:
            return
    notes.append(f"{what}: started with {count} sockets in TIME_WAIT after waiting {max_wait}s")


def wait_quiet(max_wait, notes, what):
    """Other work on the machine skews every figure: wait (bounded) for it to pass."""
    if max_wait <= 0:
        return
    deadline = time.monotonic() + max_wait
    busy = measure.machine_busy_pct()
    if busy < QUIET_PCT:
        return
    log(f"  machine {busy:.0f}% busy before {what}; waiting up to {max_wait}s for it to settle")
    while time.monotonic() < deadline:
        busy = measure.machine_busy_pct(1.0)
        if busy < QUIET_PCT:
            return
    notes.append(f"{what}: started with the machine {busy:.0f}% busy after waiting {max_wait}s")


def least_noisy(fn, a, what, notes, settle_time_wait=True):
    """Runs `fn` on a quiet machine; if other processes still took over
    NOISY_PCT of it during the run, runs it again (--noisy-retries times at
    most) and keeps the run they disturbed least."""
    best = None
    for i in range(1 + a.noisy_retries):
        if settle_time_wait:
            wait_time_wait(a.ports, notes, what)
        wait_quiet(a.quiet_wait, notes, what)
        r = fn()
        if best is None or r["other_load_pct"] < best["other_load_pct"]:
            best = r
        if r["other_load_pct"] <= NOISY_PCT:
            break
        log(f"  {what}: other processes took {r['other_load_pct']:.0f}% of the machine"
            + ("; running it again" if i < a.noisy_retries else "; keeping the least noisy run"))
    if best["other_load_pct"] > NOISY_PCT:
        notes.append(f"{what}: other processes took {best['other_load_pct']:.0f}% of the machine "
                     f"in the least noisy of {1 + a.noisy_retries} runs")
    return best


def attempt(fn, what, notes):
    try:
        return fn()
    except RunError as e:
        notes.append(f"{what}: {e}")
        log(f"  failed: {what}: {e}")
        return {"error": str(e)}
