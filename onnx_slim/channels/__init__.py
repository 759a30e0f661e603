"""How channel dimensions flow through ops: spaces, rules, groups."""

from .groups import ChannelAnalysis, ChannelGroup, Member, analyze_channels

__all__ = ["ChannelAnalysis", "ChannelGroup", "Member", "analyze_channels"]
