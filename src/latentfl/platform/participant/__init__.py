"""The participant agent that runs at an institution, next to its private data."""

from latentfl.platform.participant.agent import Agent, LocalData, load_local_data
from latentfl.platform.participant.config import ParticipantConfig, PartitionShare

__all__ = ["Agent", "LocalData", "ParticipantConfig", "PartitionShare", "load_local_data"]
