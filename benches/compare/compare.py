#!/usr/bin/env python3
"""Side-by-side comparison of cutover with HAProxy and NGINX on loopback.

Owns the run and its HTTP section: checks the tools (installs nothing),
builds cutover, starts a plain nginx backend and the three proxies with
generated configs in a temp dir, runs every scenario interleaved over
several rounds, and stops every process it started. The layer-4 section
lives in tcp.py, the TLS section in tls.py, config text in configs.py, measurements in measure.py,
process handling in procs.py, the tables and JSON in report.py. See
README.md beside it.
"""

import argparse
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import configs
import measure
import report
import tcp
import tls
from measure import RunError
from procs import (Proc, attempt, free_ports, least_noisy, log, parse_cpus, wait_ready)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

PROXIES = ["direct", "cutover", "haproxy", "nginx"]
THROUGHPUT = [
    # name, path, extra request headers, wrk script
    ("small_ka", "/", (), "report.lua"),
    ("big_ka", configs.BIG_PATH, (), "report.lua"),
    ("chunked_up", "/", (), "chunked.lua"),
    ("close", "/", ("Connection: close",), "report.lua"),
]
LATENCY_FRACTIONS = [0.25, 0.50, 0.75]

TOOLS = {
    "wrk": "apt-get install -y wrk",
    "nginx": "apt-get install -y nginx",
    "haproxy": "apt-get install -y haproxy",
    "oha": "cargo install oha --locked",
    "taskset": "apt-get install -y util-linux",
    "cargo": "see https://rustup.rs",
    "iperf3": "apt-get install -y iperf3",
    "openssl": "apt-get install -y openssl",
    "h2load": "apt-get install -y nghttp2-client",
}
# The tools each section needs beyond wrk, nginx, haproxy, taskset and cargo.
SECTION_TOOLS = {"http": {"oha"}, "tcp": {"iperf3", "openssl"}, "tls": {"openssl", "h2load"}}




def parse_args():
    p = argparse.ArgumentParser(
        prog="benches/compare/run",
        description="Compare cutover with HAProxy and NGINX on loopback (see benches/compare/README.md).")
    p.add_argument("--threads", type=int, default=1, help="worker threads/processes of every proxy (default 1)")
    p.add_argument("--rounds", type=int, help="interleaved rounds; medians are taken over them (default 3)")
    p.add_argument("--duration", type=int, help="seconds per wrk run (default 10)")
    p.add_argument("--latency-duration", type=int, help="seconds per oha run (default 10)")
    p.add_argument("--connections", type=int, default=64, help="wrk concurrency (default 64)")
    p.add_argument("--oha-connections", type=int, default=64, help="oha connections for the open-loop runs (default 64)")
    p.add_argument("--idle-conns", type=int, default=1000, help="idle keep-alive connections for the memory figure (default 1000)")
    p.add_argument("--rates", help="open-loop rates in req/s, comma-separated (default: 25,50,75%% of HAProxy's small keep-alive peak in round 1)")
    p.add_argument("--proxy-cpus", default="1", help="taskset CPU list for the proxy under test (default 1)")
    p.add_argument("--load-cpus", default="0", help="taskset CPU list for wrk/oha and the backend (default 0)")
    p.add_argument("--backend-cpus", help="taskset CPU list for the backend (default: --load-cpus); "
                   "with 3 or more CPUs, giving it its own keeps the load generator's latency clean")
    p.add_argument("--json", default=os.path.join(REPO, "target", "compare.json"), help="where to write the JSON (default target/compare.json)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, 3 s runs")
    p.add_argument("--no-build", action="store_true", help="use target/release/cutover as it is")
    p.add_argument("--quiet-wait", type=int,
                   help="before each run, wait up to this many seconds for the machine to be under "
                        "10%% busy (0: don't wait; default 60, 5 with --quick)")
    p.add_argument("--noisy-retries", type=int,
                   help="redo a run in which other processes took over 5%% of the machine, up to this "
                        "many times (default 2, 0 with --quick)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir with configs and logs")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--tcp-only", action="store_true", help="run only the layer-4 (tcp) section")
    only.add_argument("--http-only", action="store_true", help="run only the HTTP section")
    only.add_argument("--tls-only", action="store_true", help="run only the TLS termination section")
    a = p.parse_args()
    a.argv = sys.argv[1:]
    a.backend_cpus = a.backend_cpus or a.load_cpus
    a.sections = (["tcp"] if a.tcp_only else ["http"] if a.http_only else ["tls"] if a.tls_only
                  else ["http", "tcp", "tls"])
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.duration = a.duration or (3 if a.quick else 10)
    a.latency_duration = a.latency_duration or (3 if a.quick else 10)
    if a.noisy_retries is None:
        a.noisy_retries = 0 if a.quick else 2
    if a.quiet_wait is None:
        a.quiet_wait = 5 if a.quick else 60
    if a.threads < 1 or a.rounds < 1 or a.duration < 1 or a.latency_duration < 1:
        p.error("--threads, --rounds and durations must be at least 1")
    if a.rates:
        try:
            a.rates = [int(r) for r in a.rates.split(",")]
        except ValueError:
            p.error("--rates takes integers, e.g. 10000,20000,30000")
    return a


