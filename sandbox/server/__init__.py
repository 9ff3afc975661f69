"""The sandbox exchange's server: REST + WS + admin + metrics around ``sandbox.engine.Exchange``."""

from sandbox.server.runner import Sandbox, SandboxThread, config_from_settings, run_sandbox
from sandbox.server.settings import SandboxSettings

__all__ = ["Sandbox", "SandboxSettings", "SandboxThread", "config_from_settings", "run_sandbox"]
