"""Power, performance and area of a configuration: technology tables and hardware targets (YAML data,
each figure with its source), special functions composed from primitives, and the estimator that
prices variations/cost.py's operation counts in picojoules, microseconds and square millimetres."""
