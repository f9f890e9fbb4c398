#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Sums a Chrome trace's CPU op time per op name, as self time (an op's time minus the ops nested in it
on the same thread), and prints the top entries: where a batch's time goes.

Usage: trace_self_time.py TRACE.json [--top 25]
"""
import argparse
import collections
import json


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("trace")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    with open(args.trace) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X" and e.get("cat") == "cpu_op"]
    self_us = collections.Counter()
    calls = collections.Counter()
    by_thread = collections.defaultdict(list)
    for e in events:
        by_thread[e["tid"]].append(e)
    for thread_events in by_thread.values():
        thread_events.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []  # open (event, end) pairs; nested events end before their parent
        for e in thread_events:
            end = e["ts"] + e["dur"]
            while stack and stack[-1][1] <= e["ts"]:
                stack.pop()
            if stack:
                self_us[stack[-1][0]["name"]] -= e["dur"]
            self_us[e["name"]] += e["dur"]
            calls[e["name"]] += 1
            stack.append((e, end))
    total = sum(self_us.values())
    print(f"total op self time {total / 1e3:.1f} ms")
    for name, us in self_us.most_common(args.top):
        print(f"{us / 1e3:9.2f} ms {100 * us / total:5.1f}% {calls[name]:6d}x  {name}")


if __name__ == "__main__":
    main()
