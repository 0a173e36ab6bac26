# Three word lists through one CoMap with map0, map1 and map2, in upstream SAGE style.
from sage_jupyter import BaseCoMapFunction, BatchFunction, LocalEnvironment, SinkFunction


class WordSource(BatchFunction):
    def __init__(self, words):
        super().__init__()
        self.words = words
        self.index = 0

    def execute(self):
        if self.index >= len(self.words):
            return None
        word = self.words[self.index]
        self.index += 1
        return word


class ThreeWayCoMap(BaseCoMapFunction):
    def map0(self, data):
        return f"planet: {data}"

    def map1(self, data):
        return f"river: {data.upper()}"

    def map2(self, data):
        return f"tree: {data[::-1]}"


class ConsoleSink(SinkFunction):
    def execute(self, data):
        print(data)


def main():
    env = LocalEnvironment("ThreeStreams")
    planets = env.from_batch(WordSource, ["mars", "venus"])
    rivers = env.from_batch(WordSource, ["nile"])
    trees = env.from_batch(WordSource, ["oak", "elm", "ash"])
    planets.connect(rivers).connect(trees).comap(ThreeWayCoMap).sink(ConsoleSink)
    env.submit(autostop=True)
    print("three-stream comap done")


if __name__ == "__main__":
    main()
