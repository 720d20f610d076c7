#!/usr/bin/env python3
"""Failover and switchover write unavailability, measured from outside.

Starts a sandbox fleet (3 MariaDB servers with lossless semi-sync, 3
agents, 2 coordinators, default [failover] settings: fast window 1 s, also
the host path's, counted from the primary agent's last report; agents
report every 1 s) and then, ROUNDS times each:

- mysqld: kill -9 of the primary's mysqld; time until an INSERT through
  the application account succeeds on another member.
- host: kill -9 of the primary's agent and mysqld together; same clock.
- switchover: a writer inserts in a tight loop while `dbfleet switchover`
  runs; the figure is the longest gap between two acknowledged inserts.

After each kill the old primary's processes are restarted and the round
waits until it rejoined. The anti-flap budget is raised for the run.

Usage: bench/failover.py [ROUNDS] [--flavor mariadb|mysql] (default 10
rounds, MariaDB); needs `cargo build --bins` and pymysql (apt-get install
python3-pymysql or pip install pymysql). `--flavor mysql` (or FLAVOR=mysql)
runs MySQL 9.7 servers (./scripts/install-mysql) instead of MariaDB.
MYSQL_TLS=off runs the sandbox on plain TCP (default: required, every
connection and replication link over verified TLS), to measure what TLS
costs.
"""
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import pymysql

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "debug")
DBFLEET = os.path.join(BIN, "dbfleet")
BASE = os.environ.get("BENCH_BASE", "127.0.78")


