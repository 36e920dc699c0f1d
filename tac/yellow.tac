# twistd -ny tac/yellow.tac -- a registry on tcp://127.0.0.1:5555
# Needs the cluster's CURVE keys (MMO_CURVE_KEYS=DIR) or MMO_INSECURE=1, as every role.
from twisted.application import service

from mmo.yellow.config import YellowConfig
from mmo.yellow.service import make_yellow_service

application = service.Application("mmo-yellow")
make_yellow_service(YellowConfig(listen="tcp://127.0.0.1:5555")).setServiceParent(application)
