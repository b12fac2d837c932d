"""Speed: kernels, iterations, end to end, the GPU check."""
