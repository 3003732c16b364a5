"""The Textual training dashboard: `uhd train` in a terminal, and `uhd dashboard RUN_DIR`."""

from uhd_cli.dashboard.app import DashboardApp, make_dashboard
from uhd_cli.dashboard.sources import EventsFileSource, EventSource, LiveTrainingSource
from uhd_cli.dashboard.state import DashboardState

__all__ = ["DashboardApp", "DashboardState", "EventSource", "EventsFileSource", "LiveTrainingSource",
           "make_dashboard"]
