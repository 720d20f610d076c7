#!/usr/bin/env python3
"""Agent footprint and scrape latency, side by side with mysqld_exporter.

Starts a sandbox fleet (a primary and two replicas, two coordinators) on
its own base 127.0.76.x; the agents run at the production default
intervals (collect 0.5 s, report 1 s, binlog archive every 1 s into the
sandbox's repository: the sandbox writes the same values). Then starts
Debian's prometheus-mysqld-exporter (default collectors) against the same
mariadbd as the measured agent (db1, the primary), through the same Unix
socket and the same account (the sandbox's agent account, from a
temporary my.cnf), on the same IP as the agent, port 9105.

While one connection inserts a row into the primary every 10 ms, for
DURATION seconds:

- every 15 s (Prometheus' default scrape interval) both endpoints are
  scraped once, each on a fresh TCP connection, with Prometheus' request
  headers (`Accept-Encoding: gzip` included);
- every 1 s the agents' and the exporter's RSS (VmRSS) and CPU time
  (utime + stime) are read from /proc.

Then a latency burst: 1,000 sequential scrapes of each endpoint (the
agent's first, then the exporter's), each on a fresh TCP connection
(Prometheus keeps one per target open: a fresh one is the pessimistic
case, it adds the TCP handshake), timed from connect to the last byte,
and the process's CPU time over the burst. The write load goes on
meanwhile.

Prints, for the primary's agent and for mysqld_exporter: RSS
min/median/max and at the start and end, CPU in % of one core over the
duration, scrape latency p50/p99/max (the burst and the 15 s scrapes),
CPU per scrape in the burst, the body size (on the wire and decoded) and
the number of samples; the replica agents' and the primary's mariadbd's
RSS and CPU for reference, and how busy the whole host was (other work on
the machine skews every figure). The raw samples and latencies are left
in the work directory's footprint.json (the script prints where).

Usage: bench/footprint.py [--duration 600] [--agent-bin PATH] [--burst 1000]
                          [--scrape-interval 15] [--write-every 0.01]
  --agent-bin: restart every agent with this binary (same config), e.g.
  target/release/dbfleet-agent, before measuring.
  --write-every 0: no write load.
Env BENCH_BASE (default 127.0.76). Needs `cargo build --workspace --bins`,
pymysql and prometheus-mysqld-exporter.
"""
import argparse
import ctypes
import gzip
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import pymysql

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from backup import app_connect  # noqa: E402
from failover import BIN, DBFLEET, Fleet  # noqa: E402

BASE = os.environ.get("BENCH_BASE", "127.0.76")
EXPORTER = "/usr/bin/prometheus-mysqld-exporter"
EXPORTER_PORT = 9105
HOST = "db1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
# What Prometheus 2.x sends with every scrape.
SCRAPE_HEADERS = (
    "Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n"
    "Accept-Encoding: gzip\r\n"
    "User-Agent: Prometheus/2.45.3\r\n"
    "X-Prometheus-Scrape-Timeout-Seconds: 10\r\n"
)


def on_signal(signum, _frame):
    raise SystemExit(f"stopped by signal {signum}")


def die_with_parent():
    """In the exporter's child: SIGTERM when this script dies, however."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# --- /proc ------------------------------------------------------------------

def host_cpu():
    """(busy, total) jiffies of the whole host, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return sum(v) - v[3] - v[4], sum(v)  # idle, iowait


