# Two sensor feeds merged by a CoMap, written the way upstream SAGE programs are
# (only the imports name sage_jupyter).
from sage_jupyter import BaseCoMapFunction, BatchFunction, LocalEnvironment, SinkFunction


class TemperatureFeed(BatchFunction):
    def __init__(self):
        super().__init__()
        self.readings = [21.5, 23.0, 19.5]
        self.pos = 0

    def execute(self):
        if self.pos >= len(self.readings):
            return None
        value = self.readings[self.pos]
        self.pos += 1
        return {"sensor": "temp", "value": value}


class HumidityFeed(BatchFunction):
    def __init__(self):
        super().__init__()
        self.count = 0

    def execute(self):
        self.count += 1
        if self.count > 4:
            return None
        return {"sensor": "humidity", "value": 40 + self.count}


class DescribeReading(BaseCoMapFunction):
    def map0(self, data):
        return f"temperature {data['value']} C"

    def map1(self, data):
        return f"humidity {data['value']} %"


class ConsoleSink(SinkFunction):
    def execute(self, data):
        print(data)


def main():
    env = LocalEnvironment("comap_two_streams")
    temps = env.from_batch(TemperatureFeed)
    humidity = env.from_batch(HumidityFeed)
    temps.connect(humidity).comap(DescribeReading).sink(ConsoleSink)
    env.submit(autostop=True)
    print("comap example done")


if __name__ == "__main__":
    main()
