"""The TLS section: cutover, HAProxy (OpenSSL) and NGINX terminating TLS on
http listeners, one frontend per key type (ECDSA P-256 and RSA-2048), in
front of the HTTP section's plain backend with its 90/10 split. Rows: full
handshakes per second for each key type, resumed handshakes per second,
small keep-alive requests per second over HTTP/1.1 and HTTP/2.

Owns the section's certificates, rounds and scenarios, and the check, on
the wire, that "full" handshakes are full and "resumed" ones resumed.
Config text lives in configs.py, measurements in measure.py.
"""

import os
import subprocess
import time

import configs
import measure
import report
from measure import RunError
from procs import Proc, attempt, free_ports, least_noisy, log, parse_cpus, wait_ready
from tcp import wait_https

PROXIES = report.PROXIES
KINDS = ("ec", "rsa")
FULL_BATCH = 500  # h2load clients per batch of full handshakes: below every proxy's listen backlog
H2_STREAMS = 10
# (row, frontend, the scenario's load); keep-alive rows first: the handshake
# rows leave TIME_WAIT sockets behind.
ROWS = [
    ("ka_h1", "ec", "keep-alive HTTP/1.1"),
    ("ka_h2", "ec", "keep-alive HTTP/2"),
    ("full_ec", "ec", "full handshakes"),
    ("full_rsa", "rsa", "full handshakes"),
    ("resumed", "ec", "resumed handshakes"),
]
HANDSHAKE_ROWS = ("full_ec", "full_rsa", "resumed")


def seconds_per_round(a):
    """Roughly: five scenarios with a 1 s warm-up each, per target, plus the
    wire checks of the three handshake rows."""
    return len(PROXIES) * (len(ROWS) * (a.duration + 1) + 3 * 2) + 30


def make_certs(tmp):
    """ECDSA P-256 and RSA-2048 self-signed certificates for localhost; the
    same files serve every proxy (HAProxy's `crt` gets them concatenated)."""
    for kind, newkey in (("ec", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]),
                         ("rsa", ["-newkey", "rsa:2048"])):
        crt, key = os.path.join(tmp, f"{kind}.crt"), os.path.join(tmp, f"{kind}.key")
        cmd = (["openssl", "req", "-x509"] + newkey + ["-nodes", "-keyout", key, "-out", crt, "-days", "2",
               "-subj", f"/CN={configs.TLS_HOST}", "-addext", f"subjectAltName=DNS:{configs.TLS_HOST}"])
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RunError(f"openssl req ({kind}): {r.stderr.strip()[-300:]}")
        os.chmod(key, 0o644)  # nginx workers may run as another user
        with open(os.path.join(tmp, f"{kind}.pem"), "w") as out:
            for path in (crt, key):
                with open(path) as f:
                    out.write(f.read())


def load(row, url, a, meter, warm_up):
    """One run of `row`'s load at `url` (a 1 s warm-up first when
    `warm_up`), as a result dict with requests/s, non-2xx and errors."""
    d = 1 if warm_up else a.duration
    m = None if warm_up else meter
    if row in ("full_ec", "full_rsa"):
        return measure.h2load_new_connections(url, cpus=a.load_cpus, duration=d, batch=FULL_BATCH, meter=m)
    if row == "ka_h2":
        return measure.h2load_keepalive(url, cpus=a.load_cpus, connections=a.connections,
                                        streams=H2_STREAMS, duration=d, meter=m)
    # wrk: keep-alive HTTP/1.1, or a new connection per request, which wrk
    # makes by resuming the session it had (TLS 1.3: a ticket).
    headers = ("Connection: close",) if row == "resumed" else ()
    r = measure.wrk(url, cpus=a.load_cpus, connections=a.connections, duration=d, threads=1,
                    lua=a.tls_lua, headers=headers, meter=m)
    r["non_2xx"], r["errors"] = r["non_2xx_3xx"], r["socket_errors"]
    return r