def proc_sample(pid):
    """(rss bytes, cpu ticks utime+stime, threads) of `pid`, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    rss = threads = 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, ticks, threads


class Sampler(threading.Thread):
    """Reads every watched pid's /proc every `every` seconds, tagging each
    sample with the current phase."""

    def __init__(self, pids, every=1.0):
        super().__init__(daemon=True)
        self.pids, self.every = pids, every
        self.phase = "warmup"
        self.samples = {name: [] for name in pids}  # name -> [(t, phase, rss, ticks, threads)]
        self.samples["host"] = []  # [(t, phase, busy jiffies, total jiffies)]
        self.stop = threading.Event()

    def run(self):
        next_t = time.monotonic()
        while not self.stop.is_set():
            t = time.monotonic()
            self.samples["host"].append((t, self.phase, *host_cpu()))
            for name, pid in self.pids.items():
                s = proc_sample(pid)
                if s:
                    self.samples[name].append((t, self.phase, *s))
            next_t += self.every
            self.stop.wait(max(0.0, next_t - time.monotonic()))

    def host_busy(self, phase):
        """% of all the host's CPUs busy (anyone's work) during `phase`."""
        xs = [s for s in self.samples["host"] if s[1] == phase]
        return 100 * (xs[-1][2] - xs[0][2]) / max(1, xs[-1][3] - xs[0][3])

    def summary(self, name, phase):
        xs = [s for s in self.samples[name] if s[1] == phase]
        if len(xs) < 2:
            return None
        rss = [s[2] / MIB for s in xs]
        wall = xs[-1][0] - xs[0][0]
        cpu_s = (xs[-1][3] - xs[0][3]) / CLK_TCK
        return {
            "n": len(xs), "wall_s": wall, "cpu_s": cpu_s, "cpu_pct": 100 * cpu_s / wall,
            "rss_min": min(rss), "rss_median": statistics.median(rss), "rss_max": max(rss),
            "rss_first": rss[0], "rss_last": rss[-1], "threads_max": max(s[4] for s in xs),
        }


# --- scraping ---------------------------------------------------------------

def scrape(address, timeout=10.0):
    """One GET /metrics on a fresh TCP connection, as Prometheus asks for it:
    (seconds from connect to the last byte, wire bytes, decoded body)."""
    host, port = address.rsplit(":", 1)
    req = (f"GET /metrics HTTP/1.1\r\nHost: {address}\r\n{SCRAPE_HEADERS}"
           "Connection: close\r\n\r\n").encode()
    t0 = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(req)
        chunks = []
        while True:
            b = s.recv(1 << 16)
            if not b:
                break
            chunks.append(b)
    elapsed = time.perf_counter() - t0
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    headers = head.decode("latin-1").lower()
    if not headers.startswith("http/1.1 200"):
        raise RuntimeError(f"{address}: {headers.splitlines()[0] if headers else 'no answer'}")
    if "transfer-encoding: chunked" in headers:
        body = dechunk(body)
    wire = len(body)
    if "content-encoding: gzip" in headers:
        body = gzip.decompress(body)
    return elapsed, wire, body.decode()


def dechunk(b):
    out, i = [], 0
    while True:
        j = b.index(b"\r\n", i)
        n = int(b[i:j].split(b";")[0], 16)
        if n == 0:
            return b"".join(out)
        out.append(b[j + 2:j + 2 + n])
        i = j + 2 + n + 2


def samples_of(text):
    return [l for l in text.splitlines() if l and not l.startswith("#")]


def value(text, name, labels=""):
    for l in samples_of(text):
        key, _, v = l.rpartition(" ")
        if key == name + labels or (not labels and key == name):
            return float(v)
    return None


def percentile(xs, q):
    xs = sorted(xs)
    return xs[max(0, math.ceil(q * len(xs)) - 1)]


def wait_listening(address, timeout=30):
    host, port = address.rsplit(":", 1)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection((host, int(port)), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {address}")


def port_free(address):
    host, port = address.rsplit(":", 1)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the exporter does: TIME_WAIT is fine
    try:
        s.bind((host, int(port)))
        return True
    except OSError:
        return False
    finally:
        s.close()


# --- the fleet --------------------------------------------------------------

def agent_config(fleet, host):
    path = os.path.join(fleet.dir, f"agent-{host}.toml")
    text = open(path).read()
    get = lambda k: next((l.split("=", 1)[1].strip().strip('"') for l in text.splitlines()
                          if l.startswith(k + " ")), None)
    return path, get


def restart_agent(fleet, host, binary):
    """Stops `host`'s agent (SIGTERM) and starts `binary` with its config."""
    pid = fleet.pid(f"agent-{host}")
    os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + 15
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < end:
        time.sleep(0.05)
    if os.path.exists(f"/proc/{pid}"):
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    cfg, _ = agent_config(fleet, host)
    log = open(os.path.join(fleet.dir, "logs", f"agent-{host}.log"), "a")
    p = subprocess.Popen([binary, "--config", cfg], stdout=log, stderr=log, start_new_session=True)
    with open(os.path.join(fleet.dir, "run", f"agent-{host}.pid"), "w") as f:
        f.write(str(p.pid))
    wait_listening(fleet.members[host]["metrics_address"])
    return p.pid


