"""Tools that read run directories (tables, cost reports, plots, lm-eval); each file also runs as a script."""
