"""rlvr: composable, exact reinforcement learning with verifiable rewards for LLM reasoning."""

__version__ = "0.1.0"
