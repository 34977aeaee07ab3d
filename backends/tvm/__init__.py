"""Apache TVM (0.27, Relax) backends: x86 CPU and 64-bit ARM.

``lower``: ONNX -> Relax (with weights kept as parameters); ``backend``: the CPU and ARM
backends (build, export, load, run, time); ``arm``: the aarch64 runtime bundle, the C++
runner and execution under qemu-user.
"""
