"""Fake video-generation providers on loopback (OpenAI, APIDot/Vidgo, EvoLink, Replicate, fal.ai,
kie.ai) with fault injection.

`create_app(SimConfig(...))` serves every wire format; `/_sim/` exposes ground truth and stats.
"""

from simulator.app import create_app
from simulator.callbacks import CallbackSender, Delivery
from simulator.config import FORMATS, Faults, Lifecycle, SimConfig, SimulatorError
from simulator.lifecycle import Schedule, SimTask
from simulator.simulation import Simulator, TaskEndedError, UnknownTaskError
from simulator.stats import Stats
from simulator.submissions import Submission, SubmissionError

__all__ = [
    "FORMATS",
    "CallbackSender",
    "Delivery",
    "Faults",
    "Lifecycle",
    "Schedule",
    "SimConfig",
    "SimTask",
    "Simulator",
    "SimulatorError",
    "Stats",
    "Submission",
    "SubmissionError",
    "TaskEndedError",
    "UnknownTaskError",
    "create_app",
]
