"""Training plumbing kept apart from models and data: callbacks, EMA, loggers, preemption, watchdog, memory plan."""
