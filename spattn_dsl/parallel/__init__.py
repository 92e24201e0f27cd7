"""Context parallel: one sequence split across the ranks of a torch.distributed group."""
