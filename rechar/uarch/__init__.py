"""The microarchitecture level by simulation: each point's steady-state calls under valgrind's
callgrind (instructions, I1/D1/LL cache misses, branch mispredictions), attributed to the
operators of the taxonomy, with a Top-down-like cycle estimate.

- machines: the simulated cache geometries (host from sysfs, Broadwell-EP, Cascade Lake-SP)
- client: callgrind's client requests from Python (instrumentation on/off, zero, dump)
- callgrind: the pass of one point inside the worker Valgrind runs; valgrind's command line
- profile: callgrind's output format -> per-function self and per-arc inclusive costs
- vtables: names for a stripped C++ library's virtual functions (ONNX Runtime's kernels)
- symbols: rules (data) from function and object names to operators and the runtime
- attribute: a profile's costs charged to operators, the runtime, or nobody
- cycles: the cycle estimate and the tidy per-category rows; table: uarch.parquet
"""
