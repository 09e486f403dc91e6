"""The hardware seam: attention and matmul kernels, the CPU fusion barrier, and the once-per-run choice of kernels."""