def start_exporter(fleet, host, work):
    """mysqld_exporter against `host`'s mariadbd, through its socket, as the
    agent's account; returns (Popen, address)."""
    _, get = agent_config(fleet, host)
    password = open(get("password_file")).read().strip()
    cnf = os.path.join(work, "exporter.cnf")
    fd = os.open(cnf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"[client]\nuser={get('user')}\npassword={password}\nsocket={get('socket')}\n")
    address = f"{fleet.members[host]['address']}:{EXPORTER_PORT}"
    if not port_free(address):
        raise RuntimeError(f"{address} is taken")
    log = open(os.path.join(work, "exporter.log"), "w")
    p = subprocess.Popen([EXPORTER, f"--config.my-cnf={cnf}", f"--web.listen-address={address}"],
                         stdout=log, stderr=log, preexec_fn=die_with_parent)
    wait_listening(address)
    return p, address


class Load(threading.Thread):
    """One connection inserting a row into the primary every 10 ms, until
    stopped or `deadline` (monotonic)."""

    def __init__(self, fleet, deadline, every=0.01):
        super().__init__(daemon=True)
        self.fleet, self.deadline, self.every = fleet, deadline, every
        self.stop = threading.Event()
        self.rows = self.errors = 0
        self.elapsed = 0.0

    def run(self):
        c = app_connect(self.fleet, HOST)
        cur = c.cursor()
        cur.execute("CREATE TABLE IF NOT EXISTS bench_footprint "
                    "(id BIGINT AUTO_INCREMENT PRIMARY KEY, at TIMESTAMP(6) DEFAULT NOW(6), pad CHAR(32))")
        start = next_t = time.monotonic()
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            try:
                cur.execute("INSERT INTO bench_footprint (pad) VALUES (MD5(RAND()))")
                self.rows += 1
            except pymysql.MySQLError:
                self.errors += 1
                try:
                    c = app_connect(self.fleet, HOST)
                    cur = c.cursor()
                except pymysql.MySQLError:
                    pass
            next_t += self.every
            self.stop.wait(max(0.0, next_t - time.monotonic()))
            self.elapsed = time.monotonic() - start
        c.close()


# --- report -----------------------------------------------------------------

def fmt_lat(xs):
    ms = [x * 1000 for x in xs]
    return (f"p50 {percentile(ms, 0.5):7.2f} ms  p99 {percentile(ms, 0.99):7.2f} ms  "
            f"max {max(ms):7.2f} ms  (n={len(ms)})")


