"""What the harness measures, and how: wrk (closed-loop throughput), oha
(open-loop latency), iperf3 (bulk transfer), /proc (RSS, peak RSS, CPU
time) and the idle-connection helper. Every run here is bounded in time.

Owns no process lifetime: it is handed process ids and URLs by compare.py.
"""

import contextlib
import http.client
import json
import os
import resource
import socket
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


class RunError(Exception):
    """A measurement could not be taken; the message says which and why."""


# ---------------------------------------------------------------- /proc


def family(pid):
    """`pid` and its children (nginx's workers); the harness starts each
    proxy as the head of its own process tree."""
    pids = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                pids += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return pids


def _status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_kib(pid):
    """Resident memory of the process tree, KiB (sum of VmRSS)."""
    return sum(_status_kib(p, "VmRSS") for p in family(pid))


def slab_kib():
    """The kernel's slab memory, machine-wide, KiB (sockets, pipes, files)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Slab:"):
                return int(line.split()[1])
    return 0


def peak_rss_kib(pid):
    """High-water mark of resident memory of the process tree, KiB (sum of VmHWM)."""
    return sum(_status_kib(p, "VmHWM") for p in family(pid))


def cpu_seconds(pid):
    """User + system CPU time of the process tree so far, seconds."""
    total = 0
    for p in family(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                # The command name may hold spaces; fields count from after ')'.
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def cutover_split(admin_port, metric, match=""):
    """Counts per pool of one of cutover's counters (`metric`, lines holding
    `match`) from its /metrics, to confirm the 90/10 split."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
    except OSError:
        return None
    counts = {}
    for line in text.splitlines():
        if line.startswith(metric + "{") and match in line:
            labels, _, value = line.rpartition(" ")
            pool = labels.split('pool="', 1)[1].split('"', 1)[0] if 'pool="' in labels else "?"
            counts[pool] = counts.get(pool, 0) + float(value)
    return counts


# ---------------------------------------------------------------- machine load


