#!/usr/bin/env python3
"""Counts the atomic read-modify-write instructions (x86-64: `lock`-prefixed ones, and `xchg`
with memory, which locks implicitly) that a callgrind profile made with `--dump-instr=yes`
executed, per object file, and prints the total last. Callgrind counts instructions, not their
cost; on this VM each of these costs ~5 ns where a plain one costs a fraction of one (see
docs/BENCHMARKS.md, "Atomic operations"). Used by scripts/callgrind-pipelined.sh.

Usage: scripts/count-atomics.py PROFILE"""
import re, subprocess, sys
from collections import defaultdict

def costs(path):
    ob_names, per_ob = {}, defaultdict(lambda: defaultdict(int))
    ob, addr, skip = None, 0, False
    name_re = re.compile(r"^\((\d+)\)(?: (.*))?$")
    for line in open(path):
        line = line.rstrip("\n")
        if not line or line[0] == "#":
            continue
        if line.startswith("ob="):
            m = name_re.match(line[3:])
            if m.group(2):
                ob_names[m.group(1)] = m.group(2)
            ob = ob_names[m.group(1)]
            continue
        if line.startswith(("cob=", "cfi=", "cfl=", "cfn=")):
            m = name_re.match(line.split("=", 1)[1])
            if line.startswith("cob=") and m and m.group(2):
                ob_names[m.group(1)] = m.group(2)
            continue
        if line.startswith("calls="):
            skip = True
            continue
        if line[0] not in "0123456789+-*":
            continue
        parts = line.split()
        p = parts[0]
        if p.startswith("0x"):
            addr = int(p, 16)
        elif p.startswith("+"):
            addr += int(p[1:])
        elif p.startswith("-"):
            addr -= int(p[1:])
        if skip:
            skip = False
            continue
        if len(parts) >= 3:
            per_ob[ob][addr] += int(parts[2])
    return per_ob

def atomic_addrs(obj):
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", obj], capture_output=True, text=True).stdout
    found = set()
    for l in out.splitlines():
        m = re.match(r"^\s*([0-9a-f]+):\s+(.*)$", l)
        if not m:
            continue
        ins = m.group(2)
        if ins.startswith("lock ") or (ins.startswith("xchg") and "(" in ins):
            found.add(int(m.group(1), 16))
    return found

total = 0
for ob, cost in costs(sys.argv[1]).items():
    if not ob or not ob.startswith("/"):
        continue
    try:
        addrs = atomic_addrs(ob)
    except Exception:
        continue
    n = sum(c for a, c in cost.items() if a in addrs)
    if n:
        print(f"{n:>12} {ob}")
        total += n
print(f"{total:>12} total")
