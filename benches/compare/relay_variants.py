#!/usr/bin/env python3
"""One-off measurement behind the layer-4 relay's choice: the same cutover
binary started four times, `CUTOVER_TCP_RELAY` = copy16, copy64, copy256
and splice, each pinned to CPU 1, side by side in interleaved rounds:
bulk iperf3 through each (GB/s, CPU s per GB) and RSS per idle relayed
connection. Uses the tcp section's configs and measurements.

    python3 benches/compare/relay_variants.py [--rounds 3] [--duration 10]
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile

import configs
import measure
from procs import Proc, free_ports, log, parse_cpus, wait_ready

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
VARIANTS = ["copy16", "copy64", "copy256", "splice"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--idle-conns", type=int, default=1000)
    a = p.parse_args()
    binary = os.path.join(REPO, "target", "release", "cutover")
    os.sched_setaffinity(0, parse_cpus("0"))
    tmp = tempfile.mkdtemp(prefix="cutover-relay-")
    os.chmod(tmp, 0o755)
    procs = []
    try:
        blue, green, iperf = free_ports(3)
        back = {"blue": blue, "green": green, "tls_blue": blue, "tls_green": green, "iperf": iperf}
        with open(os.path.join(tmp, "backend.conf"), "w") as f:
            f.write(configs.backend_nginx(tmp, blue, green, 20000))
        backend = Proc("backend", ["taskset", "-c", "0", "nginx", "-p", tmp, "-c",
                                   os.path.join(tmp, "backend.conf")], tmp)
        procs.append(backend)
        server = Proc("iperf3", ["taskset", "-c", "0", "iperf3", "-s", "-B", "127.0.0.1", "-p", str(iperf)], tmp)
        procs.append(server)
        wait_ready(backend, blue)
        measure.wait_listening(iperf, server)
        results = {v: {"gb_per_s": [], "cpu_s_per_gb": [], "kib_per_conn": [], "slab": [], "busy": []} for v in VARIANTS}
        for rnd in range(a.rounds):
            log(f"round {rnd + 1}/{a.rounds}")
            running = {}
            ports = {}
            for v in VARIANTS:
                grabbed = free_ports(4)
                ports[v] = dict(zip(("bulk", "conn", "sni", "admin"), grabbed))
                path = os.path.join(tmp, f"cutover-{v}.toml")
                with open(path, "w") as f:
                    f.write(configs.cutover_tcp_toml(ports[v], back, 1, 9000))
                env = dict(os.environ, RUST_LOG="error", CUTOVER_TCP_RELAY=v)
                proc = Proc(f"cutover-{v}-r{rnd}", ["taskset", "-c", "1", binary, "run", "-c", path], tmp, env=env)
                procs.append(proc)
                running[v] = proc
            for v, proc in running.items():
                wait_ready(proc, ports[v]["conn"])
            for v, proc in running.items():
                idle = measure.idle_memory(ports[v]["conn"], proc.pid, a.idle_conns)
                results[v]["kib_per_conn"].append(idle["kib_per_conn"])
                results[v]["slab"].append(idle["slab_kib_per_conn"])
            for v, proc in running.items():
                meter = measure.Meter(proc.pid, [backend.pid, server.pid], {1})
                r = measure.iperf3(ports[v]["bulk"], cpus="0", duration=a.duration, meter=meter)
                for k in ("gb_per_s", "cpu_s_per_gb"):
                    results[v][k].append(r[k])
                results[v]["busy"].append(r["proxy_core_busy_pct"])
                log(f"  {v:8} {r['gb_per_s']:.2f} GB/s, {r['cpu_s_per_gb']:.3f} CPU s/GB, "
                    f"core {r['proxy_core_busy_pct']:.0f}%, other {r['other_load_pct']:.1f}%")
            for proc in running.values():
                proc.stop()
                procs.remove(proc)
        print(f"relay variants, medians of {a.rounds} round(s), iperf3 -t {a.duration}, "
              f"{a.idle_conns} idle connections")
        print(f"{'':10}{'GB/s':>8}{'CPU s/GB':>10}{'core %':>8}{'KiB/conn':>10}{'slab KiB/conn':>15}")
        for v in VARIANTS:
            m = {k: statistics.median(vals) for k, vals in results[v].items()}
            print(f"{v:10}{m['gb_per_s']:>8.2f}{m['cpu_s_per_gb']:>10.3f}{m['busy']:>8.0f}{m['kib_per_conn']:>10.2f}{m['slab']:>15.2f}")
            print(f"{'':10}rounds: GB/s {results[v]['gb_per_s']}, CPU s/GB "
                  f"{[round(x, 3) for x in results[v]['cpu_s_per_gb']]}, KiB/conn "
                  f"{[round(x, 2) for x in results[v]['kib_per_conn']]}, slab KiB/conn "
                  f"{[round(x, 2) for x in results[v]['slab']]}")
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
