"""Benchmark helpers shared by the tools (imported as ``dynsp_tools.benchlib``).

    layers.py         SparseLinear fwd+bwd per backend vs dense, pattern-update time,
                      state bytes; interleaved timing, PeakMemory, machine info, tables
    training.py       whole training steps through the trainer's own train_step
    roofline.py       memory/compute roofline of a dense or sparse layer (datasheets)
    triton_layers.py  CUDA: Triton kernels vs cuBLAS vs torch.sparse BSR
"""
