"""Do explanations stay true when a network is pruned? Lottery-ticket pruning + explanation toolkit."""
__version__ = "0.1.0"
