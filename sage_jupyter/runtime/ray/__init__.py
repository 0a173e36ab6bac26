"""The Ray backend (`backend`): chain actors (`chain_actor`) linked by numbered pushes
(`links`), the driver's task table (`task_table`) and its watcher thread (`watcher`),
service actors (`services`), attaching to a cluster and where things run (`cluster`), output
captured in actors (`capture`), user code sent to workers (`pickling`), actor names and
orphan cleanup (`orphans`), and the checks of `ray_remote_args` (`options`, importable
without Ray). Ray's public API only."""
