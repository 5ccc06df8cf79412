"""The benchmarks (`softmoe bench`, benchmarks/README.md): the suite, its cases, plans and
output, the workflow benchmark and the one timing loop the latency step shares (timing)."""
