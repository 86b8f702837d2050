"""Model fitting (``lewm train``): config, objective, SIGReg, precision, the training loop and resume state.

Separate from data and evaluation: everything that decides how the weights are learnt lives here.
"""
