"""The small kernel every service shares: errors, settings, configuration, app builder, metrics."""
