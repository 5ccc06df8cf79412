"""The leaves every room may use: user errors, atomic writes, the console, the CPU code paths
pinned before torch loads (numerics) and torchvision on a CPU-only torch (vision)."""
