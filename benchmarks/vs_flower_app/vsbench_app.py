"""FedAvg over every node for ``num-rounds`` rounds of one float32 array of ``values`` entries;
each node returns the weights it received plus 0.001 (no training). The strategy appends the
wall-clock time each round starts and ends to ``timing-file`` for benchmarks/vs_flower.py."""

import time

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

client = ClientApp()
server = ServerApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    reply = RecordDict({"arrays": ArrayRecord([a + np.float32(0.001) for a in arrays]),
                        "metrics": MetricRecord({"num-examples": 100})})
    return Message(content=reply, reply_to=msg)


class TimedFedAvg(FedAvg):
    """FedAvg that notes when each round's training starts and is aggregated."""

    def __init__(self, timing_file: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.timing_file = timing_file

    def _note(self, what: str, server_round: int) -> None:
        with open(self.timing_file, "a") as fh:
            fh.write(f"{what} {server_round} {time.time()}\n")

    def configure_train(self, server_round, *args, **kwargs):
        self._note("start", server_round)
        return super().configure_train(server_round, *args, **kwargs)

    def aggregate_train(self, server_round, *args, **kwargs):
        result = super().aggregate_train(server_round, *args, **kwargs)
        self._note("end", server_round)
        return result


@server.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    nodes = int(cfg["nodes"])
    strategy = TimedFedAvg(str(cfg["timing-file"]), fraction_evaluate=0.0,
                           min_train_nodes=nodes, min_available_nodes=nodes)
    weights = ArrayRecord([np.zeros(int(cfg["values"]), dtype=np.float32)])
    strategy.start(grid=grid, initial_arrays=weights, num_rounds=int(cfg["num-rounds"]))
