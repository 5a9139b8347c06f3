"""What every stack shares while a point is measured: the timing loop and its statistics
(timing), the input pools (inputs), the machine's contention during a point (contention), the
memory allocator (allocator), CPU event counting (counters), the parity gate (gate) and reduced
precision's quality gate (quality)."""
