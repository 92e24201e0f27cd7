"""Context parallel (docs/python.md, context parallel): one sequence split across the ranks of a
torch.distributed group. The only package that imports torch.distributed."""
from .context import ContextParallel, HeadsPlan
from .plan import ExchangePlan, exchange_plan

__all__ = ["ContextParallel", "ExchangePlan", "HeadsPlan", "exchange_plan"]
