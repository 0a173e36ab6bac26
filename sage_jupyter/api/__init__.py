"""What users write: environments, DataStream, function and service base classes."""

from .connected_streams import ConnectedStreams
from .datastream import DataStream
from .environment import BaseEnvironment, LocalEnvironment
from .functions import (BaseCoMapFunction, BaseFunction, BaseJoinFunction, BatchFunction, FilterFunction,
                        FlatMapFunction, KeyByFunction, MapFunction, SinkFunction, SourceFunction)
from .service import BaseService

__all__ = [
    "BaseEnvironment", "LocalEnvironment", "DataStream", "BaseService", "BaseFunction",
    "BatchFunction", "SourceFunction", "MapFunction", "FilterFunction", "FlatMapFunction",
    "SinkFunction", "KeyByFunction", "ConnectedStreams", "BaseCoMapFunction", "BaseJoinFunction",
]