def wire_check(row, port, url, a):
    """A short run of the row's load (not measured) with the loopback
    watched: how many handshakes were full and resumed, and what they
    negotiated."""
    with measure.ServerHellos(port) as hellos:
        if row == "resumed":
            measure.wrk(url, cpus=a.load_cpus, connections=a.connections, duration=1, threads=1,
                        lua=a.tls_lua, headers=("Connection: close",))
        else:
            measure.h2load_new_connections(url, cpus=a.load_cpus, duration=0.1, batch=200)
    return hellos.summary()


def run(a, tmp, binary, procs):
    """The tls section; returns its summary for the table and the JSON."""
    blue, green, d_ec, d_rsa = free_ports(4)
    grabbed = free_ports(2 * len(PROXIES[1:]) + 1)
    ports = {name: dict(zip(KINDS, grabbed[i * 2:i * 2 + 2])) for i, name in enumerate(PROXIES[1:])}
    ports["cutover"]["admin"] = grabbed[-1]
    ports["direct"] = {"ec": d_ec, "rsa": d_rsa}
    a.ports = [blue, green, d_ec, d_rsa] + grabbed
    make_certs(tmp)
    maxconn = a.nofile // 3 - 100
    files = {
        "tls-backend.conf": configs.backend_nginx(
            tmp, blue, green, a.nofile, name="tls-backend",
            extra=configs.tls_backend_servers_terminating(tmp, ports["direct"])),
        "cutover-tls.toml": configs.cutover_tls_toml(tmp, ports["cutover"], blue, green, a.threads,
                                                     a.nofile // 2 - 100),
        "haproxy-tls.cfg": configs.haproxy_tls_cfg(tmp, ports["haproxy"], blue, green, a.threads, maxconn),
        "nginx-tls.conf": configs.nginx_tls_proxy(tmp, ports["nginx"], blue, green, a.threads, a.nofile),
        "report.lua": configs.WRK_LUA,
    }
    os.makedirs(os.path.join(tmp, "www"), exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(tmp, name), "w") as f:
            f.write(text)
    a.tls_lua = os.path.join(tmp, "report.lua")
    for name in ("tls-backend.conf", "nginx-tls.conf"):
        r = subprocess.run(["nginx", "-t", "-q", "-e", os.path.join(tmp, "nginx-t.log"),
                            "-p", tmp, "-c", os.path.join(tmp, name)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RunError(f"nginx -t {name}: {r.stderr.strip()}")
    r = subprocess.run(["haproxy", "-c", "-q", "-f", os.path.join(tmp, "haproxy-tls.cfg")],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RunError(f"haproxy -c: {(r.stderr or r.stdout).strip()}")
    r = subprocess.run([binary, "check", "-c", os.path.join(tmp, "cutover-tls.toml")],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RunError(f"cutover check: {(r.stderr or r.stdout).strip()}")

    backend = Proc("tls-backend", ["taskset", "-c", a.backend_cpus, "nginx",
                                   "-e", os.path.join(tmp, "tls-backend-error.log"),
                                   "-p", tmp, "-c", os.path.join(tmp, "tls-backend.conf")], tmp)
    procs.append(backend)
    wait_ready(backend, blue)
    wait_ready(backend, green)
    for kind in KINDS:
        wait_https(backend, ports["direct"][kind], configs.TLS_HOST)

    commands = {
        "cutover": [binary, "run", "-c", os.path.join(tmp, "cutover-tls.toml")],
        "haproxy": ["haproxy", "-db", "-f", os.path.join(tmp, "haproxy-tls.cfg")],
        "nginx": ["nginx", "-e", os.path.join(tmp, "nginx-tls-error.log"), "-p", tmp,
                  "-c", os.path.join(tmp, "nginx-tls.conf")],
    }
    env = dict(os.environ, RUST_LOG="error")
    rounds, all_notes = [], []
    t_start = time.time()
    for rnd in range(a.rounds):
        log(f"tls round {rnd + 1}/{a.rounds}")
        notes = []
        res = {"round": rnd + 1, "wire": {}}
        running = {}
        for name, cmd in commands.items():
            p = Proc(f"{name}-tls-r{rnd + 1}", ["taskset", "-c", a.proxy_cpus] + cmd, tmp, env=env)
            procs.append(p)
            running[name] = p
        for name, p in running.items():
            for kind in KINDS:
                wait_https(p, ports[name][kind], configs.TLS_HOST)
        pid = {name: (running[name].pid if name in running else None) for name in PROXIES}

        def meter(name):
            return measure.Meter(pid[name], backend.pid, parse_cpus(a.proxy_cpus))

        for row, kind, what in ROWS:
            res[row] = {}
            if row in HANDSHAKE_ROWS:
                res["wire"][row] = {}
            for name in PROXIES:
                port = ports[name][kind]
                url = f"https://{configs.TLS_HOST}:{port}/"
                if row in HANDSHAKE_ROWS:
                    res["wire"][row][name] = attempt(lambda: wire_check(row, port, url, a),
                                                     f"tls wire {row} {name}", notes)

                def go():
                    load(row, url, a, None, warm_up=True)
                    return load(row, url, a, meter(name), warm_up=False)
                res[row][name] = attempt(
                    lambda: least_noisy(go, a, f"tls {row} {name}", notes,
                                        settle_time_wait=row not in HANDSHAKE_ROWS),
                    f"tls {row} {name}", notes)
                shown = res[row][name]
                if "rps" in shown:
                    if "cpu_s_per_100k" in shown:
                        shown["cpu_ms_per_1k"] = shown["cpu_s_per_100k"] * 10
                    if row == "ka_h2" and shown.get("alpn") != "h2":
                        notes.append(f"tls ka_h2 {name}: h2load negotiated {shown.get('alpn')}, not h2")
                log(f"  {row:9} {name:8} " + (f"{shown['rps']:>10.0f} /s" if "rps" in shown else shown["error"]))

        res["resources"] = {name: {"peak_rss_mib": measure.peak_rss_kib(pid[name]) / 1024}
                            for name in PROXIES[1:]}
        res["cutover_pool_requests"] = measure.cutover_split(ports["cutover"]["admin"], "cutover_requests_total")
        for name, p in running.items():
            if not p.alive():
                notes.append(f"{name} exited early:\n{p.log_tail()}")
            p.stop()
            procs.remove(p)
            tail = p.log_tail(5).strip()
            if tail:
                notes.append(f"{name} wrote to its log:\n{tail}")
        rounds.append(res)
        all_notes += [f"tls round {rnd + 1}: {n}" for n in notes]

    backend.stop()
    procs.remove(backend)
    for name in ("tls-backend-error.log", "nginx-tls-error.log"):
        path = os.path.join(tmp, name)
        if os.path.exists(path) and os.path.getsize(path):
            with open(path, errors="replace") as f:
                lines = f.read().splitlines()
            all_notes.append(f"{name}: {len(lines)} line(s), last:\n" + "\n".join(lines[-5:]))
    meta = report.machine(a, None, time.time() - t_start, binary, kind="tls")
    out = report.summarise(rounds, report.tls_sections(), meta, all_notes)
    out["wire"] = wire_summary(rounds)
    return out


def wire_summary(rounds):
    """Per handshake row and target: full and resumed handshakes seen on the
    wire over every round's check, and what they negotiated."""
    out = {}
    for row in HANDSHAKE_ROWS:
        out[row] = {}
        for name in PROXIES:
            tot = {"full": 0, "resumed": 0, "unknown": 0, "negotiated": {}}
            for r in rounds:
                w = r.get("wire", {}).get(row, {}).get(name)
                if not w or "error" in w:
                    continue
                for k in ("full", "resumed", "unknown"):
                    tot[k] += w[k]
                for k, n in w["negotiated"].items():
                    tot["negotiated"][k] = tot["negotiated"].get(k, 0) + n
            out[row][name] = tot
    return out
