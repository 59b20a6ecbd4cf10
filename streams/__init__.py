"""Everything that talks Kafka: settings, Avro codec, registry, producer, topic manager, Faust app."""

from streams.envelope import Event
from streams.errors import StreamError
from streams.kafka.producer import EventProducer, Position, publish, publish_batch
from streams.kafka.topics import TopicManager, TopicSpec
from streams.schema.codec import AvroCodec
from streams.schema.registry import SchemaRegistry
from streams.settings import Settings, get_settings

__all__ = [
    "AvroCodec", "Event", "EventProducer", "Position", "SchemaRegistry", "Settings", "StreamError",
    "TopicManager", "TopicSpec", "get_settings", "publish", "publish_batch",
]
