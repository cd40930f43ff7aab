"""What the harness measures, and how: wrk (closed-loop throughput), oha
(open-loop latency), iperf3 (bulk transfer), /proc (RSS, peak RSS, CPU
time) and the idle-connection helper. Every run here is bounded in time.

Owns no process lifetime: it is handed process ids and URLs by compare.py.
"""

import contextlib
import http.client
import json
import os
import re
import resource
import socket
import subprocess
import threading
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


# ---------------------------------------------------------------- h2load


_H2LOAD_REQUESTS = re.compile(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                              r"(\d+) failed, (\d+) errored, (\d+) timeout", re.M)
_H2LOAD_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.M)
_H2LOAD_FINISHED = re.compile(r"^finished in ([\d.]+)(ms|s)", re.M)


def _h2load(cmd, timeout):
    """Runs one h2load and reads its summary: requests, successes, non-2xx,
    failures, the time it reports, and the application protocol."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RunError(f"{' '.join(cmd[3:])}: did not finish within {timeout}s")
    m = _H2LOAD_REQUESTS.search(out.stdout)
    if out.returncode != 0 or m is None:
        raise RunError(f"{' '.join(cmd[3:])}: exit {out.returncode}: "
                       f"{(out.stderr or out.stdout).strip()[-300:]}")
    total, _, _, ok, _, _, _ = map(int, m.groups())
    s = _H2LOAD_STATUS.search(out.stdout)
    f = _H2LOAD_FINISHED.search(out.stdout)
    secs = float(f.group(1)) / (1000 if f and f.group(2) == "ms" else 1) if f else None
    proto = re.search(r"^Application protocol: (\S+)", out.stdout, re.M)
    return {"total": total, "ok": ok, "non_2xx": int(s.group(3)) + int(s.group(4)) if s else 0,
            "secs": secs, "alpn": proto.group(1) if proto else None}


def h2load_keepalive(url, *, cpus, connections, streams, duration, h1=False, meter=None):
    """Closed loop over `connections` keep-alive TLS connections for
    `duration` seconds: `streams` concurrent requests each over HTTP/2
    (`h2load -c C -m M -D S`), or one at a time over HTTP/1.1 (`--h1`)."""
    cmd = ["taskset", "-c", cpus, "h2load", "-t", "1", "-c", str(connections), "-m", str(streams),
           "-D", str(duration)] + (["--h1"] if h1 else []) + [url]
    with meter or contextlib.nullcontext():
        r = _h2load(cmd, duration + 30)
    result = {"rps": r["ok"] / r["secs"] if r["secs"] else 0.0, "requests": r["ok"],
              "non_2xx": r["non_2xx"], "errors": r["total"] - r["ok"] - r["non_2xx"], "alpn": r["alpn"]}
    if meter:
        result.update(meter.figures(r["ok"]))
    return result


def h2load_new_connections(url, *, cpus, duration, batch, meter=None):
    """Full handshakes for `duration` seconds: back-to-back batches of
    `h2load --h1 -n B -c B`, `batch` clients that each open one connection,
    make one request and close. h2load never offers a client a session it
    had before (it resumes only when it reconnects one client, which it
    does not do here), so every handshake is a full one; tls.py checks that
    on the wire. Handshakes/s: successful requests over the wall time."""
    cmd = ["taskset", "-c", cpus, "h2load", "--h1", "-t", "1", "-n", str(batch), "-c", str(batch), url]
    ok = total = non_2xx = 0
    with meter or contextlib.nullcontext():
        start = time.monotonic()
        while time.monotonic() - start < duration:
            r = _h2load(cmd, 60)
            ok, total, non_2xx = ok + r["ok"], total + r["total"], non_2xx + r["non_2xx"]
        wall = time.monotonic() - start
    result = {"rps": ok / wall, "requests": ok, "non_2xx": non_2xx, "errors": total - ok - non_2xx}
    if meter:
        result.update(meter.figures(ok))
    return result


# ---------------------------------------------------------------- TLS on the wire


TLS_CIPHERS = {0x1301: "TLS_AES_128_GCM_SHA256", 0x1302: "TLS_AES_256_GCM_SHA384",
               0x1303: "TLS_CHACHA20_POLY1305_SHA256", 0xC02B: "ECDHE-ECDSA-AES128-GCM-SHA256",
               0xC02C: "ECDHE-ECDSA-AES256-GCM-SHA384", 0xC02F: "ECDHE-RSA-AES128-GCM-SHA256",
               0xC030: "ECDHE-RSA-AES256-GCM-SHA384", 0xCCA8: "ECDHE-RSA-CHACHA20-POLY1305",
               0xCCA9: "ECDHE-ECDSA-CHACHA20-POLY1305"}
TLS_GROUPS = {0x001D: "X25519", 0x0017: "P-256", 0x0018: "P-384", 0x11EC: "X25519MLKEM768"}
TLS_VERSIONS = {0x0303: "TLSv1.2", 0x0304: "TLSv1.3"}


def parse_server_hello(payload):
    """What a server's first flight says in the clear, from the TCP payload
    that starts it: (version, cipher, group, resumed), or None if it does
    not start with a ServerHello. TLS 1.3: resumed when the ServerHello
    accepts a pre_shared_key, and the group is its key_share's. TLS 1.2:
    resumed when ChangeCipherSpec follows the ServerHello rather than a
    Certificate (the group is in ServerKeyExchange: not read, None)."""
    p = payload
    if len(p) < 9 + 38 or p[0] != 0x16 or p[5] != 0x02:
        return None
    hs_len = int.from_bytes(p[6:9], "big")
    body = p[9:9 + hs_len]
    version = int.from_bytes(body[0:2], "big")
    i = 34
    i += 1 + body[i]  # session id
    cipher = int.from_bytes(body[i:i + 2], "big")
    i += 3  # cipher, compression
    group, psk = None, False
    if i + 2 <= len(body):
        end = i + 2 + int.from_bytes(body[i:i + 2], "big")
        i += 2
        while i + 4 <= min(end, len(body)):
            etype, elen = int.from_bytes(body[i:i + 2], "big"), int.from_bytes(body[i + 2:i + 4], "big")
            data = body[i + 4:i + 4 + elen]
            if etype == 43 and len(data) >= 2:  # supported_versions
                version = int.from_bytes(data[:2], "big")
            elif etype == 51 and len(data) >= 2:  # key_share
                group = int.from_bytes(data[:2], "big")
            elif etype == 41:  # pre_shared_key
                psk = True
            i += 4 + elen
    if version == 0x0304:
        resumed = psk
    else:
        after = 9 + hs_len
        rest = p[after:]
        if len(rest) >= 6 and rest[0] == 0x16:
            resumed = rest[5] != 0x0B  # another handshake message: Certificate means full
        elif len(rest) >= 1:
            resumed = rest[0] == 0x14  # ChangeCipherSpec straight after: abbreviated
        else:
            resumed = None  # the rest came in another segment
    return (TLS_VERSIONS.get(version, hex(version)), TLS_CIPHERS.get(cipher, hex(cipher)),
            TLS_GROUPS.get(group, hex(group)) if group is not None else None, resumed)


class ServerHellos:
    """Counts the handshakes a TLS server on 127.0.0.1:`port` makes while
    it is open, read off the loopback interface (an AF_PACKET socket: root
    only), by what its ServerHello says: full or resumed, version, cipher,
    group. It costs CPU per packet, so it watches a short run beside the
    measured ones, never a measured run; packets it is too slow for are
    dropped by the kernel, so the counts are a sample."""

    def __init__(self, port):
        self.port = port
        self.counts = {}

    def __enter__(self):
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        time.sleep(0.2)
        self.stop.set()
        self.thread.join()
        self.sock.close()
        return False

    def _loop(self):
        while not self.stop.is_set():
            try:
                d, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            # Loopback shows every packet twice: as sent and as received.
            if addr[2] == socket.PACKET_OUTGOING or len(d) < 54 or d[12:14] != b"\x08\x00":
                continue
            ip = d[14:]
            if ip[9] != 6:
                continue
            tcp = ip[(ip[0] & 0x0F) * 4:]
            if int.from_bytes(tcp[0:2], "big") != self.port:
                continue
            hello = parse_server_hello(tcp[(tcp[12] >> 4) * 4:])
            if hello is not None:
                self.counts[hello] = self.counts.get(hello, 0) + 1

    def summary(self):
        """{"full": n, "resumed": n, "unknown": n, "negotiated": {"TLSv1.3 cipher group": n}}"""
        out = {"full": 0, "resumed": 0, "unknown": 0, "negotiated": {}}
        for (version, cipher, group, resumed), n in self.counts.items():
            out["unknown" if resumed is None else "resumed" if resumed else "full"] += n
            key = " ".join(x for x in (version, cipher, group) if x)
            out["negotiated"][key] = out["negotiated"].get(key, 0) + n
        return out
