"""Parallelism: the device mesh, the logical-axis rule table, multi-process start-up."""