def fmt_fp(s):
    return (f"RSS min/median/max {s['rss_min']:6.1f} / {s['rss_median']:6.1f} / {s['rss_max']:6.1f} MiB "
            f"(first {s['rss_first']:.1f}, last {s['rss_last']:.1f}); CPU {s['cpu_s']:7.2f} s in "
            f"{s['wall_s']:.0f} s = {s['cpu_pct']:5.2f} % of a core; threads {s['threads_max']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=600, help="seconds of steady measurement")
    ap.add_argument("--scrape-interval", type=float, default=15)
    ap.add_argument("--burst", type=int, default=1000, help="sequential scrapes of each endpoint")
    ap.add_argument("--agent-bin", help="restart every agent with this binary first")
    ap.add_argument("--write-every", type=float, default=0.01,
                    help="seconds between the load's inserts (0: no load)")
    args = ap.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    signal.signal(signal.SIGTERM, on_signal)
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:  # leave nohup's choice alone
        signal.signal(signal.SIGHUP, on_signal)

    work = tempfile.mkdtemp(prefix="dbfleet-bench-footprint-")
    # mkdtemp makes it 0700; the sandbox's mysqld runs as the mysql user
    os.chmod(work, 0o755)
    sandbox = os.path.join(work, "sb")
    exporter = load = sampler = None
    try:
        subprocess.run([DBFLEET, "sandbox", "up", "--dir", sandbox, "--replicas", "2",
                        "--coordinators", "2", "--base", BASE], check=True, capture_output=True)
        fleet = Fleet(sandbox)
        fleet.wait_healthy()
        _, get = agent_config(fleet, HOST)
        binary = os.path.join(BIN, "dbfleet-agent")
        if args.agent_bin:
            binary = os.path.abspath(args.agent_bin)
            for h in fleet.members:
                restart_agent(fleet, h, binary)
                fleet.wait_healthy()
        exporter, exporter_addr = start_exporter(fleet, HOST, work)
        agent_addr = fleet.members[HOST]["metrics_address"]
        pids = {f"agent-{h}": fleet.pid(f"agent-{h}") for h in fleet.members}
        pids["exporter"] = exporter.pid
        pids["mariadbd-db1"] = fleet.pid(f"mariadbd-{HOST}")

        print(f"machine: {os.cpu_count()} cores, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB; "
              f"agent {binary}; exporter {EXPORTER} on {exporter_addr}; agent /metrics {agent_addr}")
        print(f"agent config: report_interval {get('report_interval')}, collect_interval "
              f"{get('collect_interval')}, coordinators {get('coordinators')}, backup repository "
              f"{get('repository')} (binlog archive on, default interval 1s)", flush=True)

        burst_budget = 2 * args.burst * 0.2 + 60
        if args.write_every > 0:
            load = Load(fleet, time.monotonic() + args.duration + burst_budget, args.write_every)
            load.start()
        sampler = Sampler(pids)
        sampler.start()
        time.sleep(5)  # warm-up: the load's table exists, both have scraped once

        lat = {"agent": [], "exporter": []}
        bodies = {}
        sampler.phase = "steady"
        load_start = open("/proc/loadavg").read().split()[:3]
        t0 = time.monotonic()
        n = 0
        while True:
            at = t0 + n * args.scrape_interval
            if at > t0 + args.duration:
                break
            time.sleep(max(0.0, at - time.monotonic()))
            for name, addr in (("agent", agent_addr), ("exporter", exporter_addr)):
                e, wire, body = scrape(addr)
                lat[name].append(e)
                bodies[name] = (wire, body)
            n += 1
        time.sleep(max(0.0, t0 + args.duration - time.monotonic()))

        burst, burst_cpu = {"agent": [], "exporter": []}, {}
        for name, addr, pid in (("agent", agent_addr, pids["agent-db1"]),
                                ("exporter", exporter_addr, exporter.pid)):
            sampler.phase = f"burst-{name}"
            before, t_before, h_before = proc_sample(pid), time.monotonic(), host_cpu()
            for _ in range(args.burst):
                burst[name].append(scrape(addr)[0])
            after, t_after, h_after = proc_sample(pid), time.monotonic(), host_cpu()
            burst_cpu[name] = ((after[1] - before[1]) / CLK_TCK, t_after - t_before, after[0],
                               100 * (h_after[0] - h_before[0]) / max(1, h_after[1] - h_before[1]))
        sampler.phase = "after"
        time.sleep(1.5)
        sampler.stop.set()
        if load:
            load.stop.set()
            load.join(5)

        status = fleet.status() or {}
        member = next((m for m in status.get("members", []) if m["host"] == HOST), {})

        print(f"\nsteady phase: {args.duration:.0f} s, {n} scrapes of each endpoint every "
              f"{args.scrape_interval:.0f} s; write load: "
              + (f"{load.rows} rows inserted in {load.elapsed:.0f} s "
                 f"({load.rows / max(load.elapsed, 1e-9):.0f}/s), {load.errors} errors; " if load else "none; ")
              + f"GTID at the end {member.get('gtid_executed')}, binlog archive {member.get('binlog_archive')}")
        print(f"host: {sampler.host_busy('steady'):.0f} % of all {os.cpu_count()} CPUs busy during the steady "
              f"phase ({burst_cpu['agent'][3]:.0f} % / {burst_cpu['exporter'][3]:.0f} % "
              f"during the agent's / exporter's burst); load average {load_start} at the start, "
              f"{open('/proc/loadavg').read().split()[:3]} at the end")
        for name, label in (("agent-db1", "agent (db1, primary)"), ("exporter", "mysqld_exporter (db1)")):
            print(f"{label:24} {fmt_fp(sampler.summary(name, 'steady'))}")
        for name in sorted(p for p in pids if p.startswith("agent-") and p != "agent-db1"):
            print(f"{name + ' (replica)':24} {fmt_fp(sampler.summary(name, 'steady'))}")
        print(f"{'mariadbd (db1)':24} {fmt_fp(sampler.summary('mariadbd-db1', 'steady'))}")
        for name, proc in (("agent", "agent-db1"), ("exporter", "exporter")):
            cpu, wall, rss, _ = burst_cpu[name]
            peak = max([s[2] for s in sampler.samples[proc] if s[1] == f"burst-{name}"] + [rss])
            print(f"{proc:24} burst of {args.burst} scrapes: {cpu:.2f} s CPU in {wall:.1f} s = "
                  f"{1000 * cpu / args.burst:.2f} ms CPU per scrape; RSS peak {peak / MIB:.1f} MiB")

        print(f"\nscrape latency, fresh TCP connection each, connect to last byte:")
        for name in ("agent", "exporter"):
            print(f"{name:9} burst of {args.burst}: {fmt_lat(burst[name])}")
            print(f"{name:9} 15 s scrapes:  {fmt_lat(lat[name])}")

        print("\nlast 15 s scrape:")
        for name in ("agent", "exporter"):
            wire, body = bodies[name]
            s = samples_of(body)
            fams = sum(1 for l in body.splitlines() if l.startswith("# TYPE "))
            mysql = sum(1 for l in s if l.startswith("mysql_"))
            up = value(body, "mysql_up")
            failed = [l.split("{", 1)[1].split("}")[0] for l in s
                      if l.startswith("mysql_exporter_collector_success") and l.endswith(" 0")]
            print(f"{name:9} body {len(body.encode()):7,} B decoded, {wire:7,} B on the wire; "
                  f"{len(s):5,} samples in {fams} families ({mysql:,} mysql_*); mysql_up {up}; "
                  f"failed collectors {failed or 'none'}")
        err = value(bodies["exporter"][1], "mysql_exporter_last_scrape_error")
        print(f"exporter mysql_exporter_last_scrape_error {err}")
        out = {"burst": burst, "steady_latency": lat,
               "samples": {k: v for k, v in sampler.samples.items()}}
        with open(os.path.join(work, "footprint.json"), "w") as f:
            json.dump(out, f)
        print(f"raw data: {work}/footprint.json")
    finally:
        if sampler:
            sampler.stop.set()
        if load:
            load.stop.set()
        if exporter:
            exporter.terminate()
            try:
                exporter.wait(5)
            except subprocess.TimeoutExpired:
                exporter.kill()
        if os.path.exists(os.path.join(work, "exporter.cnf")):
            os.remove(os.path.join(work, "exporter.cnf"))
        if os.path.isdir(sandbox):
            subprocess.run([DBFLEET, "sandbox", "down", "--dir", sandbox], capture_output=True)


if __name__ == "__main__":
    main()
