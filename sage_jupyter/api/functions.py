"""Base classes for user functions (SAGE names). Subclass one and write `execute`.

The runtime builds each instance in its task and attaches `self.ctx` before the first
call; constructors may take any extra arguments, passed on from `map(Cls, *args, **kw)`.
"""

from __future__ import annotations

import abc
import logging
from typing import TYPE_CHECKING, Any, Iterable

from ..runtime.context import RuntimeContext
from ..runtime.errors import ServiceCallError

if TYPE_CHECKING:  # pragma: no cover
    from concurrent.futures import Future

    from ..runtime.services import ServiceCaller

_detached_logger = logging.getLogger("sage_jupyter.user")


class _NotInJob:
    """`self.call_service` of an instance no job runs: every use says so.

    The runtime replaces it with the job's caller, a plain instance attribute (no class
    attribute of that name, no descriptor), the one attribute lookup CPython specialises fully:
    the per-record `self.call_service[...]` is then as cheap as any `self.x`."""

    def __init__(self, owner: str) -> None:
        self._owner = owner

    def _refuse(self) -> ServiceCallError:
        return ServiceCallError(
            f"{self._owner} is not running inside a sage_jupyter job; "
            "services can be called only from functions and services of a submitted job"
        )

    def __getitem__(self, name: str) -> Any:
        raise self._refuse()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse()

    def call_async(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse()

    def names(self) -> list[str]:
        raise self._refuse()


class _Servicing:
    """What functions and services share: context, logger and service calls."""

    ctx: RuntimeContext | None = None
    _logger: logging.Logger | None = None
    _name: str | None = None

    call_service: ServiceCaller  # an instance attribute: see _NotInJob
    _sage_calls_services = True  # the runtime gives instances of this class the job's caller

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Upstream constructors take **kwargs (ctx, name...); accept and ignore extras.
        self.ctx = None
        self.call_service = _NotInJob(type(self).__name__)  # type: ignore[assignment]

    @property
    def logger(self) -> logging.Logger:
        if self._logger is not None:
            return self._logger
        return self.ctx.logger if self.ctx is not None else _detached_logger

    @logger.setter
    def logger(self, value: logging.Logger) -> None:
        self._logger = value

    @property
    def name(self) -> str:
        """This instance's name: set by the user, else the runtime's, else the class name."""
        given = self._name  # (never through __dict__: see _NotInJob)
        if given is not None:
            return given
        return self.ctx.name if self.ctx is not None else type(self).__name__

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    def call_service_async(self, name: str, *args: Any, method: str | None = "process", **kwargs: Any) -> Future[Any]:
        """Like `call_service(...)` but returns a `concurrent.futures.Future` at once."""
        return self.call_service.call_async(name, *args, method=method, **kwargs)


class BaseFunction(_Servicing, abc.ABC):
    """Common base of every function. `close()` runs once per instance, after its last record.

    `execute` is abstract as upstream declares it: a subclass without it cannot be built."""

    @abc.abstractmethod
    def execute(self, *args: Any) -> Any:
        """What the function does with its input (see each base class)."""

    def close(self) -> None:
        """Called once per instance after its last record (override to flush or release)."""


class BatchFunction(BaseFunction):
    """A bounded source: `execute(self)` returns the next record; `None` ends the batch."""

    @abc.abstractmethod
    def execute(self) -> Any:
        """Write this in your subclass."""


class SourceFunction(BaseFunction):
    """An unbounded source: `execute(self)` is called until the job is stopped.
    Returning `None` means nothing right now; it is polled again."""

    @abc.abstractmethod
    def execute(self) -> Any:
        """Write this in your subclass."""


class MapFunction(BaseFunction):
    """`execute(self, data)` returns the transformed record."""

    @abc.abstractmethod
    def execute(self, data: Any) -> Any:
        """Write this in your subclass."""


class FilterFunction(BaseFunction):
    """`execute(self, data) -> bool`: keep the record when true."""

    @abc.abstractmethod
    def execute(self, data: Any) -> bool:
        """Write this in your subclass."""


class FlatMapFunction(BaseFunction):
    """`execute(self, data)` returns an iterable of records, or calls `self.collect(x)`."""

    @abc.abstractmethod
    def execute(self, data: Any) -> Iterable[Any] | None:
        """Write this in your subclass."""

    def collect(self, record: Any) -> None:
        _collect(self, record)


class SinkFunction(BaseFunction):
    """`execute(self, data)` consumes a record."""

    @abc.abstractmethod
    def execute(self, data: Any) -> None:
        """Write this in your subclass."""


class KeyByFunction(BaseFunction):
    """`execute(self, data)` returns the key that routes the record."""

    @abc.abstractmethod
    def execute(self, data: Any) -> Any:
        """Write this in your subclass."""


class BaseCoMapFunction(BaseFunction):
    """Processes connected streams input by input: `mapN(self, data)` gets the records of
    input N (`map0`, `map1`, ... as many as connected streams) and returns one record;
    `None` drops it. The results of every input go downstream as one stream."""

    @property
    def is_comap(self) -> bool:
        return True

    @abc.abstractmethod
    def map0(self, data: Any) -> Any:
        """Records of the first connected stream."""

    @abc.abstractmethod
    def map1(self, data: Any) -> Any:
        """Records of the second connected stream."""

    def execute(self, data: Any) -> Any:
        raise NotImplementedError(
            f"{type(self).__name__} is a CoMap function: the runtime calls map0, map1, ... per input, never execute()"
        )


class BaseJoinFunction(BaseFunction):
    """Joins two keyed streams: `execute(self, payload, key, tag)` gets each record with its
    key and the index of its input (`tag`: 0 or 1), keeps whatever state it needs per key,
    and returns a list of records to emit (or calls `self.collect(x)`)."""

    @property
    def is_join(self) -> bool:
        return True

    @abc.abstractmethod
    def execute(self, payload: Any, key: Any, tag: int) -> list[Any] | None:
        """Write this in your subclass."""

    def collect(self, record: Any) -> None:
        _collect(self, record)


def _collect(function: BaseFunction, record: Any) -> None:
    emit = function.ctx.emit if function.ctx is not None else None
    if emit is None:
        raise RuntimeError("collect() can be called only while execute() runs")
    emit(record)
