"""Pure logic: no I/O, no environment, no torch. Imports only stdlib, numpy and hyperopt."""
