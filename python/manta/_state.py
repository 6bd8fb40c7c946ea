"""The process's one runtime (set by ``manta.init`` or by worker mode)."""

core = None
# The GPU ids the node gave this worker (MANTA_GPU_IDS); none in a driver.
gpu_ids = []
