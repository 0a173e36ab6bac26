"""The notebook surface: magics, the live job widget, output routing, the sidebar comm.

`%load_ext sage_jupyter` loads it; `track(handle)` shows and lists a job submitted
some other way (for example a `RemoteEnvironment`'s handle).
"""

from .jobs import JobTable, track, widget_of
from .output import JobOutput
from .widget import JobWidget

__all__ = ["track", "widget_of", "JobWidget", "JobOutput", "JobTable"]
