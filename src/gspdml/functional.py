"""Functional API: the GSP transport problem (``partial_transport``) and its cost (``prototype_cost``)."""
from gspdml.pooling.transport import TransportResult, partial_transport, prototype_cost

__all__ = ["partial_transport", "prototype_cost", "TransportResult"]
