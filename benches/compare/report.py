"""The comparison's output: medians over rounds, the ratios cutover/HAProxy
and cutover/NGINX, the printed tables (HTTP and layer 4) and the JSON file.

Owns presentation only; it reads the per-round results compare.py collected.
"""

import json
import os
import platform
import re
import statistics
import subprocess
import time

PROXIES = ["direct", "cutover", "haproxy", "nginx"]

# (metric key, label, which way is better, format)
_THROUGHPUT = [
    ("rps", "requests/s", "higher", "{:,.0f}"),
    ("non_2xx_3xx", "non-2xx/3xx responses", "lower", "{:,.0f}"),
    ("socket_errors", "socket errors", "lower", "{:,.0f}"),
    ("cpu_s_per_100k", "CPU s per 100k requests", "lower", "{:.3f}"),
    ("proxy_cpu_pct", "proxy process CPU %", "", "{:.0f}"),
    ("proxy_core_busy_pct", "proxy core busy % (incl. softirq)", "", "{:.0f}"),
    ("other_load_pct", "other processes' load % (noise)", "", "{:.1f}"),
]
_LATENCY = [
    ("p50_ms", "p50 ms", "lower", "{:.3f}"),
    ("p99_ms", "p99 ms", "lower", "{:.3f}"),
    ("p99_9_ms", "p99.9 ms", "lower", "{:.3f}"),
    ("achieved_rps", "achieved req/s", "", "{:,.0f}"),
    ("failed", "non-2xx + failed requests", "lower", "{:,.0f}"),
    ("proxy_cpu_pct", "proxy process CPU %", "", "{:.0f}"),
    ("other_load_pct", "other processes' load % (noise)", "", "{:.1f}"),
]


def sections(rates):
    """The HTTP section's scenarios: (key, title, metrics)."""
    out = [
        ("small_ka", "small response (13 B), keep-alive  [headline]", _THROUGHPUT),
        ("big_ka", "100 KiB response, keep-alive", _THROUGHPUT[:1]
         + [("mib_per_s", "MiB/s", "higher", "{:,.0f}")] + _THROUGHPUT[1:]),
        ("chunked_up", "chunked upload (2 x 512 B), keep-alive", _THROUGHPUT),
        ("close", "new connection per request (Connection: close)", _THROUGHPUT),
    ]
    for i, rate in enumerate(rates or []):
        out.append((f"latency_{i}", f"open loop at {rate:,} req/s, small keep-alive (oha, corrected)", _LATENCY))
    out.append(("idle", "idle keep-alive client connections", [
        ("kib_per_conn", "KiB per connection", "lower", "{:.2f}")]))
    out.append(("resources", "resources over the round", [
        ("peak_rss_mib", "peak RSS MiB (VmHWM)", "lower", "{:.1f}")]))
    return out


_BULK = [
    ("gb_per_s", "GB/s (10^9 bytes)", "higher", "{:.2f}"),
    ("cpu_s_per_gb", "CPU s per GB", "lower", "{:.3f}"),
    ("proxy_cpu_pct", "proxy process CPU %", "", "{:.0f}"),
    ("proxy_core_busy_pct", "proxy core busy % (incl. softirq)", "", "{:.0f}"),
    ("other_load_pct", "other processes' load % (noise)", "", "{:.1f}"),
]
_CONNS = [
    ("rps", "connections/s", "higher", "{:,.0f}"),
    ("non_2xx_3xx", "non-2xx/3xx responses", "lower", "{:,.0f}"),
    ("socket_errors", "socket errors", "lower", "{:,.0f}"),
    ("cpu_s_per_100k", "CPU s per 100k connections", "lower", "{:.3f}"),
] + _THROUGHPUT[4:]


def tcp_sections():
    """The layer-4 section's scenarios: (key, title, metrics)."""
    return [
        ("bulk", "bulk transfer, one stream (iperf3)", _BULK),
        ("conn", "new TCP connection per request (wrk, Connection: close)", _CONNS),
        ("tls", "TLS passthrough routed by SNI, new connection per request (wrk https)", _CONNS),
        ("idle", "idle relayed connections", [
            ("kib_per_conn", "KiB per connection", "lower", "{:.2f}"),
            ("slab_kib_per_conn", "kernel slab KiB per conn. (machine-wide)", "lower", "{:.2f}")]),
        ("resources", "resources over the round", [
            ("peak_rss_mib", "peak RSS MiB (VmHWM)", "lower", "{:.1f}")]),
    ]