def cpu_ticks():
    """Per-CPU counters from /proc/stat: {cpu: (task ticks, irq+softirq+steal ticks, idle ticks)}."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *v = line.split()
                user, nice, system, idle, iowait, irq, softirq, steal = map(int, v[:8])
                out[int(name[3:])] = (user + nice + system, irq + softirq + steal, idle + iowait)
    return out


def time_wait_sockets(ports):
    """TCP sockets in TIME_WAIT on 127.0.0.1 with one end on one of `ports`
    (this run's; other users of the machine have their own)."""
    wanted = {f"{p:04X}" for p in ports}
    count = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split(None, 4)
            if fields[3] == "06" and (fields[1][-4:] in wanted or fields[2][-4:] in wanted):
                count += 1
    return count


def wait_listening(port, proc, timeout=20):
    """Until something listens on 127.0.0.1:`port` (read from /proc/net/tcp,
    so a server that takes one client at a time, iperf3, sees no probe)."""
    want = f"0100007F:{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RunError(f"{proc.name} exited (status {proc.popen.returncode}):\n{proc.log_tail()}")
        with open("/proc/net/tcp") as f:
            if any(l.split()[1] == want and l.split()[3] == "0A" for l in list(f)[1:]):
                return
        time.sleep(0.05)
    raise RunError(f"{proc.name}: not listening on 127.0.0.1:{port} after {timeout}s")


def machine_busy_pct(interval=0.5):
    """How busy the whole machine is over `interval`, percent (idle proxies count for ~0)."""
    a = cpu_ticks()
    time.sleep(interval)
    b = cpu_ticks()
    busy = sum(b[c][0] + b[c][1] - a[c][0] - a[c][1] for c in b)
    total = busy + sum(b[c][2] - a[c][2] for c in b)
    return 100.0 * busy / total if total else 0.0


def _own_children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    s = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime + s.ru_utime + s.ru_stime


class Meter:
    """CPU accounting around one load run: the proxy's own CPU time, how busy
    its core(s) were (softirq included: loopback packets are partly processed
    there), and how much CPU went to processes that are not part of the
    benchmark (other users of the machine) - the run's noise."""

    def __init__(self, proxy_pid, backend_pids, proxy_cpus):
        """`backend_pids`: one process id or several (the tcp section's
        nginx and iperf3 servers), counted as the benchmark's, not noise."""
        if isinstance(backend_pids, int):
            backend_pids = [backend_pids]
        self.proxy_pid, self.backend_pids, self.proxy_cpus = proxy_pid, backend_pids, proxy_cpus

    def _sample(self):
        return (time.monotonic(), cpu_ticks(),
                cpu_seconds(self.proxy_pid) if self.proxy_pid else 0.0,
                sum(cpu_seconds(p) for p in self.backend_pids), _own_children_cpu())

    def __enter__(self):
        self.start = self._sample()
        return self

    def __exit__(self, *exc):
        self.end = self._sample()
        return False

    def figures(self, requests=None, gigabytes=None):
        (t0, k0, p0, b0, c0), (t1, k1, p1, b1, c1) = self.start, self.end
        wall = t1 - t0
        proxy = p1 - p0
        tasks = sum(k1[c][0] - k0[c][0] for c in k1) / CLK_TCK
        other = max(0.0, tasks - proxy - (b1 - b0) - (c1 - c0))
        core = sum(k1[c][0] + k1[c][1] - k0[c][0] - k0[c][1] for c in self.proxy_cpus) / CLK_TCK
        out = {"other_load_pct": 100.0 * other / (wall * len(k1))}
        if self.proxy_pid:
            out["proxy_cpu_pct"] = 100.0 * proxy / wall
            out["proxy_core_busy_pct"] = 100.0 * core / (wall * len(self.proxy_cpus))
            if requests:
                out["cpu_s_per_100k"] = proxy / requests * 1e5
            if gigabytes:
                out["cpu_s_per_gb"] = proxy / gigabytes
        return out


# ---------------------------------------------------------------- wrk


def wrk(url, *, cpus, connections, duration, threads, lua, headers=(), meter=None):
    """Closed loop: `connections` clients as fast as the server answers.
    Returns requests/s and error counts, plus the `meter`'s CPU figures."""
    cmd = ["taskset", "-c", cpus, "wrk", "-t", str(threads), "-c", str(connections),
           "-d", f"{duration}s", "--timeout", "5s", "-s", lua]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(url)
    try:
        with meter or contextlib.nullcontext():
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30)
    except subprocess.TimeoutExpired:
        raise RunError(f"wrk {url}: did not finish within {duration + 30}s")
    line = next((l for l in out.stdout.splitlines() if l.startswith("WRK-JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RunError(f"wrk {url}: exit {out.returncode}: {(out.stderr or out.stdout).strip()[-300:]}")
    s = json.loads(line[len("WRK-JSON "):])
    secs = s["duration_us"] / 1e6
    result = {
        "rps": s["requests"] / secs if secs else 0.0,
        "requests": s["requests"],
        "non_2xx_3xx": s["status"],
        "socket_errors": s["connect"] + s["read"] + s["write"] + s["timeout"],
        "socket_errors_detail": {k: s[k] for k in ("connect", "read", "write", "timeout")},
        "mib_per_s": s["bytes"] / secs / 2**20 if secs else 0.0,
    }
    if meter:
        result.update(meter.figures(s["requests"]))
    return result


# ---------------------------------------------------------------- iperf3


def iperf3(port, *, cpus, duration, meter=None):
    """A bulk transfer for `duration` seconds: one iperf3 client stream
    sending to 127.0.0.1:`port` (its control connection and its data
    connection both go through a proxy there). GB/s as the receiver
    counted it (1 GB = 10^9 bytes), and the proxy's CPU seconds per GB."""
    cmd = ["taskset", "-c", cpus, "iperf3", "-c", "127.0.0.1", "-p", str(port),
           "-t", str(duration), "-J"]
    try:
        with meter or contextlib.nullcontext():
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30)
    except subprocess.TimeoutExpired:
        raise RunError(f"iperf3 -p {port}: did not finish within {duration + 30}s")
    try:
        j = json.loads(out.stdout)
        received = j["end"]["sum_received"]
    except (ValueError, KeyError):
        raise RunError(f"iperf3 -p {port}: exit {out.returncode}: {(out.stderr or out.stdout).strip()[-300:]}")
    if out.returncode != 0 or "error" in j:
        raise RunError(f"iperf3 -p {port}: {j.get('error', f'exit {out.returncode}')}")
    gb = received["bytes"] / 1e9
    result = {"gb_per_s": gb / received["seconds"] if received["seconds"] else 0.0, "gb": gb}
    if meter:
        result.update(meter.figures(gigabytes=gb))
    return result


# ---------------------------------------------------------------- oha


def oha(url, *, cpus, rate, duration, connections, threads, meter=None):
    """Open loop: `rate` requests/s on keep-alive connections, latency counted
    from when each request was due (--latency-correction), so a stall shows
    in the tail instead of being hidden by a paused load generator."""
    cmd = ["taskset", "-c", cpus, "oha", "--no-tui", "--output-format", "json",
           "-z", f"{duration}s", "-q", str(rate), "--latency-correction",
           "-c", str(connections), "-t", "5s", "-w",
           "--worker-threads", str(threads), url]
    try:
        with meter or contextlib.nullcontext():
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30)
    except subprocess.TimeoutExpired:
        raise RunError(f"oha {url}: did not finish within {duration + 30}s")
    try:
        j = json.loads(out.stdout)
    except ValueError:
        raise RunError(f"oha {url}: exit {out.returncode}: {(out.stderr or out.stdout).strip()[-300:]}")
    pct = j.get("latencyPercentiles", {})
    codes = j.get("statusCodeDistribution", {})
    ok = sum(n for c, n in codes.items() if str(c).startswith("2"))

    def ms(key):
        v = pct.get(key)
        return None if v is None else v * 1000.0

    result = {
        "rate": rate,
        "achieved_rps": j.get("summary", {}).get("requestsPerSec"),
        "p50_ms": ms("p50"),
        "p99_ms": ms("p99"),
        "p99_9_ms": ms("p99.9"),
        "non_2xx": sum(codes.values()) - ok,
        "errors": sum(j.get("errorDistribution", {}).values()),
    }
    if meter:
        result.update(meter.figures())
    return result


# ---------------------------------------------------------------- idle connections


def _one_request(sock, host_port):
    sock.sendall(f"GET / HTTP/1.1\r\nHost: {host_port}\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise RunError("connection closed before the response head")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise RunError("connection closed inside the response body")
        body += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise RunError(f"unexpected response: {head.splitlines()[0]!r}")


def idle_memory(port, pid, count, settle=1.0):
    """Opens `count` keep-alive client connections to 127.0.0.1:`port`, each
    after one request (so the proxy holds a served, idle connection), then
    compares the proxy's RSS with what it was before. KiB per connection."""
    host_port = f"127.0.0.1:{port}"
    # One request first, so lazily-built state is not charged to the connections.
    warm = socket.create_connection(("127.0.0.1", port), timeout=5)
    _one_request(warm, host_port)
    warm.close()
    time.sleep(settle)
    before = rss_kib(pid)
    slab_before = slab_kib()
    socks = []
    deadline = time.monotonic() + 60
    try:
        for _ in range(count):
            if time.monotonic() > deadline:
                raise RunError(f"opening {count} idle connections took over 60s")
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(s)
            _one_request(s, host_port)
        time.sleep(settle)
        after = rss_kib(pid)
        slab_after = slab_kib()
        # Every connection must still be open: a proxy that closed them early
        # would look cheaper than it is.
        alive = 0
        for s in socks:
            s.setblocking(False)
            try:
                alive += s.recv(1) != b""
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
    finally:
        for s in socks:
            s.close()
    if alive < count:
        raise RunError(f"only {alive} of {count} idle connections were still open")
    return {
        "connections": count,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_conn": (after - before) / count,
        # Machine-wide, so other work on the machine blurs it; the client's
        # and the backend's sockets are in it for every proxy alike.
        "slab_kib_per_conn": (slab_after - slab_before) / count,
    }
