"""Functional API: ``gspdml.functional.partial_transport`` (the GSP transport problem)."""
from gspdml.pooling.functional import TransportResult, partial_transport

__all__ = ["partial_transport", "TransportResult"]