_HANDSHAKES = [
    ("rps", "handshakes/s", "higher", "{:,.0f}"),
    ("failed", "non-2xx + failed requests", "lower", "{:,.0f}"),
    ("cpu_ms_per_1k", "proxy CPU ms per 1000 handshakes", "lower", "{:.1f}"),
] + _THROUGHPUT[4:]
_TLS_KA = [
    ("rps", "requests/s", "higher", "{:,.0f}"),
    ("failed", "non-2xx + failed requests", "lower", "{:,.0f}"),
    ("cpu_s_per_100k", "CPU s per 100k requests", "lower", "{:.3f}"),
] + _THROUGHPUT[4:]


def tls_sections():
    """The TLS section's scenarios: (key, title, metrics)."""
    return [
        ("full_ec", "full handshakes, ECDSA P-256 (h2load --h1, one request per connection, no resumption)",
         _HANDSHAKES),
        ("full_rsa", "full handshakes, RSA-2048 (the same)", _HANDSHAKES),
        ("resumed", "resumed handshakes, ECDSA (wrk, Connection: close, TLS 1.3 ticket)", _HANDSHAKES),
        ("ka_h1", "small response, keep-alive over TLS, HTTP/1.1 (wrk)", _TLS_KA),
        ("ka_h2", "small response, keep-alive over TLS, HTTP/2 (h2load -m 10)", _TLS_KA),
        ("resources", "resources over the round", [
            ("peak_rss_mib", "peak RSS MiB (VmHWM)", "lower", "{:.1f}")]),
    ]


def _value(result, metric):
    if not isinstance(result, dict) or "error" in result:
        return None
    if metric == "failed":
        return result.get("non_2xx", 0) + result.get("errors", 0)
    return result.get(metric)


def summarise(rounds, secs, meta, notes):
    medians, ratios, failures = {}, {}, {}
    for scen, _, metrics in secs:
        medians[scen], ratios[scen] = {}, {}
        for metric, _, _, _ in metrics:
            per = {}
            for proxy in PROXIES:
                vals = [_value(r.get(scen, {}).get(proxy), metric) for r in rounds]
                vals = [v for v in vals if v is not None]
                per[proxy] = statistics.median(vals) if vals else None
            medians[scen][metric] = per
            ratios[scen][metric] = {
                "cutover/haproxy": _ratio(per["cutover"], per["haproxy"]),
                "cutover/nginx": _ratio(per["cutover"], per["nginx"]),
            }
        failures[scen] = {p: sum(1 for r in rounds if "error" in r.get(scen, {}).get(p, {}))
                          for p in PROXIES}
    return {"meta": meta, "sections": secs, "medians": medians, "ratios": ratios, "failed_runs": failures,
            "notes": notes, "rounds": rounds}


