"""Speed benchmarks (``lewm bench train|plan|node``): they report figures, not results of the pipeline.

Separate from the stages they time; ``train`` and ``plan`` need only torch, numpy and pyyaml.
"""
