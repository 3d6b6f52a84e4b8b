"""Experiments as a library: seeded studies of the literature's claims
(catalogue, runner, jobs, stats, report), several configs in one table
(comparison) and every router on one budget (router_zoo). Everything here
trains through moejax.train; nothing below imports this package."""
