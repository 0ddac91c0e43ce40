"""Real services that test suites start on free loopback ports (or in network namespaces) and clean up.

One module per service; each launcher is a context manager with ``close()`` that starts in ``__init__``,
waits until the service truly answers (bounded, with the log tail in the error) and stops only the
processes it started. tests/services/README.md lists start-up times and the S3 compatibility table.
"""

from tests.services.faketime import faketime_available, faketime_env
from tests.services.netns import NetnsHosts, netns_available
from tests.services.processes import ServiceError, free_port, free_ports
from tests.services.rabbit import RabbitMQ, RabbitMQNode, rabbitmq_available
from tests.services.rediscluster import ClusterNode, RedisCluster
from tests.services.seaweed import SeaweedFS
from tests.services.sentinel import RedisSentinel

__all__ = [
    "ClusterNode",
    "NetnsHosts",
    "RabbitMQ",
    "RabbitMQNode",
    "RedisCluster",
    "RedisSentinel",
    "SeaweedFS",
    "ServiceError",
    "faketime_available",
    "faketime_env",
    "free_port",
    "free_ports",
    "netns_available",
    "rabbitmq_available",
]
