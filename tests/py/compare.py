#!/usr/bin/env python3
"""Runs the scenarios of stomp_scenarios.py against RabbitMQ's Web-STOMP and
against stompgate and prints, key by key, where the two differ.

Usage: compare.py --webstomp ws://127.0.0.1:15680/ws --stompgate ws://127.0.0.1:15690/ws
       [--only NAME ...]
Exit status 0 whatever the differences (they are the output).
"""

import argparse
import json
import sys

import stomp_scenarios as sc


def flat(prefix, value, out):
    if isinstance(value, dict):
        for k, v in value.items():
            flat(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = value


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--webstomp", required=True)
    parser.add_argument("--stompgate", required=True)
    parser.add_argument("--login", default="guest")
    parser.add_argument("--passcode", default="guest")
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    names = args.only or list(sc.SCENARIOS)
    results = {}
    for side, url in [("webstomp", args.webstomp), ("stompgate", args.stompgate)]:
        print(f"== running {len(names)} scenarios against {side} ({url})", file=sys.stderr)
        results[side] = sc.run(sc.Target(url, args.login, args.passcode), names)
    a, b = {}, {}
    flat("", results["webstomp"], a)
    flat("", results["stompgate"], b)
    same = differ = 0
    print("== stomp.py scenarios: Web-STOMP vs stompgate")
    for key in sorted(set(a) | set(b)):
        wa, wb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if wa == wb:
            same += 1
            print(f"same    {key}: {json.dumps(wa)}")
        else:
            differ += 1
            print(f"DIFFERS {key}:\n    webstomp:  {json.dumps(wa)}\n    stompgate: {json.dumps(wb)}")
    print(f"== {same} same, {differ} differ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