def _ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def table(data):
    meta = data["meta"]
    lines = [
        f"{meta['title']}: medians of {meta['rounds']} interleaved round(s), "
        f"{meta['threads']} worker thread(s) per proxy on CPU {meta['proxy_cpus']}; "
        f"load on CPU {meta['load_cpus']}, the backends on CPU {meta['backend_cpus']}",
        f"machine: {meta['cpu']} ({meta['cpus']} CPUs), Linux {meta['kernel']}; {meta['versions']}",
        f"{meta['load']}; {meta['idle_conns']} idle connections; "
        f"run {meta['date']}; section took {meta['elapsed_s'] / 60:.1f} min; command: {meta['command']}",
        "",
    ]
    head = f"{'':42}{'better':>7}{'direct':>11}{'cutover':>11}{'haproxy':>11}{'nginx':>11}{'cut/hap':>9}{'cut/ngx':>9}"
    lines += [head, "-" * len(head)]
    for scen, title, metrics in data["sections"]:
        lines.append(title)
        for metric, label, better, fmt in metrics:
            per = data["medians"][scen][metric]
            rat = data["ratios"][scen][metric]
            cells = "".join(f"{_fmt(per[p], fmt):>11}" for p in PROXIES)
            plain = not better or metric in ("non_2xx_3xx", "socket_errors", "failed")
            r1 = "" if plain else _fmt(rat["cutover/haproxy"], "{:.2f}")
            r2 = "" if plain else _fmt(rat["cutover/nginx"], "{:.2f}")
            lines.append(f"  {label:40}{better:>7}{cells}{r1:>9}{r2:>9}")
        failed = {p: n for p, n in data["failed_runs"].get(scen, {}).items() if n}
        if failed:
            lines.append(f"  (failed runs, not in the medians: {failed})")
    lines.append("")
    lines.append("direct = the same load straight to the backend (no proxy): the ceiling of this load side.")
    lines.append("Ratios are cutover's figure over the other's: above 1 is better for \"higher\" rows, "
                 "below 1 for \"lower\" rows.")
    split = [r.get("cutover_pool_requests") for r in data["rounds"] if r.get("cutover_pool_requests")]
    if split:
        blue = sum(s.get("blue", 0) for s in split)
        green = sum(s.get("green", 0) for s in split)
        if blue + green:
            lines.append(f"cutover's own count of the split: blue {100 * blue / (blue + green):.1f}% / "
                         f"green {100 * green / (blue + green):.1f}%")
    for row, per in (data.get("wire") or {}).items():
        seen = []
        for p in PROXIES:
            w = per.get(p) or {}
            if not (w.get("full") or w.get("resumed") or w.get("unknown")):
                seen.append(f"{p} -")
                continue
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(w["negotiated"].items()))
            seen.append(f"{p} {w['full']} full / {w['resumed']} resumed ({kinds})")
        lines.append(f"on the wire, {row}: " + "; ".join(seen))
    noisy = sorted({scen for scen, m in data["medians"].items()
                    for v in (m.get("other_load_pct") or {}).values() if v and v > 5})
    if noisy:
        lines.append(f"warning: other processes used over 5% of the machine during {', '.join(noisy)}; "
                     "those figures are noisy (see \"other processes' load\").")
    if data["notes"]:
        lines.append("")
        lines.append("notes:")
        for n in data["notes"]:
            lines += ["  " + l for l in n.splitlines()]
    return "\n".join(lines)


def _fmt(v, fmt):
    return "-" if v is None else fmt.format(v)


def write_json(path, data):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def _first_line(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return ((r.stdout or "") + (r.stderr or "")).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def machine(a, rates, elapsed, binary, kind="http"):
    """The run's conditions; `kind` is the section ("http", "tcp" or "tls")."""
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            cpu = m.group(1) if m else cpu
    except OSError:
        pass
    nginx = _first_line(["nginx", "-v"]).split("/")[-1]
    haproxy = _first_line(["haproxy", "-v"]).split()[2]
    wrk = _first_line(["wrk", "-v"]).split()[1]
    if kind == "http":
        oha = _first_line(["oha", "--version"]).split()[-1]
        tools = f"wrk {wrk}, oha {oha}"
        title = "cutover vs HAProxy vs NGINX, HTTP"
        load = (f"wrk -c {a.connections} -d {a.duration}s; oha -c {a.oha_connections} "
                f"-z {a.latency_duration}s")
    elif kind == "tls":
        h2load = _first_line(["h2load", "--version"]).split("/")[-1]
        ssl = _first_line(["openssl", "version"]).split()[1]
        tools = f"wrk {wrk}, h2load {h2load}, OpenSSL {ssl}"
        title = "cutover vs HAProxy vs NGINX, TLS termination"
        load = (f"wrk -c {a.connections} -d {a.duration}s; h2load -c {a.connections} -m 10 -D {a.duration}; "
                f"full handshakes: h2load --h1 in batches of 500 connections for {a.duration}s")
    else:
        iperf = _first_line(["iperf3", "--version"]).split()[1]
        tools = f"wrk {wrk}, iperf3 {iperf}"
        title = "cutover vs HAProxy vs NGINX, layer 4 (tcp)"
        load = f"iperf3 -t {a.duration}; wrk -c {a.connections} -d {a.duration}s"
    rev = _first_line(["git", "-C", os.path.dirname(os.path.dirname(binary)), "describe", "--always", "--dirty"])
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "title": title,
        "load": load,
        "versions": f"nginx {nginx}, HAProxy {haproxy}, {tools}, cutover {rev}",
        "rounds": a.rounds,
        "threads": a.threads,
        "proxy_cpus": a.proxy_cpus,
        "load_cpus": a.load_cpus,
        "backend_cpus": a.backend_cpus,
        "connections": a.connections,
        "oha_connections": a.oha_connections,
        "duration_s": a.duration,
        "latency_duration_s": a.latency_duration,
        "idle_conns": a.idle_conns,
        "rates": rates,
        "elapsed_s": elapsed,
        "command": "benches/compare/run " + " ".join(a.argv),
    }
