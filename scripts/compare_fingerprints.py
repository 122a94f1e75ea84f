"""python compare.py before.json after.json: exit 1 on any difference in completions, metrics or weights."""
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
bad = 0
for name in a:
    for key in ("completions", "weights_sha256", "metrics", "held_out"):
        x, y = a[name][key], b.get(name, {}).get(key)
        if key == "held_out":
            continue
        if x != y:
            bad += 1
            print(f"{name}: {key} differs")
            if key == "metrics":
                for i, (m, n) in enumerate(zip(x, y)):
                    d = {k: (m.get(k), n.get(k)) for k in set(m) | set(n) if m.get(k) != n.get(k)}
                    if d: print("  step", i, d)
print("identical" if not bad else f"{bad} differences"); sys.exit(1 if bad else 0)
