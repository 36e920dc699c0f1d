"""twistd plugins for the mmo roles: ServiceMaker lines only, nothing is imported."""

from twisted.application.service import ServiceMaker

mmo_yellow = ServiceMaker(
    "mmo yellow",
    "mmo.yellow.tap",
    "mmo registry: providers register, consumers watch",
    "mmo-yellow",
)
mmo_worker = ServiceMaker(
    "mmo worker",
    "mmo.worker.tap",
    "mmo logic worker: runs one service handler",
    "mmo-worker",
)
mmo_broker = ServiceMaker(
    "mmo broker",
    "mmo.broker.tap",
    "mmo edge: game clients' connections, sessions, routing, pushes",
    "mmo-broker",
)
mmo_cluster = ServiceMaker(
    "mmo cluster",
    "mmo.cluster.tap",
    "a whole mmo cluster as supervised child processes",
    "mmo-cluster",
)
mmo_brokerlist = ServiceMaker(
    "mmo brokerlist",
    "mmo.brokerlist.tap",
    "mmo brokerlist: HTTP JSON list of the live brokers and their load",
    "mmo-brokerlist",
)
mmo_fight = ServiceMaker(
    "mmo fight",
    "mmo.fight.tap",
    "mmo fight dispatcher: a pool of fight processes under a cap per process",
    "mmo-fight",
)
mmo_logs = ServiceMaker(
    "mmo logs",
    "mmo.logs.tap",
    "mmo log collector: every process's log events, queried by mmo logs and mmo trace",
    "mmo-logs",
)
mmo_admin = ServiceMaker(
    "mmo admin",
    "mmo.admin.tap",
    "mmo admin console: the cluster live in a browser; kick, push, drain",
    "mmo-admin",
)
mmo_bridge = ServiceMaker(
    "mmo bridge",
    "mmo.bridge.tap",
    "mmo bridge: calls, pushes, events, sessions and channels across clusters",
    "mmo-bridge",
)