def check_tools(a):
    wanted = set().union(*(SECTION_TOOLS[s] for s in a.sections))
    skip = set().union(*SECTION_TOOLS.values()) - wanted
    missing = [t for t in TOOLS if t not in skip and shutil.which(t) is None]
    if not missing:
        return
    print("benches/compare: missing tools: " + ", ".join(missing), file=sys.stderr)
    print("Install them (this harness installs nothing itself):", file=sys.stderr)
    apt = [t for t in missing if TOOLS[t].startswith("apt-get")]
    if apt:
        pkgs = " ".join(TOOLS[t].split()[-1] for t in apt)
        print(f"  sudo apt-get update && sudo apt-get install -y {pkgs}", file=sys.stderr)
        print("  (the packages may start system nginx/haproxy services; the harness does not need them:", file=sys.stderr)
        print("   sudo systemctl disable --now nginx haproxy)", file=sys.stderr)
    for t in missing:
        if not TOOLS[t].startswith("apt-get"):
            print(f"  {t}: {TOOLS[t]}", file=sys.stderr)
    sys.exit(1)


def check_cpus(a):
    allowed = os.sched_getaffinity(0)
    for flag, spec in (("--proxy-cpus", a.proxy_cpus), ("--load-cpus", a.load_cpus),
                       ("--backend-cpus", a.backend_cpus)):
        cpus = parse_cpus(spec)
        if not cpus <= allowed:
            sys.exit(f"benches/compare: {flag} {spec}: CPUs {sorted(cpus - allowed)} are not available "
                     f"(this process may use {sorted(allowed)})")
    if parse_cpus(a.proxy_cpus) & (parse_cpus(a.load_cpus) | parse_cpus(a.backend_cpus)):
        log("warning: --proxy-cpus and --load-cpus overlap; figures will not be per proxy core")




def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 200_000
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    log(f"ulimit -n {soft}")
    return soft




def build():
    log("cargo build --release")
    r = subprocess.run(["cargo", "build", "--release", "--bin", "cutover"], cwd=REPO)
    if r.returncode != 0:
        sys.exit("benches/compare: cargo build --release failed")


