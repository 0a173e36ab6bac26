"""`ray_remote_args`: the per-stage and per-service dict handed to an actor's `.options()`.

Checked at the call that declares the stage or service, on every backend, without importing
Ray unless a key needs it, so a typo fails where it was written and not at submit.
"""

from __future__ import annotations

from typing import Any

_NUMBER = (int, float)
BASE_KEYS = ("num_cpus", "num_gpus", "memory", "resources", "scheduling_strategy", "runtime_env",
             "accelerator_type")


def _has_label_selector() -> bool:
    """Whether the installed Ray's actors take `label_selector` (Ray 2.4x and later)."""
    try:
        import ray.actor
    except ImportError:
        return False
    return "label_selector" in (ray.actor.ActorClass.options.__doc__ or "")


def accepted_keys() -> tuple[str, ...]:
    return BASE_KEYS + (("label_selector",) if _has_label_selector() else ())


def _is_number(value: Any) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool) and value >= 0


def _problem(key: str, value: Any) -> str | None:
    """What is wrong with one entry, or None."""
    if key in ("num_cpus", "num_gpus", "memory"):
        return None if _is_number(value) else "a number >= 0"
    if key == "resources":
        ok = isinstance(value, dict) and all(isinstance(k, str) and _is_number(v) for k, v in value.items())
        return None if ok else "a dict of resource name -> number >= 0"
    if key == "scheduling_strategy":
        if isinstance(value, str):
            known = value in ("DEFAULT", "SPREAD")
        else:  # a strategy object of ray.util.scheduling_strategies
            known = type(value).__module__.startswith("ray.util")
        return None if known else "'DEFAULT', 'SPREAD' or a ray.util.scheduling_strategies object"
    if key == "runtime_env":
        return None if isinstance(value, dict) else "a dict"
    if key == "accelerator_type":
        return None if isinstance(value, str) else "a string"
    if key == "label_selector":
        ok = isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        return None if ok else "a dict of label -> string"
    return None


def check_ray_remote_args(where: str, args: Any) -> dict[str, Any] | None:
    """A copy of `args` if every key is known and every value of the right type, else a
    ValueError naming the key and listing the accepted ones. None stays None."""
    if args is None:
        return None
    if not isinstance(args, dict):
        raise ValueError(f"{where}: ray_remote_args must be a dict, got {type(args).__name__}")
    accepted = accepted_keys()
    for key, value in args.items():
        if key not in accepted:
            raise ValueError(f"{where}: ray_remote_args key {key!r} is not accepted; "
                             f"use {', '.join(accepted)}")
        problem = _problem(key, value)
        if problem is not None:
            raise ValueError(f"{where}: ray_remote_args[{key!r}] must be {problem}, got {value!r} "
                             f"(accepted keys: {', '.join(accepted)})")
    return dict(args)


def demand(args: dict[str, Any] | None) -> dict[str, float]:
    """The resources an actor with these args asks of a node, in `ray.nodes()` names; 0 CPUs
    unless `num_cpus` is given."""
    args = args or {}
    out: dict[str, float] = {}
    for key, name in (("num_cpus", "CPU"), ("num_gpus", "GPU"), ("memory", "memory")):
        if args.get(key):
            out[name] = float(args[key])
    for name, amount in (args.get("resources") or {}).items():
        if amount:
            out[name] = float(amount)
    return out


def describe_demand(args: dict[str, Any] | None) -> str:
    """`num_cpus=4, resources={'gpu_box': 1}`: what the user asked for, in their words."""
    asked = {k: v for k, v in (args or {}).items() if k != "runtime_env"}
    return ", ".join(f"{k}={v!r}" for k, v in asked.items()) or "no resources"
