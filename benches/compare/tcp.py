"""The layer-4 section: cutover (`protocol = "tcp"`), HAProxy (`mode tcp`,
`option splice-auto`) and NGINX (`stream`) relaying bytes they do not
read, each with three listeners: bulk (iperf3), new connections (plain
HTTP with `Connection: close`) and TLS passthrough routed by SNI (HTTPS
with `Connection: close`, a full handshake per connection).

Owns the section's backends (one nginx with plain and TLS ports, one
iperf3 server, a self-signed certificate), its rounds and scenarios. Config
text lives in configs.py, measurements in measure.py.
"""

import os
import socket
import ssl
import subprocess
import time

import configs
import measure
import report
from measure import RunError
from procs import Proc, attempt, free_ports, least_noisy, log, parse_cpus, wait_ready

PROXIES = report.PROXIES
LISTENERS = ("bulk", "conn", "sni")


def seconds_per_round(a):
    """Roughly: bulk, then two wrk scenarios with a 1 s warm-up, per proxy."""
    return len(PROXIES) * (3 * a.duration + 2) + 30


def make_cert(tmp):
    """A self-signed ECDSA P-256 certificate for both routed names."""
    cmd = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
           "-nodes", "-keyout", os.path.join(tmp, "tls.key"), "-out", os.path.join(tmp, "tls.crt"),
           "-days", "2", "-subj", f"/CN={configs.SNI_HOST}",
           "-addext", f"subjectAltName=DNS:{configs.SNI_HOST},DNS:{configs.OTHER_HOST}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RunError(f"openssl req: {r.stderr.strip()[-300:]}")
    os.chmod(os.path.join(tmp, "tls.key"), 0o644)  # nginx workers may run as another user


def https_status(port, server_name, timeout=2):
    """GET / over TLS to 127.0.0.1:`port` with `server_name` as SNI (the
    certificate is not checked: it is ours); the status code."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as s:
            s.sendall(f"GET / HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n".encode())
            head = s.recv(64)
    return int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else 0


def wait_https(proc, port, server_name, timeout=20):
    """Until a TLS request with this SNI through 127.0.0.1:`port` gets 200."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RunError(f"{proc.name} exited (status {proc.popen.returncode}):\n{proc.log_tail()}")
        try:
            status = https_status(port, server_name)
            if status == 200:
                return
            last = f"status {status}"
        except (OSError, ValueError, IndexError) as e:
            last = str(e)
        time.sleep(0.05)
    raise RunError(f"{proc.name if proc else port}: TLS to {server_name} via 127.0.0.1:{port} "
                   f"not answered after {timeout}s ({last})")


def refuses_unknown_name(port):
    """Whether a ClientHello for a name no service has is refused."""
    try:
        return https_status(port, "unknown.test") == 0
    except (OSError, ValueError, IndexError):
        return True


