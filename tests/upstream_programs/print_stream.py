# DataStream.print() and ConnectedStreams.print() on an unbounded stream split in branches,
# submitted without autostop and closed after a while, in upstream SAGE style.
import time

from sage_jupyter import LocalEnvironment, SourceFunction


class Counter(SourceFunction):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.n = 0

    def execute(self, data=None):
        if self.n >= 6:
            return None  # nothing more for now; an unbounded source is polled again
        self.n += 1
        return self.n


def main():
    env = LocalEnvironment("print_example")
    env.set_console_log_level("WARNING")

    numbers = env.from_source(Counter)
    numbers.map(lambda x: {"n": x, "square": x * x}).print("squares", colored=False)
    evens = numbers.filter(lambda x: x % 2 == 0).map(lambda x: ("EVEN", x))
    odds = numbers.filter(lambda x: x % 2 == 1).map(lambda x: ("ODD", x))
    evens.connect(odds).map(lambda pair: f"{pair[0]} -> {pair[1]}").print("parity", colored=False)

    try:
        env.submit()
        time.sleep(1.5)
    finally:
        env.close()
    print("print example done")


if __name__ == "__main__":
    main()
