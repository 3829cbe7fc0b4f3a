#!/usr/bin/env python3
"""Runs RabbitMQ's python STOMP suite (src/, vendored unmodified) over
WebSocket, one test per process, and writes one result per test.

The suite speaks raw TCP STOMP to STOMP_PORT (stomp.py connections and raw
sockets in parsing.py); stompgate and Web-STOMP speak STOMP over WebSocket
only. So STOMP_PORT is a relay of ours (ws_relay.py): each TCP connection
becomes one WebSocket to --ws-url. Running the same relay against both
servers keeps the comparison fair.

Tests run in parallel, except that two tests naming the same shared
destination (amq.fanout, /queue/custom-header, ...) never run at the same
time, and a test that changes the broker's global state (topic
permissions, the STOMP plugin's default user) runs alone.

    harness.py --ws-url ws://127.0.0.1:15751/ws --amqp-port 5751 \
        --mgmt-port 16751 --node sg-suite@localhost \
        --enabled-plugins-file /tmp/stompgate-rabbit-sg-suite/enabled_plugins \
        --out results.tsv --log-dir logs

Output (--out): `<module.Class.test>\t<pass|fail|skip|timeout>\t<seconds>`
a line, sorted; each test's output goes to --log-dir/<test>.log.
"""

import argparse
import ast
import inspect
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "src")
sys.path.insert(0, HERE)

import ws_relay  # noqa: E402

# Tests that change the broker's global state: nothing else runs with them.
EXCLUSIVE = re.compile(r"set_topic_permissions|enable_default_user|enable_implicit_connect|switch_config")
# Destinations (and bare exchange names) a test names: two tests naming the
# same one do not run at the same time.
RESOURCE = re.compile(r"/(?:queue|topic|exchange|amq/queue)/[A-Za-z0-9._-]*|\bamq\.(?:fanout|topic|direct)\b")


def main_runner_modules():
    """The module list of the suite's own main_runner.py, read (not run)."""
    tree = ast.parse(open(os.path.join(SRC, "main_runner.py")).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "modules" for t in node.targets
        ):
            return [ast.literal_eval(e) for e in node.value.elts]
    raise SystemExit("harness: no `modules = [...]` in main_runner.py")


def list_tests(modules):
    """(test id, resources, exclusive) for every test of `modules`, as the
    suite's test_runner.py collects them (classes named Test*)."""
    sys.path.insert(0, SRC)
    tests = []
    for name in modules:
        mod = __import__(name)
        for attr in sorted(dir(mod)):
            cls = getattr(mod, attr)
            if not (attr.startswith("Test") and isinstance(cls, type) and issubclass(cls, unittest.TestCase)):
                continue
            try:
                class_source = inspect.getsource(cls)
            except (OSError, TypeError):
                class_source = ""
            class_exclusive = bool(EXCLUSIVE.search(class_source))
            for method in unittest.TestLoader().getTestCaseNames(cls):
                try:
                    source = inspect.getsource(getattr(cls, method))
                except (OSError, TypeError):
                    source = class_source
                resources = set(RESOURCE.findall(source))
                resources = {r.replace("/exchange/", "") if r.startswith("/exchange/amq.") else r for r in resources}
                resources = {r.split("/")[0] if r.startswith("amq.") else r for r in resources}
                exclusive = class_exclusive or bool(EXCLUSIVE.search(source))
                tests.append((f"{name}.{attr}.{method}", resources, exclusive))
    return tests


def run_one(test_id, env, timeout, log_dir):
    started = time.monotonic()
    log_path = os.path.join(log_dir, test_id + ".log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "unittest", "-v", test_id],
            cwd=SRC,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            code = None
    elapsed = time.monotonic() - started
    with open(log_path, errors="replace") as log:
        output = log.read()
    if code is None:
        result = "timeout"
        with open(log_path, "a") as log:
            log.write(f"\nharness: killed after {timeout} s\n")
    elif code != 0:
        result = "fail"
    elif re.search(r"^OK \(skipped=", output, re.M):
        result = "skip"
    else:
        result = "pass"
    return result, elapsed


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ws-url", required=True, help="the STOMP-over-WebSocket endpoint under test")
    p.add_argument("--amqp-port", required=True, type=int)
    p.add_argument("--mgmt-port", required=True, type=int)
    p.add_argument("--node", required=True, help="the RabbitMQ node rabbitmqctl talks to (name@host)")
    p.add_argument("--rabbitmqctl", default=shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl")
    p.add_argument(
        "--enabled-plugins-file",
        required=True,
        help="the node's enabled_plugins file (rabbitmqctl needs it to know list_stomp_connections)",
    )
    p.add_argument("--jobs", type=int, default=6, help="tests run at once (default 6)")
    p.add_argument("--timeout", type=float, default=60, help="seconds per test (default 60)")
    p.add_argument("--only", default="", help="a regular expression: run the tests whose ids match")
    p.add_argument("--out", required=True)
    p.add_argument("--log-dir", required=True)
    args = p.parse_args()

    relay = ws_relay.Relay(args.ws_url)
    relay.start()
    env = dict(os.environ)
    env.update(
        STOMP_PORT=str(relay.port),
        AMQP_PORT=str(args.amqp_port),
        MGMT_PORT=str(args.mgmt_port),
        RABBITMQCTL=os.path.join(HERE, "rabbitmqctl.sh"),
        HARNESS_RABBITMQCTL=args.rabbitmqctl,
        HARNESS_ENABLED_PLUGINS_FILE=args.enabled_plugins_file,
        RABBITMQ_NODENAME=args.node,
        PYTHONPATH=SRC,
        PYTHONUNBUFFERED="1",
    )
    os.environ.update(STOMP_PORT=str(relay.port))  # parsing.py reads it at import
    os.makedirs(args.log_dir, exist_ok=True)

    only = re.compile(args.only) if args.only else None
    pending = [t for t in list_tests(main_runner_modules()) if not only or only.search(t[0])]
    results = {}
    lock = threading.Condition()
    busy = set()  # resources in use
    running = [0, False]  # count, an exclusive test runs

    def runnable(test):
        _, resources, exclusive = test
        if running[1]:
            return False
        if exclusive:
            return running[0] == 0
        return running[0] < args.jobs and not (resources & busy)

    def worker(test):
        test_id, resources, exclusive = test
        result, elapsed = run_one(test_id, env, args.timeout, args.log_dir)
        with lock:
            results[test_id] = (result, elapsed)
            busy.difference_update(resources)
            running[0] -= 1
            running[1] = False if exclusive else running[1]
            print(f"{result:8} {elapsed:6.1f}s {test_id}", flush=True)
            lock.notify_all()

    threads = []
    with lock:
        while pending:
            ready = next((t for t in pending if runnable(t)), None)
            if ready is None:
                lock.wait()
                continue
            pending.remove(ready)
            busy.update(ready[1])
            running[0] += 1
            running[1] = ready[2]
            th = threading.Thread(target=worker, args=(ready,), daemon=True)
            th.start()
            threads.append(th)
    for th in threads:
        th.join()
    relay.stop()

    with open(args.out, "w") as out:
        for test_id in sorted(results):
            result, elapsed = results[test_id]
            out.write(f"{test_id}\t{result}\t{elapsed:.1f}\n")
    counts = {}
    for result, _ in results.values():
        counts[result] = counts.get(result, 0) + 1
    print("harness: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), flush=True)


if __name__ == "__main__":
    main()
