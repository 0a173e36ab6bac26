# Customers joined with their payments by customer id (keyby + join), in upstream SAGE style.
from sage_jupyter import BaseJoinFunction, BatchFunction, KeyByFunction, LocalEnvironment, SinkFunction


class Customers(BatchFunction):
    def __init__(self):
        super().__init__()
        self.rows = [{"cid": 1, "name": "Ada"}, {"cid": 2, "name": "Lin"}, {"cid": 4, "name": "Sam"}]

    def execute(self):
        return self.rows.pop(0) if self.rows else None


class Payments(BatchFunction):
    def __init__(self):
        super().__init__()
        self.rows = [{"cid": 2, "paid": 30}, {"cid": 1, "paid": 12}, {"cid": 3, "paid": 99}, {"cid": 2, "paid": 5}]

    def execute(self):
        return self.rows.pop(0) if self.rows else None


class CustomerKey(KeyByFunction):
    def execute(self, data):
        return data["cid"]


class PaymentsOfCustomer(BaseJoinFunction):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.customers = {}
        self.waiting = {}

    def execute(self, payload, key, tag):
        if tag == 0:
            self.customers[key] = payload
            return [self._row(payload, p) for p in self.waiting.pop(key, [])]
        if key in self.customers:
            return [self._row(self.customers[key], payload)]
        self.waiting.setdefault(key, []).append(payload)
        return []

    def _row(self, customer, payment):
        return f"{customer['name']} paid {payment['paid']}"


class PrintJoined(SinkFunction):
    def execute(self, data):
        print(f"joined: {data}")


def main():
    env = LocalEnvironment("keyed_join")
    customers = env.from_batch(Customers).keyby(CustomerKey)
    payments = env.from_batch(Payments).keyby(CustomerKey)
    customers.connect(payments).join(PaymentsOfCustomer).sink(PrintJoined)
    env.submit(autostop=True)
    print("join example done")


if __name__ == "__main__":
    main()
