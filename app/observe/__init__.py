"""Observability of the edge: HTTP figures, the Prometheus collector, and the Kafka watch behind the
health report and the dashboard."""

from app.observe.collector import EDGE_FAMILIES, EdgeCollector, edge_registry
from app.observe.http import HttpFigures, HttpMetrics
from app.observe.watch import KafkaWatch

__all__ = ["EDGE_FAMILIES", "EdgeCollector", "HttpFigures", "HttpMetrics", "KafkaWatch", "edge_registry"]
