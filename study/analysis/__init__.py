"""From a study's results to what a researcher publishes: metrics, aggregates, figures, tables, report."""
