"""Ray's `ray microbenchmark` lines for manta's Python package, measured the
way Ray's harness does (a warm-up, then samples of a fixed duration; mean ±
standard deviation of operations per second).

    pip install ./python
    MANTA_BIN=target/release/manta python benches/python_microbenchmark.py [--duration 2]

With no cluster given (MANTA_ADDRESS), it starts a local one with 2 CPUs, as
`ray microbenchmark` does. Figures are not asserted; BENCHMARKS.md puts them
beside Ray 2.60's from ../shared/bench/ray-microbenchmark.md."""

import argparse
import statistics
import time

import manta


def timeit(name, fn, multiplier=1, duration=2.0, samples=4):
    fn()
    start = time.perf_counter()
    while time.perf_counter() - start < 1.0:
        fn()
    rates = []
    for _ in range(samples):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < duration:
            fn()
            count += 1
        rates.append(multiplier * count / (time.perf_counter() - start))
    mean, spread = statistics.mean(rates), statistics.pstdev(rates)
    print(f"{name} per second {mean:.2f} +- {spread:.2f}", flush=True)
    return mean


@manta.remote
def small_value():
    return b"ok"


@manta.remote(num_cpus=0)
class Actor:
    def small_value(self):
        return b"ok"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=2.0)
    args = parser.parse_args()
    manta.init(num_cpus=2)
    d = args.duration
    value = manta.put(0)
    timeit("single client get calls (Plasma Store)", lambda: manta.get(value), duration=d)
    timeit("single client put calls (Plasma Store)", lambda: manta.put(0), duration=d)
    timeit("single client tasks and get batch", lambda: manta.get([small_value.remote() for _ in range(1000)]), duration=d)
    timeit("single client tasks sync", lambda: manta.get(small_value.remote()), duration=d)
    timeit("single client tasks async", lambda: manta.get([small_value.remote() for _ in range(1000)]), 1000, d)
    actor = Actor.remote()
    timeit("1:1 actor calls sync", lambda: manta.get(actor.small_value.remote()), duration=d)
    timeit("1:1 actor calls async", lambda: manta.get([actor.small_value.remote() for _ in range(1000)]), 1000, d)
    concurrent = Actor.options(max_concurrency=16).remote()
    timeit(
        "1:1 actor calls concurrent",
        lambda: manta.get([concurrent.small_value.remote() for _ in range(1000)]),
        1000,
        d,
    )
    manta.shutdown()


if __name__ == "__main__":
    main()
