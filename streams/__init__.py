"""Everything that talks Kafka: settings, Avro codec, registry, producer, topic manager, Faust app."""

from streams.codec import AvroCodec
from streams.envelope import Event
from streams.errors import StreamError
from streams.producer import EventProducer, Position, publish, publish_batch
from streams.registry import SchemaRegistry
from streams.settings import Settings, get_settings
from streams.topics import TopicManager, TopicSpec

__all__ = [
    "AvroCodec", "Event", "EventProducer", "Position", "SchemaRegistry", "Settings", "StreamError",
    "TopicManager", "TopicSpec", "get_settings", "publish", "publish_batch",
]
