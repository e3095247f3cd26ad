"""The tools wing: benchmarks, evaluation, the demo, the embedded broker, quantization.

Rule: nothing outside tools/ imports it except the CLI's `commands/` and the tests; tools may import any
room. None of it is needed on a device to run `edge-mask run`.
"""
