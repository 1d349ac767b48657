"""The participant agent that runs at an institution, next to its private data."""

from latentfl.platform.participant.agent import Agent
from latentfl.platform.participant.config import ParticipantConfig, PartitionShare
from latentfl.platform.participant.local_step import LocalData, load_local_data

__all__ = ["Agent", "LocalData", "ParticipantConfig", "PartitionShare", "load_local_data"]
