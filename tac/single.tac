# twistd -ny tac/single.tac -- a yellow and an echo worker composed in one process.
# The address may be changed with MMO_YELLOW (e.g. tcp://127.0.0.1:5555).
# Like every role it needs the cluster's CURVE keys: MMO_CURVE_KEYS=DIR (mmo keys DIR makes
# them), or MMO_INSECURE=1 to run in the clear.
import os

from twisted.application import service

from mmo.examples.echo import EchoService
from mmo.worker.config import WorkerConfig
from mmo.worker.service import make_worker_service
from mmo.yellow.config import YellowConfig
from mmo.yellow.service import make_yellow_service

yellow = os.environ.get("MMO_YELLOW", "tcp://127.0.0.1:5555")
application = service.Application("mmo-single")
make_yellow_service(YellowConfig(listen=yellow)).setServiceParent(application)
make_worker_service(
    WorkerConfig(yellow=(yellow,), handler="mmo.examples.echo:EchoService", service="echo"),
    handler_class=EchoService,
).setServiceParent(application)
