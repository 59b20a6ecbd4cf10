"""app/directory: what every edge knows about the others, through compacted topics: named endpoints."""

from app.directory.endpoints import EndpointNotFound, Endpoints, EndpointSpec, EndpointStreamResponse

__all__ = ["EndpointNotFound", "EndpointSpec", "EndpointStreamResponse", "Endpoints"]