class Fleet:
    def __init__(self, sandbox):
        self.dir = sandbox
        self.env = dict(os.environ, DBFLEET_CONFIG=os.path.join(sandbox, "dbfleet.toml"))
        with open(os.path.join(sandbox, "sandbox.json")) as f:
            self.info = json.load(f)
        self.members = {m["host"]: m for m in self.info["members"]}

    def cli(self, *args):
        out = subprocess.run([DBFLEET, *args, "--output", "json"], env=self.env,
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"dbfleet {' '.join(args)}: {out.stderr.strip()}")
        return json.loads(out.stdout)

    def status(self):
        try:
            return self.cli("status")["clusters"][0]
        except (RuntimeError, ValueError, KeyError, IndexError):
            return None

    def wait_healthy(self, timeout=120):
        """Waits for one writable primary and every other member replicating
        from it (a restarted old primary counts once it rejoined: until
        then it shows no problem, but the next round's failover would wait
        for it)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            c = self.status()
            if c and c["primary"] and not c.get("problems"):
                p = next(m for m in c["members"] if m["host"] == c["primary"])
                if p["writable"] and all(
                        m["source"] == p["mysql_address"] and m["io_running"] and m["sql_running"]
                        for m in c["members"] if m["host"] != c["primary"]):
                    return c["primary"]
            time.sleep(0.1)
        sys.exit(f"fleet not healthy: {self.status()}")

    def tls(self):
        """pymysql's TLS arguments: the sandbox's servers refuse plain TCP
        and present certificates from its CA for their addresses."""
        ca = self.info.get("mysql_tls_ca")
        return {"ssl_ca": ca, "ssl_verify_cert": True, "ssl_verify_identity": True} if ca else {}

    def connect(self, host, timeout=1):
        m = self.members[host]
        return pymysql.connect(host=m["address"], port=m["mysql_port"], user=self.info["app_user"],
                               password=self.info["app_password"], database=self.info["app_database"],
                               connect_timeout=timeout, read_timeout=2, write_timeout=2,
                               autocommit=True, **self.tls())

    def pid(self, name):
        path = os.path.join(self.dir, "run", f"{name}.pid")
        with open(path) as f:
            return int(f.read().strip())

    def as_service_user(self):
        """Popen arguments that run a process as the sandbox does: as the
        mysql user when started by root (its data and keys are theirs)."""
        return {"user": "mysql", "group": "mysql"} if os.geteuid() == 0 else {}

    def server_name(self, host):
        """The name the server of `host` runs under in run/ and logs/."""
        return f"{self.server_program()[0]}-{host}"

    def server_program(self):
        """(name, path) of the servers' program."""
        with open(os.path.join(self.dir, "sandbox.json")) as f:
            if json.load(f).get("flavor") == "mysql":
                return "mysqld", os.path.join(ROOT, "target", "tools", "mysql", "bin", "mysqld")
        return "mariadbd", "/usr/sbin/mariadbd"

    def start_mysqld(self, host):
        name = self.server_name(host)
        subprocess.Popen([self.server_program()[1], f"--defaults-file={self.dir}/{host}/my.cnf",
                          f"--pid-file={self.dir}/run/{name}.pid",
                          f"--log-error={self.dir}/logs/{name}.log"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                         **self.as_service_user())

    def start_agent(self, host):
        log = open(os.path.join(self.dir, "logs", f"agent-{host}.log"), "a")
        p = subprocess.Popen([os.path.join(BIN, "dbfleet-agent"), "--config",
                              os.path.join(self.dir, f"agent-{host}.toml")],
                             stdout=log, stderr=log, start_new_session=True,
                             **self.as_service_user())
        with open(os.path.join(self.dir, "run", f"agent-{host}.pid"), "w") as f:
            f.write(str(p.pid))


def insert_anywhere(fleet, hosts, value):
    for h in hosts:
        try:
            c = fleet.connect(h, timeout=0.5)
            with c.cursor() as cur:
                cur.execute("INSERT INTO bench (id) VALUES (%s)", (value,))
            c.close()
            return h
        except pymysql.MySQLError:
            continue
    return None


def kill_round(fleet, mode, seq):
    old = fleet.wait_healthy()
    others = [h for h in fleet.members if h != old]
    t0 = time.monotonic()
    os.kill(fleet.pid(fleet.server_name(old)), signal.SIGKILL)
    if mode == "host":
        os.kill(fleet.pid(f"agent-{old}"), signal.SIGKILL)
    while True:
        seq[0] += 1
        if insert_anywhere(fleet, others, seq[0]):
            elapsed = time.monotonic() - t0
            break
        time.sleep(0.01)
    fleet.start_mysqld(old)
    if mode == "host":
        fleet.start_agent(old)
    fleet.wait_healthy()
    return elapsed


def switchover_round(fleet, seq):
    old = fleet.wait_healthy()
    stop = threading.Event()
    acks = []

    def writer():
        target = old
        conn = None
        while not stop.is_set():
            try:
                if conn is None:
                    conn = fleet.connect(target, timeout=0.5)
                seq[0] += 1
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO bench (id) VALUES (%s)", (seq[0],))
                acks.append(time.monotonic())
            except pymysql.MySQLError:
                conn = None
                hosts = list(fleet.members)
                target = hosts[(hosts.index(target) + 1) % len(hosts)]

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(1.0)
    fleet.cli("switchover", "--cluster", "main")
    time.sleep(1.0)
    stop.set()
    t.join()
    gaps = [b - a for a, b in zip(acks, acks[1:])]
    return max(gaps)


def summary(name, xs):
    xs = sorted(xs)
    print(f"{name}: n={len(xs)} p50={statistics.median(xs):.3f}s max={xs[-1]:.3f}s "
          f"min={xs[0]:.3f}s")


def bench_args(default_rounds):
    """ROUNDS and --flavor from the command line (FLAVOR in the
    environment as the default), shared by the bench scripts."""
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("rounds", nargs="?", type=int, default=default_rounds)
    p.add_argument("--flavor", choices=["mariadb", "mysql"],
                   default=os.environ.get("FLAVOR", "mariadb"))
    a = p.parse_args()
    return a.rounds, a.flavor


def main():
    rounds, flavor = bench_args(10)
    work = tempfile.mkdtemp(prefix="dbfleet-bench-")
    # mkdtemp makes it 0700; the sandbox's mysqld runs as the mysql user
    os.chmod(work, 0o755)
    sandbox = os.path.join(work, "sb")
    tls = os.environ.get("MYSQL_TLS", "required")
    print(f"TLS to MySQL: {tls}; flavor: {flavor}", flush=True)
    subprocess.run([DBFLEET, "sandbox", "up", "--dir", sandbox, "--base", BASE,
                    "--mysql-tls", tls, "--flavor", flavor], check=True, stdout=subprocess.DEVNULL)
    fleet = Fleet(sandbox)
    try:
        fleet.cli("failover-policy", "--cluster", "main", "--budget", "1000", "--window-seconds", "1")
        primary = fleet.wait_healthy()
        c = fleet.connect(primary)
        with c.cursor() as cur:
            cur.execute("CREATE TABLE bench (id BIGINT PRIMARY KEY)")
        c.close()
        seq = [0]
        results = {"mysqld": [], "host": [], "switchover": []}
        for mode in ("mysqld", "host"):
            for i in range(rounds):
                s = kill_round(fleet, mode, seq)
                results[mode].append(s)
                print(f"{mode} round {i + 1}: writes accepted again after {s:.3f}s", flush=True)
        for i in range(rounds):
            s = switchover_round(fleet, seq)
            results["switchover"].append(s)
            print(f"switchover round {i + 1}: longest write gap {s:.3f}s", flush=True)
        summary("kill -9 of the primary's mysqld -> writes accepted", results["mysqld"])
        summary("death of the primary host -> writes accepted", results["host"])
        summary("switchover write gap", results["switchover"])
    finally:
        subprocess.run([DBFLEET, "sandbox", "down", "--dir", sandbox], stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
