"""Executors: how corral runs workloads on the machine."""
