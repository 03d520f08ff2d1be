"""Importance scores shared by every method (one home per idea).

- SNIP connection sensitivity |dL/dM| (Lee et al. 2019), used by PAD-Net's Iterative Mode Partition.
- Cross-expert gradient variance (METHODS.md §1, IMP on an upcycled model).
- Taylor importance with an exponential moving average (DMS, METHODS.md §3).

Add functions here; do not re-create this file (several methods contribute to it).
"""