def run(a, tmp, binary, procs):
    """The tcp section; returns its summary for the table and the JSON."""
    blue, green, tls_blue, tls_green, iperf = free_ports(5)
    back = {"blue": blue, "green": green, "tls_blue": tls_blue, "tls_green": tls_green, "iperf": iperf}
    grabbed = free_ports(3 * len(LISTENERS) + 1)
    ports = {name: dict(zip(LISTENERS, grabbed[i * 3:i * 3 + 3])) for i, name in enumerate(PROXIES[1:])}
    ports["cutover"]["admin"] = grabbed[-1]
    ports["direct"] = {"bulk": iperf, "conn": blue, "sni": tls_blue}
    a.ports = list(back.values()) + grabbed
    make_cert(tmp)
    # Relayed connections hold two sockets; HAProxy wants about 2.5
    # descriptors per maxconn and refuses to start past the hard limit.
    maxconn = a.nofile // 3 - 100
    files = {
        "tcp-backend.conf": configs.backend_nginx(
            tmp, blue, green, a.nofile, name="tcp-backend",
            extra=configs.tls_backend_servers(tmp, tls_blue, tls_green)),
        "cutover-tcp.toml": configs.cutover_tcp_toml(ports["cutover"], back, a.threads, maxconn),
        "haproxy-tcp.cfg": configs.haproxy_tcp_cfg(ports["haproxy"], back, a.threads, maxconn),
        "nginx-stream.conf": configs.nginx_stream(tmp, ports["nginx"], back, a.threads, a.nofile),
        "report.lua": configs.WRK_LUA,
    }
    os.makedirs(os.path.join(tmp, "www"), exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(tmp, name), "w") as f:
            f.write(text)
    for name in ("tcp-backend.conf", "nginx-stream.conf"):
        r = subprocess.run(["nginx", "-t", "-q", "-e", os.path.join(tmp, "nginx-t.log"),
                            "-p", tmp, "-c", os.path.join(tmp, name)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RunError(f"nginx -t {name}: {r.stderr.strip()}")
    r = subprocess.run(["haproxy", "-c", "-q", "-f", os.path.join(tmp, "haproxy-tcp.cfg")],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RunError(f"haproxy -c: {(r.stderr or r.stdout).strip()}")
    r = subprocess.run([binary, "check", "-c", os.path.join(tmp, "cutover-tcp.toml")],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RunError(f"cutover check: {(r.stderr or r.stdout).strip()}")

    backend = Proc("tcp-backend", ["taskset", "-c", a.backend_cpus, "nginx",
                                   "-e", os.path.join(tmp, "tcp-backend-error.log"),
                                   "-p", tmp, "-c", os.path.join(tmp, "tcp-backend.conf")], tmp)
    procs.append(backend)
    iperf_server = Proc("iperf3-server", ["taskset", "-c", a.backend_cpus, "iperf3", "-s",
                                          "-B", "127.0.0.1", "-p", str(iperf)], tmp)
    procs.append(iperf_server)
    wait_ready(backend, blue)
    wait_ready(backend, green)
    wait_https(backend, tls_blue, configs.SNI_HOST)
    wait_https(backend, tls_green, configs.SNI_HOST)
    measure.wait_listening(iperf, iperf_server)
    backend_pids = [backend.pid, iperf_server.pid]

    commands = {
        "cutover": [binary, "run", "-c", os.path.join(tmp, "cutover-tcp.toml")],
        "haproxy": ["haproxy", "-db", "-f", os.path.join(tmp, "haproxy-tcp.cfg")],
        "nginx": ["nginx", "-e", os.path.join(tmp, "nginx-stream-error.log"), "-p", tmp,
                  "-c", os.path.join(tmp, "nginx-stream.conf")],
    }
    env = dict(os.environ, RUST_LOG="error")
    lua = os.path.join(tmp, "report.lua")
    rounds, all_notes = [], []
    t_start = time.time()
    for rnd in range(a.rounds):
        log(f"tcp round {rnd + 1}/{a.rounds}")
        notes = []
        res = {"round": rnd + 1}
        running = {}
        for name, cmd in commands.items():
            p = Proc(f"{name}-tcp-r{rnd + 1}", ["taskset", "-c", a.proxy_cpus] + cmd, tmp, env=env)
            procs.append(p)
            running[name] = p
        # A proxy that cannot route by SNI still runs the other scenarios.
        sni_broken = {}
        for name, p in running.items():
            wait_ready(p, ports[name]["conn"])
            try:
                wait_https(p, ports[name]["sni"], configs.SNI_HOST, timeout=5)
            except RunError as e:
                sni_broken[name] = {"error": str(e)}
                notes.append(f"tls {name}: {e}")
                continue
            if not refuses_unknown_name(ports[name]["sni"]):
                notes.append(f"{name} relayed a ClientHello for a name no service has")
        pid = {name: (running[name].pid if name in running else None) for name in PROXIES}

        def meter(name):
            return measure.Meter(pid[name], backend_pids, parse_cpus(a.proxy_cpus))

        # Memory per idle relayed connection first, while the proxies are fresh.
        res["idle"] = {}
        for name in PROXIES[1:]:
            res["idle"][name] = attempt(
                lambda: measure.idle_memory(ports[name]["conn"], pid[name], a.idle_conns),
                f"tcp idle {name}", notes)

        res["bulk"] = {}
        for name in PROXIES:
            def go():
                return measure.iperf3(ports[name]["bulk"], cpus=a.load_cpus, duration=a.duration,
                                      meter=meter(name))
            res["bulk"][name] = attempt(lambda: least_noisy(go, a, f"tcp bulk {name}", notes),
                                        f"tcp bulk {name}", notes)
            shown = res["bulk"][name]
            log(f"  bulk      {name:8} " + (f"{shown['gb_per_s']:>10.2f} GB/s" if "gb_per_s" in shown
                                            else shown["error"]))

        # Both connection-per-request scenarios leave TIME_WAIT sockets
        # behind; they run last, as the HTTP section's close row does.
        for scen, key, scheme, host in (("conn", "conn", "http", "127.0.0.1"),
                                        ("tls", "sni", "https", configs.SNI_HOST)):
            res[scen] = {}
            for name in PROXIES:
                if scen == "tls" and name in sni_broken:
                    res[scen][name] = sni_broken[name]
                    continue
                url = f"{scheme}://{host}:{ports[name][key]}/"

                def go():
                    measure.wrk(url, cpus=a.load_cpus, connections=a.connections, duration=1,
                                threads=1, lua=lua, headers=("Connection: close",))  # warm-up
                    return measure.wrk(url, cpus=a.load_cpus, connections=a.connections,
                                       duration=a.duration, threads=1, lua=lua,
                                       headers=("Connection: close",), meter=meter(name))
                res[scen][name] = attempt(
                    lambda: least_noisy(go, a, f"tcp {scen} {name}", notes, settle_time_wait=False),
                    f"tcp {scen} {name}", notes)
                shown = res[scen][name]
                log(f"  {scen:9} {name:8} " + (f"{shown['rps']:>10.0f} conn/s" if "rps" in shown
                                                else shown["error"]))

        res["resources"] = {name: {"peak_rss_mib": measure.peak_rss_kib(pid[name]) / 1024}
                            for name in PROXIES[1:]}
        res["cutover_pool_requests"] = measure.cutover_split(
            ports["cutover"]["admin"], "cutover_tcp_connections_total", 'listener="conn"')
        for name, p in running.items():
            if not p.alive():
                notes.append(f"{name} exited early:\n{p.log_tail()}")
            p.stop()
            procs.remove(p)
            tail = p.log_tail(5).strip()
            if tail:
                notes.append(f"{name} wrote to its log:\n{tail}")
        rounds.append(res)
        all_notes += [f"tcp round {rnd + 1}: {n}" for n in notes]

    for p in (iperf_server, backend):
        p.stop()
        procs.remove(p)
    for name in ("tcp-backend-error.log", "nginx-stream-error.log"):
        path = os.path.join(tmp, name)
        if os.path.exists(path) and os.path.getsize(path):
            with open(path, errors="replace") as f:
                lines = f.read().splitlines()
            all_notes.append(f"{name}: {len(lines)} line(s), last:\n" + "\n".join(lines[-5:]))
    meta = report.machine(a, None, time.time() - t_start, binary, kind="tcp")
    return report.summarise(rounds, report.tcp_sections(), meta, all_notes)

