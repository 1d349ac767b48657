"""FedAvg over every node for ``num-rounds`` rounds of one float32 array of ``values`` entries;
each node returns the weights it received plus 0.001 (no training). The strategy appends the
wall-clock time each round starts and ends to ``timing-file`` for benchmarks/vs_flower.py.

``server`` and ``client`` aggregate in the clear (Flower's Message API). ``secagg_server`` and
``secagg_client`` run the same rounds under SecAgg+ (``SecAggPlusWorkflow`` and
``secaggplus_mod``, which Flower offers only through its legacy strategy and NumPyClient API),
with ``num-shares`` shares per node (itself included) and ``reconstruction-threshold``. With
``drop-round`` > 0, the node of ``partition-id = 0`` kills its SuperNode's whole process group
(SIGKILL) when that round's masked-vector request reaches it: after it shared its keys, before
it uploads; rounds after that one wait for one node fewer.
"""

import os
import signal
import time

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
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


def _note(timing_file: str, what: str, server_round: int) -> None:
    with open(timing_file, "a") as fh:
        fh.write(f"{what} {server_round} {time.time()}\n")


class TimedFedAvg(FedAvg):
    """FedAvg that notes when each round's training starts and is aggregated."""

    def __init__(self, timing_file: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.timing_file = timing_file

    def configure_train(self, server_round, *args, **kwargs):
        _note(self.timing_file, "start", server_round)
        return super().configure_train(server_round, *args, **kwargs)

    def aggregate_train(self, server_round, *args, **kwargs):
        result = super().aggregate_train(server_round, *args, **kwargs)
        _note(self.timing_file, "end", server_round)
        return result


@server.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    nodes = int(cfg["nodes"])
    strategy = TimedFedAvg(str(cfg["timing-file"]), fraction_evaluate=0.0,
                           min_train_nodes=nodes, min_available_nodes=nodes)
    weights = ArrayRecord([np.zeros(int(cfg["values"]), dtype=np.float32)])
    strategy.start(grid=grid, initial_arrays=weights, num_rounds=int(cfg["num-rounds"]))


class Echo(NumPyClient):
    def fit(self, parameters, config):
        return [a + np.float32(0.001) for a in parameters], 100, {}


def drop_mod(msg: Message, context: Context, call_next) -> Message:
    """On partition 0 in round ``drop-round``: kill this SuperNode at the masked-vector stage."""
    drop_round = int(context.run_config["drop-round"])
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    if (drop_round and msg.metadata.group_id == str(drop_round)
            and int(context.node_config["partition-id"]) == 0 and configs is not None
            and configs.get(Key.STAGE) == Stage.COLLECT_MASKED_VECTORS):
        os.killpg(0, signal.SIGKILL)
    return call_next(msg, context)


secagg_client = ClientApp(client_fn=lambda context: Echo().to_client(),
                          mods=[drop_mod, secaggplus_mod])
secagg_server = ServerApp()


class TimedLegacyFedAvg(LegacyFedAvg):
    """Flower's legacy FedAvg (the one SecAgg+ drives), timed like TimedFedAvg; after
    ``drop_round`` it waits for one node fewer."""

    def __init__(self, timing_file: str, drop_round: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.timing_file = timing_file
        self.drop_round = drop_round

    def configure_fit(self, server_round, *args, **kwargs):
        if self.drop_round and server_round == self.drop_round + 1:
            self.min_fit_clients -= 1
            self.min_available_clients -= 1
        _note(self.timing_file, "start", server_round)
        return super().configure_fit(server_round, *args, **kwargs)

    def aggregate_fit(self, server_round, *args, **kwargs):
        result = super().aggregate_fit(server_round, *args, **kwargs)
        _note(self.timing_file, "end", server_round)
        return result


@secagg_server.main()
def secagg_main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    nodes = int(cfg["nodes"])
    weights = ndarrays_to_parameters([np.zeros(int(cfg["values"]), dtype=np.float32)])
    strategy = TimedLegacyFedAvg(str(cfg["timing-file"]), int(cfg["drop-round"]),
                                 fraction_evaluate=0.0, min_fit_clients=nodes,
                                 min_available_clients=nodes, initial_parameters=weights)
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
        num_shares=int(cfg["num-shares"]),
        reconstruction_threshold=int(cfg["reconstruction-threshold"])))
    legacy = LegacyContext(context, config=ServerConfig(num_rounds=int(cfg["num-rounds"])),
                           strategy=strategy)
    workflow(grid, legacy)
