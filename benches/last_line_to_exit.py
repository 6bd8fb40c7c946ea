"""Runs a program and says when its last output line came and when it exited
(the driver's shutdown time): `python3 benches/last_line_to_exit.py target/release/examples/counter`."""

import subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
last = None
for line in p.stdout:
    last = (time.perf_counter() - t0, line.rstrip())
p.wait()
end = time.perf_counter() - t0
print(f"last line at {last[0]*1000:.0f} ms ({last[1]}), exit at {end*1000:.0f} ms, shutdown {1000*(end-last[0]):.0f} ms")
