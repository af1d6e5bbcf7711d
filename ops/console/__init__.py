"""The operator's commands over a running service's `/v1` admin API: reads, endpoints."""

from ops.console.api import AdminApi, ApiError, CommandError
from ops.console.commands import COMMANDS, add_commands, run

__all__ = ["COMMANDS", "AdminApi", "ApiError", "CommandError", "add_commands", "run"]
