"""The two test backends (tests/support/services.py) are one typed surface: the native
servers of devstack and the containers answer the same methods with the same parameters."""
from __future__ import annotations

import inspect

import pytest

from devstack.kafka import KafkaCluster, KafkaNode
from devstack.postgres import NativePostgres
from support import services


def _methods(protocol) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in vars(protocol).items()
            if callable(member) and not name.startswith("_")}


@pytest.mark.parametrize("protocol, classes", [
    (services.PostgresServer, [NativePostgres, services.DockerPostgres]),
    (services.KafkaNode, [KafkaNode, services._DockerKafkaNode]),
    (services.KafkaBrokers, [KafkaCluster, services.DockerKafkaCluster]),
])
def test_both_backends_answer_every_method_of_the_interface_alike(protocol, classes):
    wanted = _methods(protocol)
    assert wanted
    for cls in classes:
        for name, signature in wanted.items():
            assert hasattr(cls, name), f"{cls.__name__} has no {name}()"
            theirs = inspect.signature(getattr(cls, name))
            assert list(theirs.parameters) == list(signature.parameters), f"{cls.__name__}.{name}{theirs}"
            for parameter, expected in signature.parameters.items():
                assert theirs.parameters[parameter].default == expected.default, f"{cls.__name__}.{name}: {parameter}"
