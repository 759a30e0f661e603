"""How channel dimensions flow through ops: spaces, rules, groups."""

from onnx_slim.channels.groups import ChannelAnalysis, ChannelGroup, Member, analyze_channels

__all__ = ["ChannelAnalysis", "ChannelGroup", "Member", "analyze_channels"]
