"""Opt-in CPU plug-ins applied from outside the core: the allocator launcher, step streams, compile-ahead."""
