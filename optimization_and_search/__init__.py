"""Drivers that run many trainings: sweeps (run_experiments.py) and searches."""
