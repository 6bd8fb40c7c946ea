"""The quick start in Python: remote functions, wait, an ObjectRef chain and an actor.

    pip install ./python
    MANTA_BIN=target/release/manta python3 python/examples/quickstart.py

With no cluster running (no MANTA_ADDRESS, no session), manta.init() starts a
local one with the manta binary and stops it at exit."""

import time

import manta


@manta.remote
def square(x):
    return x * x


@manta.remote
def add(a, b):
    return a + b


@manta.remote
def slow_echo(text, seconds):
    time.sleep(seconds)
    return text


@manta.remote
class Accumulator:
    def __init__(self, start):
        self.total = start

    def add(self, amount):
        self.total += amount
        return self.total


def main():
    manta.init()
    print("squares:", manta.get([square.remote(i) for i in range(8)]))
    fast, slow = slow_echo.remote("fast", 0.01), slow_echo.remote("slow", 1.0)
    ready, _ = manta.wait([slow, fast], num_returns=1)
    print("first ready:", manta.get(ready[0]))
    # Refs as arguments: the chain runs as soon as each value is there.
    chained = add.remote(square.remote(3), square.remote(4))
    print("3² + 4² =", manta.get(chained))
    accumulator = Accumulator.remote(100)
    for amount in (1, 2, 3):
        accumulator.add.remote(amount)
    print("accumulator total:", manta.get(accumulator.add.remote(0)))


if __name__ == "__main__":
    main()
