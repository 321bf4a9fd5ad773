"""TRL trainers whose target is the power distribution."""