def main():
    a = parse_args()
    check_tools(a)
    check_cpus(a)
    a.nofile = raise_nofile()
    if a.nofile < 2 * a.idle_conns + 1000:
        sys.exit(f"benches/compare: ulimit -n is {a.nofile}; --idle-conns {a.idle_conns} needs at least "
                 f"{2 * a.idle_conns + 1000} (raise the hard limit, e.g. in /etc/security/limits.conf)")
    if not a.no_build:
        build()
    binary = os.path.join(REPO, "target", "release", "cutover")
    if not os.access(binary, os.X_OK):
        sys.exit(f"benches/compare: {binary} missing; run without --no-build")
    # The harness itself (and the idle-connection helper) runs beside the load generator.
    os.sched_setaffinity(0, parse_cpus(a.load_cpus))

    per_round = 0
    if "http" in a.sections:
        per_round += (len(THROUGHPUT) * len(PROXIES) * (a.duration + 1)
                      + len(LATENCY_FRACTIONS) * len(PROXIES) * a.latency_duration + 20)
    if "tcp" in a.sections:
        per_round += tcp.seconds_per_round(a)
    if "tls" in a.sections:
        per_round += tls.seconds_per_round(a)
    log(f"{a.rounds} round(s), about {per_round * a.rounds // 60 + 1} min; proxies on CPU {a.proxy_cpus}, "
        f"load on CPU {a.load_cpus}, backend on CPU {a.backend_cpus}, {a.threads} thread(s) per proxy")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: sys.exit(f"benches/compare: stopped by signal {s}"))

    tmp = tempfile.mkdtemp(prefix="cutover-compare-")
    os.chmod(tmp, 0o755)  # nginx workers may run as another user
    procs = []
    try:
        out = {}
        if "http" in a.sections:
            out["http"] = run(a, tmp, binary, procs)
        if "tcp" in a.sections:
            out["tcp"] = tcp.run(a, tmp, binary, procs)
        if "tls" in a.sections:
            out["tls"] = tls.run(a, tmp, binary, procs)
        report.write_json(a.json, out)
        for data in out.values():
            print(report.table(data))
            print()
        log(f"JSON written to {a.json}")
        return 0
    finally:
        for p in reversed(procs):
            p.stop()
        if a.keep_tmp:
            log(f"configs and logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run(a, tmp, binary, procs):
    """The HTTP section; returns its summary for the table and the JSON."""
    blue, green, p_cut, p_admin, p_hap, p_ngx = free_ports(6)
    os.makedirs(os.path.join(tmp, "www"))
    with open(os.path.join(tmp, "www", configs.BIG_PATH.lstrip("/")), "wb") as f:
        f.write(b"x" * configs.BIG_SIZE)
    os.chmod(os.path.join(tmp, "www"), 0o755)
    files = {
        "backend.conf": configs.backend_nginx(tmp, blue, green, a.nofile),
        "cutover.toml": configs.cutover_toml(p_cut, p_admin, blue, green, a.threads,
                                             a.nofile // 2 - 100),
        # HAProxy wants about 2.5 descriptors per maxconn, and refuses to start
        # when the hard limit is below that.
        "haproxy.cfg": configs.haproxy_cfg(p_hap, blue, green, a.threads, a.nofile // 3 - 100),
        "nginx-proxy.conf": configs.nginx_proxy(tmp, p_ngx, blue, green, a.threads, a.nofile),
        "report.lua": configs.WRK_LUA,
        "chunked.lua": configs.WRK_CHUNKED_LUA,
    }
    for name, text in files.items():
        with open(os.path.join(tmp, name), "w") as f:
            f.write(text)
    for name in ("backend.conf", "nginx-proxy.conf"):
        r = subprocess.run(["nginx", "-t", "-q", "-e", os.path.join(tmp, "nginx-t.log"),
                            "-p", tmp, "-c", os.path.join(tmp, name)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RunError(f"nginx -t {name}: {r.stderr.strip()}")
    r = subprocess.run(["haproxy", "-c", "-q", "-f", os.path.join(tmp, "haproxy.cfg")], capture_output=True, text=True)
    if r.returncode != 0:
        raise RunError(f"haproxy -c: {(r.stderr or r.stdout).strip()}")
    r = subprocess.run([binary, "check", "-c", os.path.join(tmp, "cutover.toml")], capture_output=True, text=True)
    if r.returncode != 0:
        raise RunError(f"cutover check: {(r.stderr or r.stdout).strip()}")

    backend = Proc("backend", ["taskset", "-c", a.backend_cpus, "nginx", "-e", os.path.join(tmp, "backend-error.log"),
                               "-p", tmp, "-c", os.path.join(tmp, "backend.conf")], tmp)
    procs.append(backend)
    wait_ready(backend, blue)
    wait_ready(backend, green)
    wait_ready(backend, blue, configs.BIG_PATH)

    ports = {"direct": blue, "cutover": p_cut, "haproxy": p_hap, "nginx": p_ngx}
    a.ports = [blue, green, p_cut, p_hap, p_ngx]
    commands = {
        "cutover": [binary, "run", "-c", os.path.join(tmp, "cutover.toml")],
        "haproxy": ["haproxy", "-db", "-f", os.path.join(tmp, "haproxy.cfg")],
        "nginx": ["nginx", "-e", os.path.join(tmp, "nginx-proxy-error.log"), "-p", tmp,
                  "-c", os.path.join(tmp, "nginx-proxy.conf")],
    }
    env = dict(os.environ, RUST_LOG="error")
    rates = a.rates
    rounds = []
    t_start = time.time()
    all_notes = []
    for rnd in range(a.rounds):
        log(f"round {rnd + 1}/{a.rounds}")
        notes = []
        res = {"round": rnd + 1}
        running = {}
        for name, cmd in commands.items():
            p = Proc(f"{name}-r{rnd + 1}", ["taskset", "-c", a.proxy_cpus] + cmd, tmp, env=env)
            procs.append(p)
            running[name] = p
        for name, p in running.items():
            wait_ready(p, ports[name])
        pid = {name: (running[name].pid if name in running else None) for name in PROXIES}

        def meter(name):
            return measure.Meter(pid[name], backend.pid, parse_cpus(a.proxy_cpus))

        # Memory per idle connection first, while the proxies are fresh.
        res["idle"] = {}
        for name in PROXIES[1:]:
            res["idle"][name] = attempt(lambda: measure.idle_memory(ports[name], pid[name], a.idle_conns),
                                        f"idle {name}", notes)
        def throughput(scen, path, headers, script):
            res[scen] = {}
            lua = os.path.join(tmp, script)
            for name in PROXIES:
                url = f"http://127.0.0.1:{ports[name]}{path}"

                def go():
                    measure.wrk(url, cpus=a.load_cpus, connections=a.connections, duration=1,
                                threads=1, lua=lua, headers=headers)  # warm-up, not recorded
                    return measure.wrk(url, cpus=a.load_cpus, connections=a.connections,
                                       duration=a.duration, threads=1, lua=lua, headers=headers,
                                       meter=meter(name))
                # Connection: close leaves the kernel full of TIME_WAIT sockets
                # anyway; every other run waits for them to go.
                res[scen][name] = attempt(lambda: least_noisy(go, a, f"{scen} {name}", notes,
                                                              settle_time_wait=scen != "close"),
                                          f"{scen} {name}", notes)
                shown = res[scen][name]
                log(f"  {scen:9} {name:8} " + (f"{shown['rps']:>10.0f} req/s" if "rps" in shown else shown["error"]))

        def latency(rates):
            for i, rate in enumerate(rates):
                key = f"latency_{i}"
                res[key] = {}
                for name in PROXIES:
                    url = f"http://127.0.0.1:{ports[name]}/"

                    def go():
                        return measure.oha(url, cpus=a.load_cpus, rate=rate, duration=a.latency_duration,
                                           connections=a.oha_connections,
                                           threads=len(parse_cpus(a.load_cpus)), meter=meter(name))
                    res[key][name] = attempt(lambda: least_noisy(go, a, f"latency {rate} {name}", notes),
                                             f"latency {rate} {name}", notes)
                    shown = res[key][name]
                    log(f"  {rate:>6} req/s {name:8} " + (f"p99 {shown['p99_ms']:.3f} ms" if shown.get("p99_ms") is not None else shown.get("error", "?")))

        # The connection-per-request scenario goes last: its TIME_WAIT sockets
        # slow the kernel's loopback path for a minute after it.
        for scen, path, headers, script in THROUGHPUT:
            if scen != "close":
                throughput(scen, path, headers, script)
        if rates is None:
            peak = res["small_ka"]["haproxy"].get("rps")
            if not peak:
                raise RunError("HAProxy's small keep-alive peak is unknown; give --rates")
            rates = [max(1, int(peak * f)) for f in LATENCY_FRACTIONS]
            log(f"open-loop rates: {rates} req/s (25/50/75% of HAProxy's {peak:.0f} req/s)")
        latency(rates)
        for scen, path, headers, script in THROUGHPUT:
            if scen == "close":
                throughput(scen, path, headers, script)

        res["resources"] = {name: {"peak_rss_mib": measure.peak_rss_kib(pid[name]) / 1024}
                            for name in PROXIES[1:]}
        res["cutover_pool_requests"] = measure.cutover_split(p_admin, "cutover_requests_total")
        for name, p in running.items():
            if not p.alive():
                notes.append(f"{name} exited early:\n{p.log_tail()}")
            p.stop()
            procs.remove(p)
            tail = p.log_tail(5).strip()
            if tail:
                notes.append(f"{name} wrote to its log:\n{tail}")
        rounds.append(res)
        all_notes += [f"round {rnd + 1}: {n}" for n in notes]
    notes = all_notes

    for name in ("backend-error.log", "nginx-proxy-error.log"):
        path = os.path.join(tmp, name)
        if os.path.exists(path) and os.path.getsize(path):
            with open(path, errors="replace") as f:
                lines = f.read().splitlines()
            notes.append(f"{name}: {len(lines)} line(s), last:\n" + "\n".join(lines[-5:]))
    backend.stop()
    procs.remove(backend)
    meta = report.machine(a, rates, time.time() - t_start, binary)
    return report.summarise(rounds, report.sections(rates), meta, notes)




if __name__ == "__main__":
    try:
        sys.exit(main())
    except RunError as e:
        sys.exit(f"benches/compare: {e}")
    except KeyboardInterrupt:
        sys.exit("benches/compare: interrupted")
